"""The claims table: quotes are the supplement's words, the verdict rule does what it states."""

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from splitnet.claims import (
    CLAIMS,
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    Runs,
    Stat,
    claim_rows,
    combine,
    compare,
    interval,
    render_csv,
    render_markdown,
)

REPO = Path(__file__).resolve().parents[1]
SUPPLEMENT = REPO.parent / "shared" / "reference" / "supplement.txt"
PAPER = yaml.safe_load((REPO / "params" / "paper_results.yaml").read_text())


def _normalised(text: str) -> str:
    text = text.replace("\ufb01", "fi").replace("\ufb02", "fl").replace("-\n", "")
    return re.sub(r"\s+", " ", text)


@pytest.mark.skipif(not SUPPLEMENT.is_file(), reason="the supplement's text is not next to the repository")
def test_every_quote_is_the_supplements_text():
    text = _normalised(SUPPLEMENT.read_text())
    for claim in CLAIMS:
        if claim.quote:
            assert _normalised(claim.quote) in text, claim.key


def test_compare_is_a_two_sided_welch_test_at_five_percent():
    # se = 0.245, df = 4, t_0.975 = 2.776: the 95 % half-width is 0.68 (scipy.stats.ttest_ind agrees)
    a, b = Stat(20.0, 0.3, 3), Stat(19.0, 0.3, 3)
    lo, hi = interval(a, b)
    assert (round(lo, 3), round(hi, 3)) == (0.32, 1.68)
    assert compare(a, b) == 1 and compare(b, a) == -1
    assert compare(Stat(19.6, 0.3, 3), b) == 0  # 0.6 < 0.68: within noise
    assert compare(Stat(30.0, 0.0, 1), b) == 0  # one seed: no noise estimate, nothing counts
    assert compare(None, b) == 0
    assert compare(Stat(300.0, 0.0, 3), Stat(100.0, 0.0, 3)) == 1  # identical seeds: the difference is exact
    assert combine([1, 1]) == HOLDS and combine([1, 0]) == INCONCLUSIVE and combine([1, -1]) == CONTRADICTED
    assert combine([]) == INCONCLUSIVE


def _write(runs: Path, exp: str, errors: list[float], reduced: float, **extra) -> None:
    for seed, error in enumerate(errors):
        path = runs / exp / f"seed_{seed}" / "evaluate" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"test_error": error, "params_reduced_pct": reduced + 0.1 * seed, **extra}))


def test_verdicts_from_synthetic_runs(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, "baseline", [15.0, 15.2, 14.9], 0.0)
    _write(
        runs,
        "shallow",
        [15.1, 15.0, 15.2],
        30.0,
        grouping={"steps_to_convergence": {"all": 350}},
        groups={"superclass_ari": 0.1},
    )
    _write(runs, "shallow_simplex", [15.0, 15.1, 15.3], 30.0, grouping={"steps_to_convergence": {"all": 100}})
    _write(runs, "deep", [16.0, 16.2, 16.1], 40.0)
    _write(runs, "hier", [15.2, 14.8, 15.6], 50.0)  # within noise of shallow
    _write(runs, "ssl_1e-3", [15.0, 15.1, 15.2], 1.0)  # as good as shallow: not beaten
    _write(runs, "ssl_3e-3", [15.5, 15.6, 15.7], 10.0)
    _write(runs, "ssl_5e-3", [16.5, 16.6, 16.7], 30.0)
    _write(runs, "shallow_g3", [13.0, 13.1, 13.2], 40.0)  # better than G = 2: against the claim
    # the preset rows: G = 2 scored against the best 2-merge of the superclasses
    _write(runs, "shallow@semantic", [15.0, 15.0, 15.0], 30.0, groups={"superclass_ari": 0.72, "best_merge_ari": 1.0})
    _write(runs, "shallow_g3@semantic", [15.0, 15.0, 15.0], 30.0, groups={"superclass_ari": 0.8})
    rows = {r["claim"]: r for r in claim_rows(Runs(runs, [0, 1, 2]), PAPER)}
    assert rows["shallow_matches_baseline"]["verdict"] == HOLDS
    assert rows["deeper_splits_cost_accuracy"]["verdict"] == INCONCLUSIVE  # deep yes, hier within noise
    assert rows["ssl_grows_with_strength"]["verdict"] == HOLDS
    assert rows["shallow_beats_ssl"]["verdict"] == INCONCLUSIVE  # params yes, error within noise
    assert rows["g2_lowest_g4_beats_g3"]["verdict"] == CONTRADICTED
    assert rows["reduced_gradient_converges_faster"]["verdict"] == HOLDS
    assert rows["class_groups_semantic"]["verdict"] == CONTRADICTED  # ARI 0.1 with no spread: below 0.5
    assert rows["class_groups_semantic_with_preset"]["verdict"] == HOLDS
    assert "ARI shallow@semantic 1.00 ± 0.00 (n=3)" in rows["class_groups_semantic_with_preset"]["our_evidence"]
    assert rows["overlap_lowers_error_adds_params"]["verdict"] == INCONCLUSIVE  # overlap rows missing
    assert "15.10 ± 0.10 (n=3)" in rows["shallow_matches_baseline"]["our_evidence"]
    assert "23.96" in rows["shallow_beats_ssl"]["paper_evidence"]

    table = list(csv.DictReader(io.StringIO(render_csv(list(rows.values()), "cpu"))))
    assert {r["verdict"] for r in table} <= {HOLDS, CONTRADICTED, INCONCLUSIVE} and len(table) == len(CLAIMS)
    markdown = render_markdown(list(rows.values()), "caption")
    assert "Welch" in markdown and markdown.count("\n| ") == len(CLAIMS) + 1
