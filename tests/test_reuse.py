"""Reuse of earlier work is bound to all its inputs, through Snakemake, as a user reruns it.

One ci-scale workspace is changed step by step (data, seed, model, grouping, split seed,
finetune, SSL, baseline schedule); after each rerun, exactly the outputs that depend on the
change differ. The final workspace must equal a fresh, uninterrupted run of the final params
bit for bit. A failed rerun must not lose the finished result, and reverting a change reuses
the finished result of the old inputs instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import ROOT, check, snakemake

pytestmark = pytest.mark.slow

ROWS = ("baseline", "deep", "shallow_random", "ssl_1e-3")
STAGES = {
    "baseline": ("train",),
    "deep": ("learn_groups", "split", "finetune"),
    "shallow_random": ("split", "finetune"),
    "ssl_1e-3": ("learn_groups", "split", "finetune"),
}


def _model_digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


class Workspace:
    def __init__(self, base: Path) -> None:
        self.params = base / "params"
        shutil.copytree(ROOT / "params", self.params)
        self.results = base / "results"

    def run_dir(self, row: str, stage: str) -> Path:
        (seed,) = yaml.safe_load((self.params / "scales.yaml").read_text())["scales"]["ci"]["seeds"]
        return self.results / "ci" / "runs" / row / f"seed_{seed}" / stage

    def run(self) -> str:
        targets = [str(self.run_dir(row, "evaluate") / "metrics.json") for row in ROWS]
        proc = snakemake(
            "--cores", "2", *targets, "--config", "scale=ci", f"params_dir={self.params}", f"results={self.results}"
        )
        return proc

    def edit(self, name: str, path: str, value) -> None:
        file = self.params / name
        data = yaml.safe_load(file.read_text())
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        file.write_text(yaml.safe_dump(data, sort_keys=False))


def outputs(ws: Workspace) -> dict[str, str]:
    """Digest of every trained model's weights and every row's test error, by 'row/stage' (the
    workspace's seed)."""
    found = {
        f"{row}/{stage}": _model_digest(ws.run_dir(row, stage) / "model.pt") for row in ROWS for stage in STAGES[row]
    }
    for row in ROWS:
        metrics = json.loads((ws.run_dir(row, "evaluate") / "metrics.json").read_text())
        found[f"{row}/evaluate"] = f"{metrics['test_loss']!r} {metrics['params']}"
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {key for key in before if before[key] != after[key]}


ALL = {f"{row}/{stage}" for row in ROWS for stage in (*STAGES[row], "evaluate")}
DOWNSTREAM_OF_BASELINE = ALL - {"deep/learn_groups", "deep/split", "deep/finetune", "deep/evaluate"}

# (params file, key path, new value, outputs that must change)
CHANGES = [
    ("scales.yaml", "scales.ci.data.train_per_class", 150, ALL),
    ("scales.yaml", "scales.ci.seeds", [1], ALL),
    # group.gamma_balance: the change that once crashed finetune on a stale checkpoint
    (
        "experiments.yaml",
        "experiments.deep.group.gamma_balance",
        5.0,
        {"deep/learn_groups", "deep/split", "deep/finetune", "deep/evaluate"},
    ),
    (
        "experiments.yaml",
        "experiments.shallow_random.split",
        {"random_seed": 7},
        {"shallow_random/split", "shallow_random/finetune", "shallow_random/evaluate"},
    ),
    (
        "experiments.yaml",
        "defaults.finetune.schedule.lr",
        0.05,
        {f"{row}/{stage}" for row in ("deep", "shallow_random", "ssl_1e-3") for stage in ("finetune", "evaluate")},
    ),
    (
        "experiments.yaml",
        "experiments.ssl_1e-3.ssl.strength",
        0.05,
        {"ssl_1e-3/learn_groups", "ssl_1e-3/split", "ssl_1e-3/finetune", "ssl_1e-3/evaluate"},
    ),
    ("experiments.yaml", "defaults.train.schedule.lr", 0.05, DOWNSTREAM_OF_BASELINE),
]


@pytest.fixture(scope="module")
def changed_workspace(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("reuse"))
    check(ws.run())
    history = [outputs(ws)]
    for name, path, value, _ in CHANGES:
        ws.edit(name, path, value)
        check(ws.run())
        history.append(outputs(ws))
    return ws, history


@pytest.mark.parametrize("index", range(len(CHANGES)), ids=[c[1] for c in CHANGES])
def test_a_change_reruns_exactly_what_depends_on_it(changed_workspace, index):
    _, history = changed_workspace
    must_change = CHANGES[index][3]
    assert changed(history[index], history[index + 1]) == must_change


def test_changed_workspace_equals_a_fresh_run_bit_for_bit(changed_workspace, tmp_path):
    ws, history = changed_workspace
    fresh = Workspace(tmp_path)
    shutil.rmtree(fresh.params)
    shutil.copytree(ws.params, fresh.params)
    check(fresh.run())
    assert outputs(fresh) == history[-1]


def test_failed_rerun_loses_nothing_and_reverting_reuses_the_finished_result(changed_workspace):
    ws, history = changed_workspace
    # A change that fails (every stage refuses a batch larger than the training set): Snakemake
    # deletes the outputs of the jobs it reruns, and they fail.
    ws.edit("scales.yaml", "scales.ci.engine.batch_size", 100_000)
    assert ws.run().returncode != 0
    ws.edit("scales.yaml", "scales.ci.engine.batch_size", 100)
    proc = check(ws.run())
    assert outputs(ws) == history[-1]
    logs = "".join(p.read_text() for p in (ws.results / "ci" / "logs").rglob("*.log"))
    assert "reusing the finished result of identical inputs" in logs, proc.stderr[-2000:]
