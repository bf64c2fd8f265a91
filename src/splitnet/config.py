"""The experiment registry (``params/``): load, validate, and resolve one run's configuration.

``params/experiments.yaml`` holds ``defaults``, every paper-table row under ``experiments``, the
``presets``, the ``grouping_study`` and the ``tables``; ``params/scales.yaml`` holds the ``scales``
(paper / paper_fp32 / cpu / planted / smoke / ci).  A run's configuration is ``defaults`` <- row <- scale (data,
model.arch, engine, epoch counts) <- the scale's ``overrides`` <- the preset; when a scale sets a
stage's epochs, that stage's milestones are rescaled in proportion (``overrides`` come after, so a
scale can replace them, e.g. by ``[]``).  Experiment ``<row>@<preset>`` is a row run with a
preset (``shallow@semantic``); a plain row name runs it as the paper does.  The
seed (one of the scale's ``seeds``) sets the engine seed (weights, assignment initialisation,
data order) and the random partition's seed.
Validation (JSON schema + cross-checks) fails before any job starts and names the file and key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .spec import SpecError, SplitSpec

EXPERIMENTS_FILE = "experiments.yaml"
SCALES_FILE = "scales.yaml"
SCALES_FILE_KEYS = ("scales",)  # scales.yaml holds these top-level keys, experiments.yaml the schema's others
PRESET_SEPARATOR = "@"
PAPER_PRESET = "paper"  # in the grouping study: the row unchanged


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and key."""


# The params files hold ~500 values each; aliases (`<<: *paper`) may repeat a few of them, but
# never this many: more is an alias bomb, refused before anything walks (or copies) the values.
MAX_YAML_VALUES = 100_000


def read_yaml(path: Path) -> dict:
    """A params YAML file as a mapping; one :class:`ConfigError` naming the file for anything else.

    Like ``yaml.safe_load``, but aliases that contain themselves, or expand to more than
    :data:`MAX_YAML_VALUES` values, are refused from the node graph, before a value is built.
    """
    if not path.is_file():
        raise ConfigError(f"{path} not found (expected in the params directory)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_aliases(path, node)
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:  # the parser recurses once per nesting level
        raise ConfigError(f"{path}: nested too deeply to read; write it with fewer nesting levels") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _check_aliases(path: Path, root: yaml.Node) -> None:
    """Refuse a node graph that refers to itself or expands beyond :data:`MAX_YAML_VALUES`.

    Walked without recursion (an alias chain may be deeper than Python's stack); each node's
    expanded size is counted once, so a billion-laughs file costs as much as its text.
    """
    size: dict[int, int] = {}  # id(node) -> values it expands to, once its children are counted
    open_nodes: set[int] = set()  # the nodes on the path from the root: reaching one again is a cycle
    stack: list[tuple[yaml.Node, str, int, bool]] = [(root, "(top level)", root.start_mark.line + 1, False)]
    while stack:
        node, key, line, children_done = stack.pop()
        children = _child_nodes(node, key, line)
        if children_done:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child, *_ in children)
            if size[id(node)] > MAX_YAML_VALUES:
                raise ConfigError(
                    f"{path}: {key} (line {node.start_mark.line + 1}): its aliases expand to more than "
                    f"{MAX_YAML_VALUES:,} values, far beyond what params need; write the values out instead "
                    "of nesting aliases"
                )
        elif id(node) in open_nodes:
            raise ConfigError(
                f"{path}: {key} (line {line}): an alias refers to a value that contains it, which never ends; "
                "replace the alias by the values it stands for"
            )
        elif id(node) not in size:
            open_nodes.add(id(node))
            stack.append((node, key, line, True))
            stack.extend((child, *where, False) for child, *where in reversed(children))  # first child first


