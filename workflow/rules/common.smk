# Shared helpers: the validated experiment registry, run paths, per-stage params.
#
# Every value that reaches a shell command is quoted with Snakemake's `:q` format (shlex.quote),
# so config values and paths with spaces or shell syntax stay single arguments.
import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from splitnet.claims import claim_experiments, load_claims
from splitnet.config import (METHOD_STAGES, REPORTS, SPLIT_METHODS, STAGES, ConfigError, experiment_names, load_registry,
                             method_of, needs_baseline, read_yaml, resolve, stage_config)
from splitnet.fingerprint import code_digest, stage_code_digest
from splitnet.outputs import ScaleOutputs, figure_rows, table_runs
from splitnet.gap_study import evaluate_files as gap_inputs
from splitnet.study import evaluate_files as study_inputs

validate(config, "../schemas/config.schema.yaml")

SCALE = config["scale"]
PARAMS = config["params_dir"]
RESULTS = config["results"]
try:
    REGISTRY = load_registry(PARAMS)  # validates params/*.yaml before any job starts
    CLAIMS = load_claims(PARAMS, REGISTRY, read_yaml(Path(PARAMS) / "paper_results.yaml"))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
if SCALE not in REGISTRY["scales"]:
    raise WorkflowError(f"--config scale={SCALE}: unknown scale; known: {', '.join(REGISTRY['scales'])}")
SEEDS = REGISTRY["scales"][SCALE]["seeds"]  # every row runs once per seed
OUT = ScaleOutputs(RESULTS, SCALE)  # results/<scale>/: the tables, figures and runs this scale builds
# Stage rules take the scale as a wildcard, so one set of rules builds runs of any scale (the
# grouping study reads two); their paths are the patterns of ScaleOutputs("{scale}").
PATTERN = ScaleOutputs(RESULTS, "{scale}")
PYTHON = sys.executable  # the interpreter running Snakemake (venv-safe)
# The code each job runs, as a digest (src/splitnet/fingerprint.py; the stages bind their resume to
# the same one). Every rule passes it as a param, so editing a module reruns exactly the jobs whose
# code includes it, and their dependents; an edit of docs or tests reruns nothing.
STAGE_CODE = {stage: stage_code_digest(stage) for stage in STAGES}
REPORT_CODE = {name: code_digest([entry], exclude=()) for name, entry in REPORTS.items()}

FIGURE_ROWS = figure_rows(REGISTRY)


def cfg(exp, seed=None, scale=SCALE):
    return resolve(REGISTRY, exp, scale, None if seed is None else int(seed))


def method(exp):
    return method_of(REGISTRY, exp)


def run_dir(exp, seed, stage, scale="{scale}"):
    """results/<scale>/runs/<exp>/seed_<seed>/<stage> (ScaleOutputs.run_dir: one source)."""
    return str(ScaleOutputs(RESULTS, scale).run_dir(exp, seed, stage))


def manifest(scale="{scale}"):
    return f"{ScaleOutputs(RESULTS, scale).data}/manifest.json"


def log_file(name):
    return f"{PATTERN.logs}/{name}.log"


def stage_params(exp, stage, seed, scale):
    """The config sections a stage reads, as JSON: a change reruns exactly the affected jobs."""
    return json.dumps(stage_config(cfg(exp, seed, scale), stage), sort_keys=True)


def final_model(w):
    """What `evaluate` measures: the model of the row's stage before it (the baseline's train,
    the others' finetune)."""
    stage = METHOD_STAGES[method(w.exp)][-2]
    return f"{run_dir(w.exp, w.seed, stage, w.scale)}/model.pt"


def split_source(w):
    if method(w.exp) == "random":
        return f"{run_dir('baseline', w.seed, 'train', w.scale)}/model.pt"
    return f"{run_dir(w.exp, w.seed, 'learn_groups', w.scale)}/model.pt"


def learn_inputs(w):
    inputs = {"data": manifest(w.scale)}
    if needs_baseline(cfg(w.exp, w.seed, w.scale)):
        inputs["baseline"] = f"{run_dir('baseline', w.seed, 'train', w.scale)}/model.pt"
    return inputs


def baseline_args(wildcards, input):
    """`--baseline <file>` for SSL rows and groupings from the baseline, nothing otherwise (an argument list)."""
    return ["--baseline", input.baseline] if "baseline" in input.keys() else []


def threads_of(w):
    """Cores a job asks Snakemake for: the scale's torch threads (0 = torch's default: one core counted)."""
    return max(1, REGISTRY["scales"][w.scale]["engine"]["threads"])


def gpus(w):
    return REGISTRY["scales"][w.scale]["gpus"]


def finetune_workers(w):
    """Processes that finetune one split network (`--config finetune_workers=N`, else the scale's;
    1 for dense nets)."""
    if method(w.exp) not in SPLIT_METHODS:
        return 1
    return config["finetune_workers"] or REGISTRY["scales"][w.scale]["finetune_workers"]


def finetune_launcher(w):
    """The interpreter, or torchrun (as `python -m torch.distributed.run`, venv-safe) for several workers."""
    workers = finetune_workers(w)
    if workers == 1:
        return [PYTHON]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]


# GPU rules ask SLURM for one GPU and CPUs per GPU only at scales that use GPUs (paper).
GPU_RESOURCES = dict(gpu=gpus, cpus_per_gpu=lambda w: 8 if gpus(w) else 0,
                     mem_mb=lambda w: 16000 if gpus(w) else 2000, runtime=lambda w: 1440 if gpus(w) else 60)

wildcard_constraints:
    exp="|".join(re.escape(e) for e in sorted(experiment_names(REGISTRY), key=len, reverse=True)),
    seed=r"\d+",
    baseline="|".join(re.escape(e) for e in sorted(experiment_names(REGISTRY), key=len, reverse=True)
                      if method_of(REGISTRY, e) == "baseline"),
    scale="|".join(re.escape(s) for s in REGISTRY["scales"]),
