"""The code part of a stage's digest: exactly the code the stage runs, by syntax tree.

Edits are made in a copy of the package, and digests compared before and after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from splitnet.config import REPORTS, STAGES
from splitnet.fingerprint import PACKAGE_ROOT, code_digest, code_files


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "splitnet"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def digests(root: Path) -> dict[str, str]:
    found = {stage: code_digest(s.entries, root=root) for stage, s in STAGES.items()}
    found |= {f"report:{name}": code_digest([entry], exclude=(), root=root) for name, entry in REPORTS.items()}
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {key for key in before if before[key] != after[key]}


def test_each_stage_runs_its_own_modules():
    files = {stage: set(code_files(s.entries)) for stage, s in STAGES.items()}
    assert {"regularizers", "reduced_gradient", "grouping_stage"} <= files["learn_groups"]
    assert not {"regularizers", "reduced_gradient", "grouping_stage"} & (files["train"] | files["evaluate"])
    assert {"parallel.finetune", "parallel.runner", "parallel"} <= files["finetune"]  # the model-parallel entry
    assert files["prepare_data"] >= {"data", "data.prepare", "data.cifar100"}
    assert "engine" not in files["prepare_data"]
    assert "metrics" in files["evaluate"] and "metrics" not in files["train"]
    assert all({"fingerprint", "io"} <= f for stage, f in files.items() if stage != "prepare_data")
    for f in files.values():  # presentation code is not a training stage's
        assert not {"cli", "tables", "figures", "records", "validate"} & f


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("regularizers.py", {"learn_groups"}),
        ("ssl.py", {"learn_groups", "split"}),
        ("engine.py", {"train", "learn_groups", "split", "finetune", "evaluate"}),
        ("data/planted.py", set(STAGES)),
        ("parallel/runner.py", {"finetune"}),
        ("metrics.py", {"evaluate", "report:tables", "report:track", "report:study"}),
        ("tables.py", {"report:tables", "report:track", "report:study", "report:gap_study"}),
        ("figures.py", {"report:figures", "report:study", "report:gap_study"}),
        ("mlflow_import.py", {"report:track"}),
        ("cli.py", set()),
    ],
)
def test_a_code_change_changes_exactly_the_digests_of_the_code_that_runs_it(package, module, expected):
    before = digests(package)
    path = package / module
    path.write_text(path.read_text() + "\n_FINGERPRINT_TEST = 1\n")
    assert changed(before, digests(package)) == expected


def test_editing_one_stage_function_leaves_the_other_stages_of_its_module_alone(package):
    before = digests(package)
    path = package / "stages.py"
    source = path.read_text()
    marker = '    """Cut the network: learned (splitnet), random (random) or pruned (ssl)."""\n'
    assert marker in source
    path.write_text(source.replace(marker, marker + "    _ = 0\n"))
    assert changed(before, digests(package)) == {"split"}


def test_comments_and_formatting_are_no_change(package):
    before = digests(package)
    for module in ("regularizers.py", "stages.py", "engine.py"):
        path = package / module
        path.write_text("# an edited comment\n" + path.read_text().replace("\n\n\n", "\n\n\n\n") + "\n# end\n")
    assert digests(package) == before


def test_an_unknown_entry_is_named():
    with pytest.raises(ValueError, match="stages:no_such_stage"):
        code_digest(["stages:no_such_stage"])