def _child_nodes(node: yaml.Node, key: str, line: int) -> list[tuple[yaml.Node, str, int]]:
    """A node's children with their dotted key and line (a mapping value: its key's line)."""
    prefix = "" if key == "(top level)" else f"{key}."
    if isinstance(node, yaml.SequenceNode):
        return [(item, f"{key}[{i}]", line) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        pairs = []
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else "(key)"
            pairs += [(k, f"{prefix}{name}", k.start_mark.line + 1), (v, f"{prefix}{name}", k.start_mark.line + 1)]
        return pairs
    return []


def _schema() -> dict:
    text = resources.files("splitnet").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def load_registry(params_dir: str | Path = "params") -> dict:
    """Read and validate ``experiments.yaml`` + ``scales.yaml``."""
    params_dir = Path(params_dir)
    schema = _schema()
    files = {
        EXPERIMENTS_FILE: read_yaml(params_dir / EXPERIMENTS_FILE),
        SCALES_FILE: read_yaml(params_dir / SCALES_FILE),
    }
    top_level = {
        SCALES_FILE: SCALES_FILE_KEYS,
        EXPERIMENTS_FILE: tuple(k for k in schema["properties"] if k not in SCALES_FILE_KEYS),
    }
    for name, data in files.items():
        _check_top_level(params_dir / name, data, top_level[name], schema["required"])
        _check_finite(params_dir / name, data, [])
    registry = {**files[EXPERIMENTS_FILE], **files[SCALES_FILE]}
    validator = jsonschema.Draft202012Validator(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(registry))
    if err is not None:
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        where = params_dir / (SCALES_FILE if key.startswith("scales") else EXPERIMENTS_FILE)
        raise ConfigError(f"{where}: {key}: {err.message}{_schema_hint(err)}")
    _cross_check(registry, params_dir)
    return registry


def _check_top_level(path: Path, data: dict, allowed: tuple[str, ...], required: list[str]) -> None:
    # Checked per file: in the merged registry a key would be blamed on the wrong file.
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; this file holds only {', '.join(allowed)}"
        )
    missing = [k for k in allowed if k in required and k not in data]
    if missing:
        raise ConfigError(f"{path}: the top-level key(s) {', '.join(missing)} are missing; add them")


def _check_finite(path: Path, node: Any, keys: list[str]) -> None:
    """NaN and infinity pass every JSON-schema bound (NaN compares false), so they are refused here."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(path, value, [*keys, str(key)])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(path, value, [*keys[:-1], f"{keys[-1]}[{i}]"] if keys else [f"[{i}]"])
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}: {'.'.join(keys)}: {node} is not a finite number; set a finite value")


def _schema_hint(err: jsonschema.ValidationError) -> str:
    """What to do about a schema violation, where the message alone does not say it."""
    if err.validator == "additionalProperties":
        return f"; allowed keys: {', '.join(err.schema.get('properties', {}))}"
    if err.validator == "type" and isinstance(err.instance, str):
        try:
            float(err.instance)
        except ValueError:
            return ""
        return "; YAML reads a number without a decimal point and with an exponent (1e-3) as text: write 1.0e-3"
    if err.validator == "pattern" and "propertyNames" in err.relative_schema_path:
        return (
            "; a name is letters, digits, _ and - (starting with a letter or digit): it names folders and files, "
            "so `.`, `..` and path separators are refused; rename it"
        )
    if err.validator == "required":  # defaults and scales hold every key once (no default in the code)
        return "; add it (the repository's params/ files show every key with its value)"
    return ""


def key_location(registry: dict, params_dir: str | Path, experiment: str, scale: str, key: str) -> str:
    """``<params file>: <dotted key>`` where the value of ``key`` (dotted, in :func:`resolve`'s
    output for this row and scale) is set, following resolve's merge order."""
    path = key.split(".")
    params_dir = Path(params_dir)
    scale_entry = registry["scales"][scale]
    if path[0] in ("data", "engine", "gpus") or (path[0] == "model" and _has_key(scale_entry, path)):
        return f"{params_dir / SCALES_FILE}: scales.{scale}.{key}"
    if path[1:] == ["schedule", "epochs"] and path[0] in scale_entry["epochs"]:
        return f"{params_dir / SCALES_FILE}: scales.{scale}.epochs.{path[0]}"
    row, preset = split_experiment(registry, experiment)
    if preset is not None and _has_key(registry["presets"][preset], path):
        return f"{params_dir / EXPERIMENTS_FILE}: presets.{preset}.{key}"
    if _has_key(registry["experiments"][row], path):
        return f"{params_dir / EXPERIMENTS_FILE}: experiments.{row}.{key}"
    return f"{params_dir / EXPERIMENTS_FILE}: defaults.{key}"


