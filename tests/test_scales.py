"""The `paper_fp32` scale is the `paper` scale without bf16 autocast, and nothing else.

params/scales.yaml writes it with YAML merge keys (`<<: *paper`), so the paper scale's values are
written once; these tests check what the merge produces, through the same loader and schema as
every run (splitnet.config.load_registry) and through PyYAML's safe_load (which the tests that
copy the params use).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from splitnet.config import experiment_names, load_registry, resolve

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(ROOT / "params")


def _without_bf16(entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    del entry["engine"]["bf16"]
    return entry


def test_paper_fp32_differs_from_paper_only_in_bf16():
    paper, fp32 = REGISTRY["scales"]["paper"], REGISTRY["scales"]["paper_fp32"]
    assert paper["engine"]["bf16"] is True and fp32["engine"]["bf16"] is False
    assert {k: v for k, v in _without_bf16(fp32).items() if k != "description"} == {
        k: v for k, v in _without_bf16(paper).items() if k != "description"
    }
    raw = yaml.safe_load((ROOT / "params" / "scales.yaml").read_text())["scales"]
    assert raw["paper_fp32"] == fp32 and "<<" not in raw["paper_fp32"] and "<<" not in raw["paper_fp32"]["engine"]


@pytest.mark.parametrize("experiment", experiment_names(REGISTRY))
def test_every_experiment_resolves_the_same_at_paper_and_paper_fp32(experiment):
    paper, fp32 = resolve(REGISTRY, experiment, "paper"), resolve(REGISTRY, experiment, "paper_fp32")
    assert (paper["scale"], fp32["scale"]) == ("paper", "paper_fp32")
    assert (paper["engine"]["bf16"], fp32["engine"]["bf16"]) == (True, False)
    for cfg in (paper, fp32):
        del cfg["scale"], cfg["engine"]["bf16"]
    assert fp32 == paper


@pytest.mark.parametrize(
    "file, line, key",
    [
        ("experiments.yaml", "    overlap: null", "defaults.group: 'overlap'"),
        ("scales.yaml", "    finetune_workers: 1", "scales.paper(_fp32)?: 'finetune_workers'"),
    ],
)
def test_a_missing_key_is_named_with_what_to_do(tmp_path, file, line, key):
    """Defaults live only in params/ (the code has none), so every key is required: its absence is one line."""
    from splitnet.config import ConfigError

    for name in ("experiments.yaml", "scales.yaml"):
        (tmp_path / name).write_text((ROOT / "params" / name).read_text())
    lines = (tmp_path / file).read_text().splitlines(keepends=True)
    first = next(i for i, text in enumerate(lines) if text.startswith(line))  # the key's first occurrence
    (tmp_path / file).write_text("".join(lines[:first] + lines[first + 1 :]))
    with pytest.raises(ConfigError, match=rf"{file}: {key} is a required property; add it"):
        load_registry(tmp_path)


def test_paper_grid_cost_counts_every_sgd_step_of_the_dag(tmp_path):
    """benchmarks/paper_grid_cost.py: the steps it reads off the DAG are the registry's epochs x 500
    steps per epoch (45,000 CIFAR-100 training images / batch 90), and the makespan is consistent."""
    import json
    import subprocess
    import sys

    from splitnet.claims import claim_experiments, load_claims
    from splitnet.config import METHOD_STAGES, read_yaml, resolve
    from splitnet.outputs import table_runs

    out = tmp_path / "cost.json"
    script = ROOT / "benchmarks" / "paper_grid_cost.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, timeout=600, cwd=ROOT)
    result = json.loads(out.read_text())
    claims = load_claims(ROOT / "params", REGISTRY, read_yaml(ROOT / "params" / "paper_results.yaml"))
    runs = table_runs(REGISTRY, "paper", claim_experiments(claims))
    expected = {"learn_groups": 0, "finetune": 0}
    for exp, seed in runs:
        cfg = resolve(REGISTRY, exp, "paper", seed)
        if "learn_groups" in METHOD_STAGES[cfg["method"]]:
            expected["learn_groups"] += 500 * cfg["ssl" if cfg["method"] == "ssl" else "group"]["schedule"]["epochs"]
        if "finetune" in METHOD_STAGES[cfg["method"]]:
            expected["finetune"] += 500 * cfg["finetune"]["schedule"]["epochs"]
    assert {rule: result["per_rule"][rule]["sgd_steps"] for rule in expected} == expected
    spans = result["makespan_hours"]
    assert spans["1"] == pytest.approx(result["gpu_hours"])
    assert result["longest_job_hours"] <= spans["8"] < spans["1"]
    assert spans["8"] >= result["gpu_hours"] / 8
