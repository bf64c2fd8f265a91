"""The claims registry and its verdicts: quotes are the supplement's words, every rule does what
params/claims.yaml states, the MDE is the effect detected at the stated power."""

import csv
import io
import re
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from splitnet.claims import (
    CONTRADICTED,
    CSV_COLUMNS,
    HOLDS,
    INCONCLUSIVE,
    Samples,
    Stat,
    claim_experiments,
    claim_rows,
    interval,
    load_claims,
    mde,
    render_csv,
    render_markdown,
)
from splitnet.config import ConfigError, load_registry, read_yaml
from splitnet.per_seed import METRICS

REPO = Path(__file__).resolve().parents[1]
SUPPLEMENT = REPO.parent / "shared" / "reference" / "supplement.txt"
PAPER = read_yaml(REPO / "params" / "paper_results.yaml")
REGISTRY = load_registry(REPO / "params")
CLAIMS = load_claims(REPO / "params", REGISTRY, PAPER)
RULES = CLAIMS["rules"]
REQUIRED_IDS = {  # issue 18: at least these
    "shallow_matches_baseline", "deep_close_to_baseline", "hier_close_to_baseline", "deeper_splits_cost_more",
    "overlap_lowers_error", "overlap_adds_params_and_flops", "shallow_beats_ssl", "ssl_grows_with_strength",
    "ssl_weak_close_to_baseline", "g2_lowest_error", "g4_beats_g3", "g4_beats_baseline", "learned_beats_random_split",
    "low_weight_decay_better_groups", "dropout_helps_splitting", "reduced_gradient_faster",
    "weights_concentrate_in_blocks", "semantic_groups", "deep_degradation_is_capacity",
}  # fmt: skip


def _normalised(text: str) -> str:
    text = text.replace("\ufb01", "fi").replace("\ufb02", "fl").replace("-\n", "")
    return re.sub(r"\s+", " ", text)


def test_the_registry_holds_every_required_claim():
    assert REQUIRED_IDS <= {c["id"] for c in CLAIMS["claims"]}


@pytest.mark.skipif(not SUPPLEMENT.is_file(), reason="the supplement's text is not next to the repository")
def test_every_quote_is_the_supplements_text():
    text = _normalised(SUPPLEMENT.read_text())
    quoted = [c for c in CLAIMS["claims"] if c.get("quote")]
    assert len(quoted) >= 14
    for claim in quoted:
        assert _normalised(claim["quote"]) in text, claim["id"]


def test_interval_is_a_two_sided_welch_interval():
    # se = 0.245, df = 4, t_0.975 = 2.776: the 95 % half-width is 0.68 (scipy.stats.ttest_ind agrees)
    lo, hi = interval(Stat(20.0, 0.3, 3), Stat(19.0, 0.3, 3))
    assert (round(lo, 3), round(hi, 3)) == (0.32, 1.68)
    assert interval(Stat(30.0, 0.0, 1), Stat(19.0, 0.3, 3)) is None  # one seed: no noise estimate
    assert interval(Stat(300.0, 0.0, 3), Stat(100.0, 0.0, 3)) == (200.0, 200.0)  # identical seeds: exact


@pytest.mark.parametrize("a,b", [(Stat(20, 0.3, 3), Stat(19, 0.3, 3)), (Stat(14, 0.35, 8), Stat(14, 0.2, 8))])
def test_mde_is_detected_with_the_stated_power(a, b):
    """At a true difference of the MDE, Welch's test rejects with ~80 % probability (noncentral t)."""
    detectable = mde(a, b)
    parts = [a.std**2 / a.n, b.std**2 / b.n]
    se = sum(parts) ** 0.5
    df = sum(parts) ** 2 / sum(p**2 / (s.n - 1) for p, s in zip(parts, (a, b)))
    crit = scipy_stats.t.ppf(0.975, df)
    power = scipy_stats.nct.sf(crit, df, detectable / se) + scipy_stats.nct.cdf(-crit, df, detectable / se)
    assert 0.78 <= power <= 0.83


def test_more_seeds_detect_smaller_effects():
    assert mde(Stat(14, 0.3, 12), Stat(14, 0.3, 12)) < mde(Stat(14, 0.3, 3), Stat(14, 0.3, 3)) / 2
    assert mde(Stat(14, 0.3, 1), Stat(14, 0.3, 3)) is None


