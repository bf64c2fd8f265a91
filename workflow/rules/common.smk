# Shared helpers: the validated experiment registry, run paths, per-stage params.
#
# Every value that reaches a shell command is quoted with Snakemake's `:q` format (shlex.quote),
# so config values and paths with spaces or shell syntax stay single arguments.
import json
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from splitnet.config import ConfigError, load_registry, resolve, stage_config
from splitnet.outputs import ScaleOutputs, figure_rows

validate(config, "../schemas/config.schema.yaml")

SCALE = config["scale"]
PARAMS = config["params_dir"]
RESULTS = config["results"]
try:
    REGISTRY = load_registry(PARAMS)  # validates params/*.yaml before any job starts
except ConfigError as err:
    raise WorkflowError(str(err)) from None
if SCALE not in REGISTRY["scales"]:
    raise WorkflowError(f"--config scale={SCALE}: unknown scale; known: {', '.join(REGISTRY['scales'])}")
GPUS = REGISTRY["scales"][SCALE]["gpus"]
SEEDS = REGISTRY["scales"][SCALE]["seeds"]  # every row runs once per seed
OUT = ScaleOutputs(RESULTS, SCALE)  # results/<scale>/: every path this scale writes
DATA = str(OUT.data)
PYTHON = sys.executable  # the interpreter running Snakemake (venv-safe)

TABLE_ROWS = sorted({row["experiment"] for t in REGISTRY["tables"].values() for row in t["rows"]})
FIGURE_ROWS = figure_rows(REGISTRY)
EXPERIMENTS = sorted(set(TABLE_ROWS) | set(FIGURE_ROWS))


def cfg(exp, seed=None):
    return resolve(REGISTRY, exp, SCALE, None if seed is None else int(seed))


def method(exp):
    return REGISTRY["experiments"][exp]["method"]


def run_dir(exp, seed, stage):
    """results/<scale>/runs/<exp>/seed_<seed>/<stage> (ScaleOutputs.run_dir: one source)."""
    return str(OUT.run_dir(exp, seed, stage))


def stage_params(exp, stage, seed=None):
    """The config sections a stage reads, as JSON: a change reruns exactly the affected jobs."""
    return json.dumps(stage_config(cfg(exp, seed), stage), sort_keys=True)


def final_model(wildcards):
    """What `evaluate` measures: the baseline itself, or the finetuned split/pruned net."""
    if method(wildcards.exp) == "baseline":
        return f"{run_dir('baseline', wildcards.seed, 'train')}/model.pt"
    return f"{run_dir(wildcards.exp, wildcards.seed, 'finetune')}/model.pt"


def split_source(wildcards):
    if method(wildcards.exp) == "random":
        return f"{run_dir('baseline', wildcards.seed, 'train')}/model.pt"
    return f"{run_dir(wildcards.exp, wildcards.seed, 'learn_groups')}/model.pt"


def learn_inputs(wildcards):
    inputs = {"data": f"{DATA}/manifest.json"}
    if method(wildcards.exp) == "ssl":
        inputs["baseline"] = f"{run_dir('baseline', wildcards.seed, 'train')}/model.pt"
    return inputs


def baseline_args(wildcards, input):
    """`--baseline <file>` for SSL rows, nothing otherwise (as an argument list for the shell)."""
    return ["--baseline", input.baseline] if "baseline" in input.keys() else []


def threads_of(exp):
    return max(1, cfg(exp)["engine"].get("threads", 0) or 1)


# GPU rules ask SLURM for one GPU and CPUs per GPU only at scales that use GPUs (paper).
GPU_RESOURCES = dict(gpu=GPUS, cpus_per_gpu=8 if GPUS else 0, mem_mb=16000 if GPUS else 2000,
                     runtime=1440 if GPUS else 60)

wildcard_constraints:
    exp="|".join(sorted(REGISTRY["experiments"], key=len, reverse=True)),
    seed=r"\d+",