def _has_key(node: Any, path: list[str]) -> bool:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _cross_check(registry: dict, params_dir: Path) -> None:
    for scale, entry in registry["scales"].items():
        overrides = entry.get("overrides", {})
        # A scale changes how rows train, never what they are.
        for key in ("method", "group.split"):
            if _has_key(overrides, key.split(".")):
                raise ConfigError(
                    f"{params_dir / SCALES_FILE}: scales.{scale}.overrides.{key}: a scale cannot change a "
                    "row's identity; set it on the row in experiments.yaml"
                )
        for i, group in enumerate(entry.get("seed_groups", [])):
            for exp in group["rows"]:
                try:
                    split_experiment(registry, exp)
                except ConfigError as err:
                    raise ConfigError(
                        f"{params_dir / SCALES_FILE}: scales.{scale}.seed_groups[{i}].rows: {err}"
                    ) from None
    where = params_dir / EXPERIMENTS_FILE
    for name, preset in registry["presets"].items():
        for key in ("method", "group.split"):
            if _has_key(preset, key.split(".")):
                raise ConfigError(
                    f"{where}: presets.{name}.{key}: a preset cannot change a row's identity; set it on the row"
                )
    study = registry["grouping_study"]
    if study["scale"] not in registry["scales"]:
        raise ConfigError(f"{where}: grouping_study.scale: unknown scale {study['scale']!r}")
    for name in study["presets"]:
        if name != PAPER_PRESET and name not in registry["presets"]:
            raise ConfigError(
                f"{where}: grouping_study.presets: unknown preset {name!r}; known: "
                f"{', '.join([PAPER_PRESET, *registry['presets']])}"
            )
    for name, entry in study["datasets"].items():
        if entry["scale"] not in registry["scales"]:
            raise ConfigError(f"{where}: grouping_study.datasets.{name}.scale: unknown scale {entry['scale']!r}")
        if registry["experiments"].get(entry["experiment"], {}).get("method") != "splitnet":
            raise ConfigError(
                f"{where}: grouping_study.datasets.{name}.experiment: {entry['experiment']!r} is not "
                "a splitnet experiment"
            )
        for preset in entry.get("presets", []):
            if preset not in study["presets"]:
                raise ConfigError(
                    f"{where}: grouping_study.datasets.{name}.presets: {preset!r} is not one of grouping_study.presets"
                )
    gap = registry["gap_study"]
    if gap["scale"] not in registry["scales"]:
        raise ConfigError(f"{where}: gap_study.scale: unknown scale {gap['scale']!r}")
    for width in gap["widths"]:
        if width != PAPER_PRESET and width not in registry["presets"]:
            raise ConfigError(
                f"{where}: gap_study.widths: unknown preset {width!r}; known: {', '.join(registry['presets'])}"
            )
    for key in ("rows", "arms"):
        for exp in gap[key]:
            try:
                split_experiment(registry, exp)
            except ConfigError as err:
                raise ConfigError(f"{where}: gap_study.{key}: {err}") from None
    for name, row in registry["experiments"].items():
        split = row.get("group", {}).get("split")
        if row["method"] in SPLIT_METHODS:
            if split is None:
                raise ConfigError(f"{where}: experiments.{name}.group.split is required for method {row['method']}")
        if split is not None:
            try:
                SplitSpec.parse(split)
            except SpecError as err:
                raise ConfigError(f"{where}: experiments.{name}.group.split: {err}") from None
    for table, spec in registry["tables"].items():
        for i, row in enumerate(spec["rows"]):
            try:
                split_experiment(registry, row["experiment"])
            except ConfigError as err:
                raise ConfigError(f"{where}: tables.{table}.rows[{i}].experiment: {err}") from None
    for figure, runs in registry["figures"].items():
        for label, experiment in runs.items():
            if registry["experiments"].get(experiment, {}).get("method") != "splitnet":
                raise ConfigError(
                    f"{where}: figures.{figure}.{label}: {experiment!r} is not a splitnet experiment "
                    "(figures show grouping runs); name one of experiments.*"
                )


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` wins key by key; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _rescale(schedule: dict, epochs: int) -> dict:
    ratio = epochs / schedule["epochs"]
    milestones = sorted({max(1, round(m * ratio)) for m in schedule["milestones"]})
    return {**schedule, "epochs": epochs, "milestones": [m for m in milestones if m < epochs]}


def split_experiment(registry: dict, experiment: str) -> tuple[str, str | None]:
    """``"shallow@semantic"`` -> ``("shallow", "semantic")``, ``"shallow"`` -> ``("shallow", None)``."""
    row, _, preset = experiment.partition(PRESET_SEPARATOR)
    if row not in registry["experiments"]:
        raise ConfigError(
            f"unknown experiment {row!r}; known: {', '.join(registry['experiments'])} "
            f"(optionally {PRESET_SEPARATOR}<preset>)"
        )
    if _ and preset not in registry["presets"]:
        raise ConfigError(
            f"unknown preset {preset!r} in experiment {experiment!r}; known: {', '.join(registry['presets'])}"
        )
    return row, preset or None


def method_of(registry: dict, experiment: str) -> str:
    """The method of a row or ``row@preset`` (a preset never changes it)."""
    return registry["experiments"][split_experiment(registry, experiment)[0]]["method"]


def needs_baseline(cfg: dict[str, Any]) -> bool:
    """Does this resolved row's learn-groups stage read the trained baseline (``--baseline``)?"""
    if cfg["method"] == "ssl":
        return True
    group = cfg["group"]
    return cfg["method"] == "splitnet" and (group["init"] == "baseline" or group["class_init"] == "confusion")


def row_seeds(registry: dict, experiment: str, scale: str, extra_seeds: bool = False) -> list[int]:
    """The seeds a row runs at a scale: the scale's ``seeds``, and with ``extra_seeds`` also
    0..n-1 for the rows of the scale's ``seed_groups`` (n: the group's ``seeds``), in order."""
    sc = registry["scales"][scale]
    seeds = list(sc["seeds"])
    if extra_seeds:
        for group in sc.get("seed_groups", []):
            if experiment in group["rows"]:
                seeds += [s for s in range(group["seeds"]) if s not in seeds]
    return seeds


def study_experiment(row: str, preset: str) -> str:
    """The experiment the grouping study runs for a row and preset (``paper``: the row itself)."""
    return row if preset == PAPER_PRESET else f"{row}{PRESET_SEPARATOR}{preset}"


def experiment_names(registry: dict) -> list[str]:
    """Every experiment name the pipeline can build: the rows, and every row with every preset."""
    rows = list(registry["experiments"])
    return rows + [f"{r}{PRESET_SEPARATOR}{p}" for r in rows for p in registry["presets"]]


def resolve(registry: dict, experiment: str, scale: str, seed: int | None = None) -> dict[str, Any]:
    """The full configuration of one row (with its preset, if named) at one scale and seed
    (default: the scale's first)."""
    row, preset = split_experiment(registry, experiment)
    if scale not in registry["scales"]:
        raise ConfigError(f"unknown scale {scale!r}; known: {', '.join(registry['scales'])}")
    cfg = deep_merge(registry["defaults"], registry["experiments"][row])
    sc = registry["scales"][scale]
    cfg["model"] = deep_merge(cfg.get("model", {}), sc["model"])
    cfg["data"] = copy.deepcopy(sc["data"])
    cfg["engine"] = copy.deepcopy(sc["engine"])
    cfg["gpus"] = sc["gpus"]
    for stage, epochs in sc["epochs"].items():
        if stage in cfg and "schedule" in cfg[stage]:
            cfg[stage]["schedule"] = _rescale(cfg[stage]["schedule"], epochs)
    cfg = deep_merge(cfg, sc.get("overrides", {}))
    if preset is not None:
        cfg = deep_merge(cfg, registry["presets"][preset])
    seed = sc["seeds"][0] if seed is None else seed
    cfg["engine"]["seed"] = seed
    cfg["split"]["random_seed"] = cfg["split"]["random_seed"] + seed
    cfg["experiment"], cfg["scale"], cfg["seed"] = experiment, scale, seed
    return cfg


@dataclass(frozen=True)
class Stage:
    sections: tuple[str, ...]  # the config sections the stage reads
    summary: str  # what it does (the CLI's help)
    entries: tuple[str, ...]  # the functions that run it (module:function): its code (fingerprint.py)


# The pipeline's stages in order. One source of truth: the CLI's stage commands (``learn_groups``
# -> ``splitnet learn-groups``), the stage's run record, its resume digest and the Snakemake
# params that trigger its reruns all derive from it.
STAGES: dict[str, Stage] = {
    "prepare_data": Stage(
        ("data",), "write the prepared data splits (train/val/test .pt + manifest)", ("stages:stage_prepare_data",)
    ),
    "train": Stage(("model", "engine", "train"), "train the dense baseline WRN", ("stages:stage_train",)),
    "learn_groups": Stage(
        ("model", "engine", "group", "ssl"),
        "SplitNet grouping (regularizers on the assignments) or SSL sparsification",
        ("grouping_stage:stage_learn_groups",),
    ),
    "split": Stage(
        ("model", "group", "split", "ssl"),
        "cut the network into branches (learned, random) or prune it (SSL)",
        ("stages:stage_split",),
    ),
    "finetune": Stage(
        ("engine", "finetune"),
        "finetune the split/pruned network",
        ("stages:stage_finetune", "parallel.finetune:finetune_from_env"),  # one process, or model-parallel
    ),
    "evaluate": Stage(
        ("model", "engine", "evaluate"),
        "test error, params/FLOPs, class groups, throughput -> metrics.json",
        ("stages:stage_evaluate",),
    ),
}

# The commands that present a scale's results (Snakemake's presentation jobs) and the functions
# that run them: their code digests make an edit of tables or figures code rerun only them.
REPORTS: dict[str, str] = {
    "tables": "reports:cmd_tables",
    "figures": "reports:cmd_figures",
    "track": "reports:cmd_track",
    "study": "reports:cmd_study",
    "gap_study": "reports:cmd_gap_study",
}

# The stages each method runs after prepare_data, in pipeline order (the last is ``evaluate``;
# the one before it makes the model ``evaluate`` measures).
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "baseline": ("train", "evaluate"),
    "splitnet": ("learn_groups", "split", "finetune", "evaluate"),
    "random": ("split", "finetune", "evaluate"),
    "ssl": ("learn_groups", "split", "finetune", "evaluate"),
}
TRAINING_STAGES = ("train", "learn_groups", "finetune")  # the stages that run the training engine
SPLIT_METHODS = ("splitnet", "random")  # the methods that cut the network into branches (group.split)


def command_name(stage: str) -> str:
    """The CLI command of a stage: ``learn_groups`` -> ``learn-groups``."""
    return stage.replace("_", "-")


def stage_config(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of a row's resolved config that ``stage`` reads (plus the row's identity)."""
    identity = (
        ("experiment", "scale", "method") if stage == "prepare_data" else ("experiment", "scale", "seed", "method")
    )
    return {k: cfg[k] for k in (*identity, *STAGES[stage].sections) if k in cfg}