def _rows(values: dict[str, list[float]], metric: str = "test_error", **other: list[float]) -> list[dict]:
    rows = []
    for exp, series in values.items():
        for seed, v in enumerate(series):
            row = {"experiment": exp, "seed": seed, **dict.fromkeys(METRICS)}
            row[metric] = v
            for key, extra in other.items():
                row[key] = extra[seed]
            rows.append(row)
    return rows


def _judge(claim_id: str, rows: list[dict]) -> dict:
    doc = {**CLAIMS, "claims": [c for c in CLAIMS["claims"] if c["id"] == claim_id]}
    (row,) = claim_rows(doc, Samples(rows), PAPER)
    return row


def test_lower_holds_contradicts_or_stays_within_noise():
    better = _rows({"fc_overlap": [13.0, 13.1, 12.9], "fc": [14.0, 14.1, 13.9]})
    same = _rows({"fc_overlap": [14.0, 13.6, 14.3], "fc": [14.0, 14.1, 13.9]})
    worse = _rows({"fc_overlap": [15.0, 15.1, 14.9], "fc": [14.0, 14.1, 13.9]})
    # only fc's comparison has rows: the others are missing, so the best the claim can be is inconclusive
    assert _judge("overlap_lowers_error", better)["verdict"] == INCONCLUSIVE
    assert _judge("overlap_lowers_error", worse)["verdict"] == CONTRADICTED
    assert _judge("overlap_lowers_error", same)["verdict"] == INCONCLUSIVE
    full = better + _rows(
        {"shallow_overlap": [13.0, 13.1, 12.9], "shallow": [14.0, 14.1, 13.9],
         "deep_overlap": [16.0, 16.1, 15.9], "deep": [17.0, 17.1, 16.9]}
    )  # fmt: skip
    row = _judge("overlap_lowers_error", full)
    assert row["verdict"] == HOLDS
    assert row["n"] == "3 vs 3; 3 vs 3; 3 vs 3"
    assert row["paper_effect"] == "0.22; 0.22; 0.56"  # 24.26 - 24.04, 23.96 - 23.74, 24.66 - 24.10


def test_not_worse_uses_the_margin_and_reports_the_paper_effect():
    margin = RULES["close_margin_pt"]
    close = _rows({"deep": [14.5, 14.6, 14.4], "baseline": [14.0, 14.1, 13.9]})
    far = _rows({"deep": [17.5, 17.6, 17.4], "baseline": [14.0, 14.1, 13.9]})
    assert _judge("deep_close_to_baseline", close)["verdict"] == HOLDS  # +0.5, CI well below the margin
    row = _judge("deep_close_to_baseline", far)
    assert row["verdict"] == CONTRADICTED and f"margin +{margin:.2f}" in row["our_evidence"]
    assert row["paper_effect"] == f"{margin - (24.66 - 24.28):.2f}"  # how far inside the margin the paper is


def test_a_comparison_that_cannot_see_the_papers_effect_says_untestable():
    noisy = _rows({"fc_overlap": [13.0, 14.0, 15.0], "fc": [14.0, 13.0, 15.5]})
    row = _judge("overlap_lowers_error", noisy)
    assert "untestable at n = 3 vs 3" in row["our_evidence"] and row["verdict"] == INCONCLUSIVE
    quiet = _rows({"fc_overlap": [13.70, 13.71, 13.72], "fc": [14.0, 14.01, 14.02]})
    assert "untestable" not in _judge("overlap_lowers_error", quiet)["our_evidence"]


def test_above_and_architecture_rules():
    ari = _rows({"shallow": [0.9, 0.95, 0.85], "shallow_g3": [0.1, 0.0, 0.05]}, "ari")
    assert _judge("semantic_groups", ari)["verdict"] == CONTRADICTED  # shallow_g3 clearly below 0.5
    tol = RULES["architecture_tolerance_pt"]
    exact = {"balanced_params_reduced_pct": [24.4] * 3}
    base = {"baseline": [14.0, 14.1, 13.9]}
    ok = _rows({"shallow": [14.0, 14.1, 13.9], **base}) + _rows(
        {"shallow": [24.4, 24.4 + tol / 2, 24.4]}, "params_reduced_pct", **exact
    )
    rows = _merge(ok)
    assert _judge("shallow_matches_baseline", rows)["verdict"] == HOLDS
    off = _merge(
        _rows({"shallow": [14.0, 14.1, 13.9], **base})
        + _rows({"shallow": [20.0, 20.0, 20.0]}, "params_reduced_pct", **exact)
    )
    assert _judge("shallow_matches_baseline", off)["verdict"] == CONTRADICTED


