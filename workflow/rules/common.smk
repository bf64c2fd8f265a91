# Shared helpers: the validated experiment registry, run paths, per-stage params.
import json
import sys

from snakemake.utils import validate

from splitnet.config import load_registry, resolve

validate(config, "../schemas/config.schema.yaml")

SCALE = config["scale"]
PARAMS = config["params_dir"]
RESULTS = config["results"]
REGISTRY = load_registry(PARAMS)  # validates params/*.yaml before any job starts
if SCALE not in REGISTRY["scales"]:
    raise ValueError(f"--config scale={SCALE}: unknown scale; known: {', '.join(REGISTRY['scales'])}")
GPUS = REGISTRY["scales"][SCALE]["gpus"]
RUNS = f"{RESULTS}/runs/{SCALE}"
DATA = f"{RUNS}/data"
SPLITNET = f"{sys.executable} -m splitnet"  # the interpreter running Snakemake (venv-safe)

TABLE_ROWS = sorted({row["experiment"] for t in REGISTRY["tables"].values() for row in t["rows"]})
FIGURE_ROWS = ["shallow", "shallow_simplex", "deep"]
EXPERIMENTS = sorted(set(TABLE_ROWS) | set(FIGURE_ROWS))


def cfg(exp):
    return resolve(REGISTRY, exp, SCALE)


def method(exp):
    return REGISTRY["experiments"][exp]["method"]


def stage_params(exp, *sections):
    """The config sections a stage reads, as JSON: a change reruns exactly the affected jobs."""
    c = cfg(exp)
    return json.dumps({k: c[k] for k in sections if k in c}, sort_keys=True)


def final_model(wildcards):
    """What `evaluate` measures: the baseline itself, or the finetuned split/pruned net."""
    if method(wildcards.exp) == "baseline":
        return f"{RUNS}/baseline/train/model.pt"
    return f"{RUNS}/{wildcards.exp}/finetune/model.pt"


def split_source(wildcards):
    if method(wildcards.exp) == "random":
        return f"{RUNS}/baseline/train/model.pt"
    return f"{RUNS}/{wildcards.exp}/learn_groups/model.pt"


def learn_inputs(wildcards):
    inputs = {"data": f"{DATA}/manifest.json"}
    if method(wildcards.exp) == "ssl":
        inputs["baseline"] = f"{RUNS}/baseline/train/model.pt"
    return inputs


def threads_of(exp):
    return max(1, cfg(exp)["engine"].get("threads", 0) or 1)


# GPU rules ask SLURM for one GPU and CPUs per GPU only at scales that use GPUs (paper).
GPU_RESOURCES = dict(gpu=GPUS, cpus_per_gpu=8 if GPUS else 0, mem_mb=16000 if GPUS else 2000,
                     runtime=1440 if GPUS else 60)

wildcard_constraints:
    exp="|".join(sorted(REGISTRY["experiments"], key=len, reverse=True)),
