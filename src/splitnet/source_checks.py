"""Checks of the model files a command reads (``--source``, ``--baseline``, ``--model``): the
right kind of model for the stage (validate.py's table), a network that rebuilds, and made for
this row's arch, split and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import artifacts
from .config import SPLIT_METHODS
from .io import path_problem
from .model import canonical_arch
from .records import check_recorded


class InputError(ValueError):
    """A bad command-line argument, params value or input file; the message is one line."""


@dataclass(frozen=True)
class SourceRule:
    """The kind of model a stage reads for a method, and which stage writes it."""

    kind: str
    written_by: str


# (command, method) -> the model file the stage reads (--source; --baseline for learn-groups).
SOURCE_RULES: dict[tuple[str, str], SourceRule] = {
    ("learn-groups", "ssl"): SourceRule("dense", "the baseline row's train/model.pt"),
    ("split", "splitnet"): SourceRule("grouping", "this row's learn_groups/model.pt"),
    ("split", "random"): SourceRule("dense", "the baseline row's train/model.pt"),
    ("split", "ssl"): SourceRule("dense", "this row's learn_groups/model.pt"),
    ("finetune", "splitnet"): SourceRule("split", "this row's split/model.pt"),
    ("finetune", "random"): SourceRule("split", "this row's split/model.pt"),
    ("finetune", "ssl"): SourceRule("dense", "this row's split/model.pt (the pruned net)"),
    ("evaluate", "baseline"): SourceRule("dense", "the baseline row's train/model.pt"),
    ("evaluate", "splitnet"): SourceRule("split", "this row's finetune/model.pt"),
    ("evaluate", "random"): SourceRule("split", "this row's finetune/model.pt"),
    ("evaluate", "ssl"): SourceRule("dense", "this row's finetune/model.pt"),
}


def load_source(path: Path, flag: str, rule: SourceRule, context: str) -> dict:
    """The artifact at ``path`` after checking its bytes against the run record beside it
    (``records.check_recorded``: a user's own file without one is taken as it is), its kind and
    that its weights load."""
    problem = path_problem(path)
    if problem is not None:  # a symlink loop or a file on the way is not "not found"
        raise InputError(f"{flag} {path}: {problem}")
    try:
        if path.is_file():  # anything else: load_artifact says what is wrong
            check_recorded(path)
        blob = artifacts.load_artifact(path)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"{flag}: {err}") from None
    if blob["kind"] != rule.kind:
        raise InputError(
            f"{flag} {path} is a {blob['kind']} model, but {context} needs a {rule.kind} model: pass {rule.written_by}"
        )
    try:
        artifacts.build_model(blob)
    except Exception as err:  # any failure to rebuild means a damaged or foreign file
        detail = " ".join(str(err).split()) or type(err).__name__
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise InputError(
            f"{flag} {path}: the network it describes cannot be rebuilt ({detail}); re-run the stage that wrote it"
        ) from None
    return blob


def check_source_matches(
    blob: dict, path: Path, flag: str, cfg: dict, where_arch: str, manifest: dict | None, data_dir: Path | None
) -> None:
    plan = artifacts.plan_from_dict(blob["plan"])
    arch = cfg["model"]["arch"]
    # SSL-pruned nets keep their dense arch's name with an "-ssl" suffix (ssl.prune).
    if plan.name.removesuffix("-ssl") != canonical_arch(arch):
        raise InputError(
            f"{flag} {path} is a {plan.name} network, but {where_arch} is {arch}; pass the model of "
            "this scale, or run with the --scale it was made at"
        )
    made_for = blob.get("split")  # grouping and split models record the split they were made for
    if cfg["method"] in SPLIT_METHODS and made_for is not None and made_for != cfg["group"]["split"]:
        raise InputError(
            f"{flag} {path} was made for split {made_for}, but row {cfg['experiment']!r} uses "
            f"{cfg['group']['split']}; pass this row's model"
        )
    if manifest is not None:
        channels, classes = manifest["image_shape"][0], len(manifest["class_names"])
        if (plan.in_channels, plan.num_classes) != (channels, classes):
            raise InputError(
                f"{flag} {path} takes {plan.in_channels}-channel images of {plan.num_classes} classes, "
                f"but --data {data_dir} holds {channels}-channel images of {classes} classes; pass the "
                "data it was trained on"
            )