def _merge(rows: list[dict]) -> list[dict]:
    """Rows of the same (experiment, seed) as one row (each helper call sets one metric)."""
    merged: dict = {}
    for r in rows:
        into = merged.setdefault((r["experiment"], r["seed"]), dict(r))
        into.update({k: v for k, v in r.items() if v is not None})
    return list(merged.values())


def test_gap_shrinks_compares_the_penalty_at_two_widths():
    rows = _rows(
        {"deep": [17.0, 17.2, 16.8], "baseline": [14.0, 14.2, 13.8],
         "deep@width4": [12.5, 12.6, 12.4], "baseline@width4": [12.0, 12.1, 11.9],
         "hier": [17.0, 17.2, 16.8], "hier@width4": [12.5, 12.6, 12.4]}
    )  # fmt: skip
    row = _judge("deep_degradation_is_capacity", rows)
    assert row["verdict"] == HOLDS and "+3.00 as run, +0.50 at width4" in row["our_evidence"]
    missing = _judge("deep_degradation_is_capacity", [r for r in rows if "@" not in r["experiment"]])
    assert missing["verdict"] == INCONCLUSIVE and "gap_study" in missing["our_evidence"]


def test_steps_to_convergence_needs_every_seed_converged():
    rows = _rows({"shallow_simplex": [100.0, 100.0, None], "shallow": [300.0, 300.0, 300.0]}, "steps_to_convergence")
    assert _judge("reduced_gradient_faster", rows)["verdict"] == INCONCLUSIVE
    rows = _rows({"shallow_simplex": [100.0, 100.0, 150.0], "shallow": [300.0, 300.0, 300.0]}, "steps_to_convergence")
    assert _judge("reduced_gradient_faster", rows)["verdict"] == HOLDS


def test_rendered_tables_have_one_row_per_claim():
    rows = claim_rows(CLAIMS, Samples([]), PAPER)
    assert all(r["verdict"] == INCONCLUSIVE for r in rows)  # no runs: nothing decided
    table = list(csv.DictReader(io.StringIO(render_csv(rows, "cpu"))))
    assert len(table) == len(CLAIMS["claims"]) and list(table[0]) == [*CSV_COLUMNS, "scale"]
    markdown = render_markdown(rows, "caption", RULES)
    assert "Welch" in markdown and markdown.count("\n| `") == len(CLAIMS["claims"])
    assert "“Our Shallow Split (23.96%) outperforms" in markdown


def test_claims_read_the_gap_rows_only_for_the_gap_study():
    assert "deep@width4" not in claim_experiments(CLAIMS)
    assert {"deep@width4", "baseline@width4"} <= claim_experiments(CLAIMS, gap_study=True)
    assert {"shallow_random", "deep_wd5e-4", "deep_no_dropout"} <= claim_experiments(CLAIMS)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["claims"][0]["tests"][0].update(a="nope"), "claims[0] (shallow_matches_baseline).tests[0]: unknown experiment 'nope'"),
        (lambda d: d["claims"][0]["paper"].append("table1.shallow.nothing"), "table1.shallow.nothing is not a cell"),
        (lambda d: d["claims"][0]["tests"][0].pop("b"), "'b' is a required property"),
        (lambda d: d["rules"].pop("close_margin_pt"), "rules: 'close_margin_pt' is a required property"),
    ],
)  # fmt: skip
def test_a_bad_registry_is_one_line_naming_the_claim(tmp_path, edit, message):
    shutil.copytree(REPO / "params", tmp_path / "params")
    doc = yaml.safe_load((tmp_path / "params" / "claims.yaml").read_text())
    edit(doc)
    (tmp_path / "params" / "claims.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_claims(tmp_path / "params", REGISTRY, PAPER)
    assert message in str(err.value) and "claims.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_verdict_one_seed_can_flip_is_not_stable():
    clear = _rows({"deep": [14.5, 14.6, 14.4, 14.5], "baseline": [14.0, 14.1, 13.9, 14.0]})
    assert _judge("deep_close_to_baseline", clear)["stable"] == "yes"
    # three seeds put the upper end of the CI below the margin; with any one left out, n = 2 does not
    edge = _rows({"deep": [14.3, 14.7, 14.5], "baseline": [14.0, 14.1, 13.9, 14.0]})
    row = _judge("deep_close_to_baseline", edge)
    assert row["verdict"] == HOLDS and row["stable"] == "no"
