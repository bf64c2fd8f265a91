"""Model files passed between stages: structure as plain data + a state dict, loaded safely.

Every file is written atomically and read by :func:`splitnet.io.load_torch_file` (no arbitrary
unpickling).  Whether a model file still holds the bytes its stage wrote is checked against the
run record beside it (``records.check_recorded``) by the stage that reads it.  Kinds:

* ``dense``: a ``WideResNet`` (baseline, SSL-sparsified, SSL-pruned) — plan + state dict;
* ``grouping``: a grouping run — the dense net plus its soft assignment matrices;
* ``split``: a ``SplitWideResNet`` — plan, split code, partition (boolean memberships),
  convention and layout, from which the module tree is rebuilt before ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .branches import SplitWideResNet
from .io import atomic_torch_save, load_torch_file
from .model import StagePlan, WideResNet, WRNPlan
from .spec import SplitSpec
from .split import build_split_network
from .topology import build_topology

FORMAT = "splitnet-model/1"
REQUIRED_KEYS: dict[str | None, tuple[str, ...]] = {  # kind -> what load_artifact's callers read
    "dense": ("plan", "state_dict"),
    "grouping": ("plan", "split", "state_dict", "assignments"),
    "split": ("plan", "split", "partition", "convention", "layout", "state_dict"),
}


def plan_to_dict(plan: WRNPlan) -> dict:
    d = asdict(plan)
    d["stages"] = [dict(s, hidden=list(s["hidden"])) for s in d["stages"]]
    return d


def plan_from_dict(d: dict) -> WRNPlan:
    stages = tuple(StagePlan(s["width"], tuple(s["hidden"]), s["stride"], s["projection"]) for s in d["stages"])
    return WRNPlan(d["in_channels"], d["num_classes"], stages, d["stem_width"], name=d["name"])


def _plain_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_dense(model: WideResNet, path: Path, **extra) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "kind": "dense",
            "plan": plan_to_dict(model.plan),
            "state_dict": _plain_state(model),
            **extra,
        },
        path,
    )


def save_grouping(model: WideResNet, spec: SplitSpec, matrices: dict[str, torch.Tensor], path: Path, **extra) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "kind": "grouping",
            "plan": plan_to_dict(model.plan),
            "split": spec.code,
            "state_dict": _plain_state(model),
            "assignments": {k: v.detach().float().cpu() for k, v in matrices.items()},
            **extra,
        },
        path,
    )


def save_split(
    model: SplitWideResNet,
    plan: WRNPlan,
    spec: SplitSpec,
    partition: dict[str, torch.Tensor],
    convention: str,
    layout: str,
    path: Path,
    **extra,
) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "kind": "split",
            "plan": plan_to_dict(plan),
            "split": spec.code,
            "partition": {k: v.cpu() for k, v in partition.items()},
            "convention": convention,
            "layout": layout,
            "state_dict": _plain_state(model),
            **extra,
        },
        path,
    )


def load_artifact(path: str | Path) -> dict:
    """The artifact dict of a model file, after checking its format and kind."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a model file" if path.is_dir() else "not found"
        raise FileNotFoundError(
            f"{path} {what}: pass the model.pt written by the stage before, or run that stage first"
        )
    blob = load_torch_file(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a splitnet model file ({FORMAT}); pass a model.pt written by a splitnet stage")
    missing = [key for key in REQUIRED_KEYS.get(blob.get("kind"), ()) if key not in blob]
    if blob.get("kind") not in REQUIRED_KEYS or missing:
        problem = f"lacks {', '.join(missing)}" if missing else f"has an unknown kind {blob.get('kind')!r}"
        raise ValueError(f"{path} {problem}: the file is damaged; re-run the stage that writes it")
    return blob


def build_model(blob: dict) -> WideResNet | SplitWideResNet:
    """Rebuild the network an artifact describes and load its weights (``grouping`` -> the dense net)."""
    plan = plan_from_dict(blob["plan"])
    model: WideResNet | SplitWideResNet
    if blob["kind"] in ("dense", "grouping"):
        model = WideResNet(plan)
    elif blob["kind"] == "split":
        topology = build_topology(plan, SplitSpec.parse(blob["split"]))
        model = build_split_network(topology, blob["partition"], blob["convention"], blob["layout"])
    else:
        raise ValueError(f"unknown model kind {blob['kind']!r}")
    model.load_state_dict(blob["state_dict"])
    return model


def load_model(path: str | Path) -> tuple[WideResNet | SplitWideResNet, dict]:
    blob = load_artifact(path)
    return build_model(blob), blob


def save_like(blob: dict, path: Path) -> None:
    """Write an artifact dict (e.g. a loaded one with updated ``state_dict``) atomically."""
    if blob.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} artifact")
    atomic_torch_save(blob, path)


def read_snapshots(folder: Path) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The grouping run's assignment snapshots (``step_<n>.pt``), in step order."""
    files = sorted(Path(folder).glob("step_*.pt"))
    if not files:
        raise FileNotFoundError(f"no assignment snapshots under {folder}: run learn-groups first")
    return [(int(f.stem.split("_")[1]), load_torch_file(f)) for f in files]
