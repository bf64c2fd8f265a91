"""A few hundred steps of the paper-scale pipeline on CIFAR-100-format data the project writes.

Writes a planted dataset in the official CIFAR-100 file format (``write_planted_cifar``: 100
classes in 20 superclasses, 32x32 colour), a copy of ``params/`` whose ``paper`` scale reads it
with one epoch per training stage (~100 steps of batch 90 each), and runs the stage commands
as the pipeline does: prepare-data, train (baseline), learn-groups, split, finetune, evaluate
for one split row, plus the same finetune model-parallel on ``--workers`` processes
(``torchrun -m splitnet finetune --parallel``).  Everything else is the paper scale: WRN-16-8,
bf16, channels_last, the paper's schedules (milestones rescaled to the epoch).

Records per stage wall time and exit status, the evaluations, and how far the parallel
finetune's weights are from the sequential one's, in <out>/paper_pipeline.json.

``--tiny`` (CPU, for the tests): 12 classes at 8x8, WRN-10-1, batch 16.

    python benchmarks/paper_pipeline_check.py --out DIR [--experiment hier] [--workers 2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet import artifacts
from splitnet.data import write_planted_cifar
from splitnet.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
SCALE = "paper"


def write_params(out: Path, data_root: Path, md5: dict[str, str], tiny: bool) -> Path:
    """params/ with the paper scale reading the planted data, one epoch per training stage."""
    params = out / "params"
    shutil.copytree(REPO / "params", params, dirs_exist_ok=True)
    scales = yaml.safe_load((params / "scales.yaml").read_text())
    paper = scales["scales"][SCALE]
    paper["data"] = {
        "source": "cifar100",
        "root": str(data_root),
        "download": False,
        "md5": md5,
        "val_size": 48 if tiny else 1000,
        "seed": 0,
    }
    paper["epochs"] = {"train": 1, "group": 1, "finetune": 1, "ssl": 1}
    paper["engine"].update(log_every=10, checkpoint_every=1)
    if tiny:
        paper["data"]["resize"] = 8
        paper["model"] = {"arch": "wrn-10-1"}
        paper["engine"].update(device="cpu", batch_size=16, eval_batch_size=64, bf16=False, threads=1)
    (params / "scales.yaml").write_text(yaml.safe_dump(scales, sort_keys=False))
    return params


def run(name: str, cmd: list[str], log_dir: Path, timeline: list[dict]) -> bool:
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        rc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        ).returncode
    timeline.append(
        {"stage": name, "exit_code": rc, "seconds": round(time.perf_counter() - start, 2), "command": " ".join(cmd)}
    )
    print(f"{name:20s} exit {rc}  {timeline[-1]['seconds']:7.1f} s", flush=True)
    return rc == 0


def weight_difference(a: Path, b: Path) -> float:
    """Largest |a - b| / max |a| over the floating-point tensors of two model files."""
    sa, sb = artifacts.load_artifact(a)["state_dict"], artifacts.load_artifact(b)["state_dict"]
    return max(
        ((sa[k] - sb[k]).abs().max() / sa[k].abs().max().clamp_min(1e-12)).item()
        for k in sa
        if sa[k].is_floating_point()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--experiment", default="hier", help="a splitnet row of params/experiments.yaml")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel finetune")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke size (tests)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    sizes = (
        dict(num_superclasses=4, classes_per_superclass=3, train_per_class=16, test_per_class=4)
        if args.tiny
        else dict(num_superclasses=20, classes_per_superclass=5, train_per_class=100, test_per_class=10)
    )
    md5 = write_planted_cifar(out / "planted", seed=0, **sizes)
    params = write_params(out, out / "planted", md5, args.tiny)
    data, runs = out / "data", out / "runs"
    common = ["--scale", SCALE, "--params-dir", str(params)]
    splitnet = [sys.executable, "-m", "splitnet"]
    exp, timeline = args.experiment, []
    stages = [
        ("prepare-data", splitnet + ["prepare-data", "--experiment", exp, *common, "--out", str(data)]),
        (
            "train",
            splitnet
            + [
                "train",
                "--experiment",
                "baseline",
                *common,
                "--data",
                str(data),
                "--out",
                str(runs / "baseline/train"),
            ],
        ),
        (
            "learn-groups",
            splitnet
            + [
                "learn-groups",
                "--experiment",
                exp,
                *common,
                "--data",
                str(data),
                "--out",
                str(runs / exp / "learn_groups"),
            ],
        ),
        (
            "split",
            splitnet
            + [
                "split",
                "--experiment",
                exp,
                *common,
                "--source",
                str(runs / exp / "learn_groups/model.pt"),
                "--out",
                str(runs / exp / "split"),
            ],
        ),
        (
            "finetune",
            splitnet
            + [
                "finetune",
                "--experiment",
                exp,
                *common,
                "--data",
                str(data),
                "--source",
                str(runs / exp / "split/model.pt"),
                "--out",
                str(runs / exp / "finetune"),
            ],
        ),
        (
            "finetune-parallel",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(args.workers),
                "-m",
                "splitnet",
                "finetune",
                "--parallel",
                "--timeout",
                "600",
                "--experiment",
                exp,
                *common,
                "--data",
                str(data),
                "--source",
                str(runs / exp / "split/model.pt"),
                "--out",
                str(runs / exp / "finetune_parallel"),
            ],
        ),
    ]
    stages += [
        (
            f"evaluate-{which}",
            splitnet
            + [
                "evaluate",
                "--experiment",
                exp,
                *common,
                "--data",
                str(data),
                "--source",
                str(runs / exp / which / "model.pt"),
                "--out",
                str(runs / exp / f"evaluate_{which}"),
            ],
        )
        for which in ("finetune", "finetune_parallel")
    ]
    ok = all([run(name, cmd, out / "logs", timeline) for name, cmd in stages])  # every stage, even after a failure
    record = {
        "benchmark": "paper_pipeline_check",
        "experiment": exp,
        "tiny": args.tiny,
        "workers": args.workers,
        "data": {**sizes, "md5": md5},
        "scale": yaml.safe_load((params / "scales.yaml").read_text())["scales"][SCALE],
        "stages": timeline,
        "ok": ok,
        "machine": machine_info(),
    }
    manifest = data / "manifest.json"
    if manifest.exists():
        record["train_images"] = json.loads(manifest.read_text())["splits"]["train"]["count"]
    for which in ("finetune", "finetune_parallel"):
        metrics = runs / exp / f"evaluate_{which}" / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            record[f"evaluate_{which}"] = {k: m[k] for k in ("test_error", "test_loss", "params", "flops") if k in m}
    models = [runs / exp / w / "model.pt" for w in ("finetune", "finetune_parallel")]
    if all(p.exists() for p in models):
        # bf16 autocast and cuDNN's algorithm choice make GPU runs differ slightly; CPU fp32 ~1e-6
        record["parallel_vs_sequential_max_relative_weight_difference"] = weight_difference(*models)
    atomic_write_json(out / "paper_pipeline.json", record)
    print(f"recorded {out / 'paper_pipeline.json'}" + ("" if ok else " (a stage FAILED; see logs/)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
