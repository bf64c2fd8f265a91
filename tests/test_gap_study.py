"""The gap study: its arms, the penalty over the baseline at the same width, its table and figure."""

import csv
import json

import pytest

from splitnet.claims import claim_experiments, load_claims
from splitnet.cli import main
from splitnet.config import load_registry, read_yaml, resolve
from splitnet.gap_study import COLUMNS, gap_cells, gap_runs
from splitnet.outputs import ScaleOutputs, table_runs

REGISTRY = load_registry("params")


def test_arms_are_every_row_at_every_width_and_the_confounders():
    study = REGISTRY["gap_study"]
    cells = gap_cells(REGISTRY)
    assert len(cells) == len(study["rows"]) * len(study["widths"]) + len(study["arms"])
    assert {c.experiment for c in cells} >= {"deep", "deep@width4", "baseline@width2", "deep_no_dropout"}
    assert resolve(REGISTRY, "deep@width4", "cpu")["model"]["arch"] == "wrn-10-4"
    assert resolve(REGISTRY, "deep@finetune_x2", "cpu")["finetune"]["schedule"]["epochs"] == 8
    assert len(gap_runs(REGISTRY)) == len(cells) * len(study["seeds"])


def test_the_claims_read_the_gap_runs_only_with_the_gap_study():
    claims = load_claims("params", REGISTRY, read_yaml(__import__("pathlib").Path("params/paper_results.yaml")))
    plain = {exp for exp, _ in table_runs(REGISTRY, "cpu", claim_experiments(claims))}
    with_gap = {exp for exp, _ in table_runs(REGISTRY, "cpu", claim_experiments(claims, gap_study=True))}
    assert with_gap - plain == {"deep@width4", "hier@width4", "baseline@width4"}


def _write(results, exp: str, errors: list[float], reduced: float = 0.0, params: int = 76938) -> None:
    for seed, error in enumerate(errors):
        path = ScaleOutputs(results, "cpu").run_dir(exp, seed, "evaluate") / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"test_error": error, "params_reduced_pct": reduced, "params": params}))


def test_penalty_is_over_the_baseline_at_the_same_width(tmp_path):
    _write(tmp_path, "baseline", [14.0, 14.2, 13.8])
    _write(tmp_path, "deep", [17.5, 17.7, 17.3], 43.5)
    _write(tmp_path, "baseline@width4", [10.0, 10.2, 9.8])
    _write(tmp_path, "deep@width4", [10.5, 10.7, 10.3], 45.0)
    _write(tmp_path, "deep_no_dropout", [18.0, 18.2, 17.8], 43.5)
    _write(tmp_path, "baseline@thin_deep", [14.5, 14.7, 14.3], 0.0, 44026)
    assert main(["gap-study", "--results", str(tmp_path)]) == 0
    out = ScaleOutputs(tmp_path, "cpu")
    rows = {r["arm"]: r for r in csv.DictReader(open(out.tables / "gap_study.csv"))}
    assert tuple(next(iter(rows.values()))) == COLUMNS
    assert float(rows["deep"]["penalty_mean"]) == pytest.approx(3.5)
    assert float(rows["deep@width4"]["penalty_mean"]) == pytest.approx(0.5)  # against baseline@width4, not baseline
    assert float(rows["deep_no_dropout"]["penalty_mean"]) == pytest.approx(4.0)
    assert rows["deep_no_dropout"]["kind"] == "confounder" and rows["baseline"]["penalty_mean"] == ""
    # the thinned dense net: its penalty is over the full-width baseline, its params are its own
    assert float(rows["baseline@thin_deep"]["penalty_mean"]) == pytest.approx(0.5)
    assert float(rows["baseline@thin_deep"]["params_mean"]) == 44026
    assert rows["hier@width2"]["seeds"] == "0"
    assert "| hier@width2 | width2 | 0 | (not run) |" in (out.tables / "gap_study.md").read_text()
    assert (out.figures / "gap_study.png").stat().st_size > 10_000


@pytest.mark.parametrize(("preset", "split_row"), [("thin_deep", "deep"), ("thin_hier", "hier")])
def test_thinned_dense_nets_have_the_split_nets_param_counts(preset, split_row):
    """The thin presets' dense nets are within 2 % of the params of the split they stand for (balanced groups)."""
    from splitnet.counting import count_model
    from splitnet.model import wide_resnet
    from splitnet.per_seed import balanced_params_reduced_pct

    scale = REGISTRY["gap_study"]["scale"]
    arch = resolve(REGISTRY, f"baseline@{preset}", scale)["model"]["arch"]
    split_cfg = resolve(REGISTRY, split_row, scale)
    shape, classes = (1, 12, 12), 10  # the cpu scale: Fashion-MNIST at 12x12
    dense = count_model(wide_resnet(split_cfg["model"]["arch"], in_channels=1, num_classes=classes), shape).params
    split = dense * (
        1 - balanced_params_reduced_pct(split_cfg["model"]["arch"], shape, classes, split_cfg["group"]["split"]) / 100
    )
    thin = count_model(wide_resnet(arch, in_channels=1, num_classes=classes), shape).params
    assert abs(thin / split - 1) < 0.02, (arch, thin, split)


def test_a_gap_study_naming_an_unknown_preset_is_one_line(tmp_path):
    import shutil

    from splitnet.config import ConfigError

    shutil.copytree("params", tmp_path / "params")
    path = tmp_path / "params" / "experiments.yaml"
    path.write_text(path.read_text().replace("widths: [paper, width2, width4]", "widths: [paper, width3]"))
    with pytest.raises(ConfigError, match=r"experiments.yaml: gap_study.widths: unknown preset 'width3'"):
        load_registry(tmp_path / "params")
