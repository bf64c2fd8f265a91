"""How much of the superclass structure a trained baseline's class similarity holds.

The grouping study (docs/studies/semantic-groups.md) asks why no preset recovers the planted
superclasses. R_W co-clusters the weights and `class_init: confusion` reads the soft confusions,
so neither can find a hierarchy the trained network's class similarity does not hold. This probe
clusters the classes (balanced spectral clustering, `splitnet.class_similarity`) from four class
similarities and scores each against the superclasses (ARI; best merge with fewer groups):

* pixels: cosine of the class-mean images (centred) of the training split, no network;
* features: cosine of the class-mean penultimate features of the trained baseline (validation);
* fc weights: cosine of the baseline's fc rows;
* soft confusion: what `class_init: confusion` uses.

    python benchmarks/class_similarity_probe.py [--results results] [--out benchmarks/results/class_similarity.json]

Reads results/<scale>/data and results/<scale>/runs/baseline/seed_<n>/train/model.pt of the
grouping study's datasets (run `snakemake grouping_study` first). Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet import artifacts
from splitnet.class_similarity import balanced_spectral_groups, soft_confusion
from splitnet.config import load_registry, resolve
from splitnet.data import load_split, read_manifest
from splitnet.io import atomic_write_json
from splitnet.metrics import adjusted_rand_index, best_merge_ari
from splitnet.outputs import ScaleOutputs
from splitnet.spec import SplitSpec
from splitnet.stage_run import device_data, engine_config, normalizer_for


def cosine_affinity(vectors: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(vectors.double() - vectors.double().mean(0), dim=1)
    return (unit @ unit.T).clamp_min(0.0) + torch.eye(len(vectors), dtype=torch.float64)


def score(groups: list[int], superclass: list[int], count: int) -> float:
    if count < len(set(superclass)):
        return best_merge_ari(groups, superclass, count)
    return adjusted_rand_index(groups, superclass)


@torch.no_grad()
def probe(cfg: dict, data_dir: Path, baseline: Path, groups: int) -> dict[str, float]:
    manifest = read_manifest(data_dir)
    superclass, classes = manifest["superclass"], len(manifest["class_names"])
    engine, device = engine_config(cfg)
    model = artifacts.build_model(artifacts.load_artifact(baseline)).to(device).eval()
    train, val = device_data(data_dir, "train", device), device_data(data_dir, "val", device)
    images = normalizer_for(engine, train)(val.images.float())
    features: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    for start in range(0, len(images), 500):
        model(images[start : start + 500])
    hook.remove()
    feats = torch.cat(features)
    pixels = load_split(data_dir, "train")
    flat = pixels["images"].double().flatten(1)
    sources = {
        "pixels": cosine_affinity(torch.stack([flat[pixels["labels"] == c].mean(0) for c in range(classes)])),
        "features": cosine_affinity(torch.stack([feats[val.labels == c].mean(0) for c in range(classes)])),
        "fc_weights": cosine_affinity(model.fc.weight),
        "soft_confusion": soft_confusion(model, images, val.labels, classes),
    }
    return {
        name: round(score(balanced_spectral_groups(a, groups), superclass, groups), 4) for name, a in sources.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--params-dir", default="params")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "class_similarity.json"))
    args = parser.parse_args()
    registry = load_registry(args.params_dir)
    study = registry["grouping_study"]
    rows = []
    for dataset, entry in study["datasets"].items():
        out = ScaleOutputs(args.results, entry["scale"])
        groups = SplitSpec.parse(registry["experiments"][entry["experiment"]]["group"]["split"]).groups[3]
        for seed in study["seeds"]:
            baseline = out.run_dir("baseline", seed, "train") / "model.pt"
            if not baseline.is_file():
                continue
            cfg = resolve(registry, entry["experiment"], entry["scale"], seed)
            aris = probe(cfg, out.data, baseline, groups)
            rows.append({"dataset": dataset, "seed": seed, "groups": groups, "ari": aris})
            print(dataset, seed, aris, flush=True)
    atomic_write_json(
        Path(args.out), {"benchmark": "class_similarity_probe", "machine": machine_info(), "results": rows}
    )
    print(f"recorded {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
