"""The supplement's qualitative claims, each checked against this scale's runs (``claims.md/.csv``).

Every claim compares rows over their seeds with Welch's t statistics (unequal variances): a
difference of two rows' means counts when its 95 % confidence interval excludes 0 (two-sided
Welch t-test, p < 0.05); with fewer than two seeds on a side nothing counts.  A claim ``holds``
when every comparison it makes goes its way by that rule, is ``contradicted`` when one goes
significantly the other way, and is ``inconclusive`` otherwise (within seed noise, or rows
missing).  The paper's evidence quotes the supplement (``../shared/reference/supplement.txt``;
tests check every quote) and ``params/paper_results.yaml``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scipy import stats as scipy_stats

from .io import atomic_write_text
from .metrics import semantic_ari
from .tables import mean_std, seed_metrics

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
CONFIDENCE = 0.95
RULE = (
    "Two rows differ when the 95 % confidence interval of the difference of their means (Welch, unequal "
    "variances, over seeds; n ≥ 2 per row) excludes 0, i.e. a two-sided Welch t-test at p < 0.05. holds: every "
    "comparison of the claim goes its way by that rule; contradicted: one goes significantly the other way; "
    "inconclusive: otherwise (within seed noise, or rows missing)."
)
MATCH_PT = 1.0  # "matches" (non-inferiority): the 95 % interval of the error increase stays below 1 point
PARAMS_THIRD = (23.0, 43.0)  # "about 1/3 fewer params": the paper's 32.5 % ± 10 points
SEMANTIC_ARI = 0.5  # "semantic": ARI against the superclasses clearly above 0.5 (0 = chance)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std over seeds (0 for one seed)
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stat(values: list[float]) -> Stat | None:
    return Stat(*mean_std(values), len(values)) if values else None


def interval(a: Stat, b: Stat | None = None, reference: float = 0.0) -> tuple[float, float] | None:
    """95 % confidence interval of ``a.mean - b.mean`` (Welch), or of ``a.mean - reference``
    without ``b``; None when a side has fewer than two seeds."""
    sides = [a] if b is None else [a, b]
    if any(side.n < 2 for side in sides):
        return None
    d = a.mean - (reference if b is None else b.mean)
    parts = [side.std**2 / side.n for side in sides]
    se = math.sqrt(sum(parts))
    if se == 0:  # identical seeds on both sides (e.g. deterministic step counts): the difference is exact
        return d, d
    df = sum(parts) ** 2 / sum(p**2 / (side.n - 1) for p, side in zip(parts, sides))  # Welch-Satterthwaite
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
    return d - half, d + half


def compare(a: Stat | None, b: Stat | None) -> int:
    """+1: a is significantly larger than b, -1: significantly smaller, 0: neither (or unknown)."""
    ci = None if a is None or b is None else interval(a, b)
    if ci is None:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def combine(outcomes: list[int]) -> str:
    """Each outcome: +1 the claim's way, -1 significantly against it, 0 within noise."""
    if any(o < 0 for o in outcomes):
        return CONTRADICTED
    return HOLDS if outcomes and all(o > 0 for o in outcomes) else INCONCLUSIVE


class Runs:
    """Per-seed metrics of every row at one scale, and the statistics the claims read."""

    def __init__(self, runs_dir: Path, seeds: list[int]) -> None:
        self.runs_dir, self.seeds = Path(runs_dir), seeds
        self._cache: dict[str, list[dict]] = {}

    def metrics(self, exp: str) -> list[dict]:
        if exp not in self._cache:
            self._cache[exp] = seed_metrics(self.runs_dir, exp, self.seeds)
        return self._cache[exp]

    def error(self, exp: str) -> Stat | None:
        return stat([m["test_error"] for m in self.metrics(exp)])

    def params_reduced(self, exp: str) -> Stat | None:
        return stat([m["params_reduced_pct"] for m in self.metrics(exp)])

    def convergence_steps(self, exp: str) -> Stat | None:
        """Steps until every assignment variable converged; None if a seed never converged."""
        steps = [m.get("grouping", {}).get("steps_to_convergence", {}).get("all") for m in self.metrics(exp)]
        return None if None in steps else stat([float(s) for s in steps])

    def ari(self, exp: str) -> Stat | None:
        """ARI of the class groups against the superclasses (their best merge, with fewer groups)."""
        scores = [semantic_ari(m.get("groups", {})) for m in self.metrics(exp)]
        return stat([s for s in scores if s is not None])


def _fmt(name: str, value: Stat | None, unit: str = "") -> str:
    return f"{name} {value}{unit}" if value is not None else f"{name} missing"


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    paper: Callable[[dict], str]  # paper_results.yaml -> the paper's evidence
    check: Callable[[Runs], tuple[str, str]]  # -> (our evidence, verdict)
    quote: str = ""  # verbatim from the supplement (whitespace-normalised), checked by a test


def _shallow_matches_baseline(runs: Runs) -> tuple[str, str]:
    e_s, e_b, red = runs.error("shallow"), runs.error("baseline"), runs.params_reduced("shallow")
    text = f"{_fmt('error Shallow', e_s, ' %')}; {_fmt('baseline', e_b, ' %')}; {_fmt('params reduced', red, ' %')}"
    ci = None if e_s is None or e_b is None else interval(e_s, e_b)
    if ci is None or red is None:
        return text, INCONCLUSIVE
    text += f"; error difference (Shallow − baseline) 95 % CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    third = PARAMS_THIRD[0] <= red.mean <= PARAMS_THIRD[1]
    if ci[1] <= MATCH_PT and third:  # non-inferior: at worst MATCH_PT worse, perhaps better
        return text, HOLDS
    if ci[0] > MATCH_PT or not third:
        return text, CONTRADICTED
    return text, INCONCLUSIVE


def _higher(
    runs: Runs, pairs: list[tuple[str, str]], value: Callable[[str], Stat | None], what: str, unit: str = " %"
) -> tuple[str, str]:
    """Each pair (a, b) claims value(a) > value(b)."""
    parts, outcomes = [], []
    for a, b in pairs:
        va, vb = value(a), value(b)
        parts.append(f"{what} {_fmt(a, va, unit)} vs {_fmt(b, vb, unit)}")
        outcomes.append(compare(va, vb))
    return "; ".join(parts), combine(outcomes)


def _overlap(runs: Runs) -> tuple[str, str]:
    pairs = [("fc", "fc_overlap"), ("shallow", "shallow_overlap"), ("deep", "deep_overlap")]
    err_text, err = _higher(runs, pairs, runs.error, "error")
    red_text, red = _higher(runs, pairs, runs.params_reduced, "params reduced")
    return f"{err_text}; {red_text}", combine([{HOLDS: 1, CONTRADICTED: -1}.get(v, 0) for v in (err, red)])


def _shallow_beats_ssl(runs: Runs) -> tuple[str, str]:
    err_text, err = _higher(runs, [("ssl_1e-3", "shallow")], runs.error, "error")
    red_text, red = _higher(runs, [("shallow", "ssl_1e-3")], runs.params_reduced, "params reduced")
    return f"{err_text}; {red_text}", combine([{HOLDS: 1, CONTRADICTED: -1}.get(v, 0) for v in (err, red)])


def _ssl_trend(runs: Runs) -> tuple[str, str]:
    pairs = [("ssl_3e-3", "ssl_1e-3"), ("ssl_5e-3", "ssl_3e-3")]
    red_text, red = _higher(runs, pairs, runs.params_reduced, "params reduced")
    err_text, err = _higher(runs, pairs, runs.error, "error")
    return f"{red_text}; {err_text}", combine([{HOLDS: 1, CONTRADICTED: -1}.get(v, 0) for v in (red, err)])


def _reduced_gradient_faster(runs: Runs) -> tuple[str, str]:
    soft, simplex = runs.convergence_steps("shallow"), runs.convergence_steps("shallow_simplex")
    text = (
        f"{_fmt('steps to convergence softmax (shallow)', soft)} vs "
        f"{_fmt('reduced gradient (shallow_simplex)', simplex)}"
    )
    return text, combine([compare(soft, simplex)])


def _semantic(runs: Runs, rows: tuple[str, ...]) -> tuple[str, str]:
    parts, outcomes = [], []
    for exp in rows:
        ari = runs.ari(exp)
        ci = None if ari is None else interval(ari, reference=SEMANTIC_ARI)
        parts.append(_fmt(f"ARI {exp}", ari))
        outcomes.append(0 if ci is None else 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0)
    return "; ".join(parts) + f" (against {SEMANTIC_ARI}; 0 = chance)", combine(outcomes)


def _p(paper: dict, table: str, exp: str, key: str) -> float:
    return paper[table][exp][key]


CLAIMS = [
    Claim(
        "shallow_matches_baseline",
        f"Shallow Split matches the baseline's error (is at most {MATCH_PT} pt worse: upper end of the 95 % CI of the "
        f"difference) with about 1/3 fewer "
        f"params ({PARAMS_THIRD[0]:.0f}–{PARAMS_THIRD[1]:.0f} %)",
        lambda p: (
            f"Table 1: Shallow {_p(p, 'table1', 'shallow', 'test_error')} % vs baseline "
            f"{_p(p, 'table1', 'baseline', 'test_error')} %, params reduced "
            f"{_p(p, 'table1', 'shallow', 'params_reduced_pct')} %"
        ),
        _shallow_matches_baseline,
    ),
    Claim(
        "deeper_splits_cost_accuracy",
        "Deeper splits (Deep, Hier) have a higher error than Shallow",
        lambda p: (
            f"Table 1: Shallow {_p(p, 'table1', 'shallow', 'test_error')} %, Deep "
            f"{_p(p, 'table1', 'deep', 'test_error')} %, Hier {_p(p, 'table1', 'hier', 'test_error')} %"
        ),
        lambda r: _higher(r, [("deep", "shallow"), ("hier", "shallow")], r.error, "error"),
        quote="We hypothesize that the degradation of the deep split is due to insufficient capacity",
    ),
    Claim(
        "overlap_lowers_error_adds_params",
        "Overlap lowers each split's error (FC, Shallow, Deep) while adding params (smaller reduction)",
        lambda p: "; ".join(
            f"{e}: {_p(p, 'table1', e, 'test_error')} → {_p(p, 'table1', e + '_overlap', 'test_error')} %, "
            f"reduced {_p(p, 'table1', e, 'params_reduced_pct')} → "
            f"{_p(p, 'table1', e + '_overlap', 'params_reduced_pct')} %"
            for e in ("fc", "shallow", "deep")
        ),
        _overlap,
        quote="In the case of all three splits, the error rate is reduced while increasing the parameter and FLOPs.",
    ),
    Claim(
        "shallow_beats_ssl",
        "Shallow Split has a lower error than SSL(1e-3) while reducing far more params",
        lambda p: (
            f"Table 1: Shallow {_p(p, 'table1', 'shallow', 'test_error')} % / "
            f"{_p(p, 'table1', 'shallow', 'params_reduced_pct')} % reduced vs SSL(1e-3) "
            f"{_p(p, 'table1', 'ssl_1e-3', 'test_error')} % / {_p(p, 'table1', 'ssl_1e-3', 'params_reduced_pct')} %"
        ),
        _shallow_beats_ssl,
        quote="Our Shallow Split (23.96%) outperforms SSL(1e-3) (24.15%), while significantly reducing the number "
        "of parameters (32.54%) as opposed to 9.40% of SSL.",
    ),
    Claim(
        "ssl_grows_with_strength",
        "SSL's params reduction and error grow with its strength (1e-3 < 3e-3 < 5e-3)",
        lambda p: (
            "Table 1: reduced "
            + " / ".join(f"{_p(p, 'table1', e, 'params_reduced_pct')}" for e in ("ssl_1e-3", "ssl_3e-3", "ssl_5e-3"))
            + " %, error "
            + " / ".join(f"{_p(p, 'table1', e, 'test_error')}" for e in ("ssl_1e-3", "ssl_3e-3", "ssl_5e-3"))
            + " %"
        ),
        _ssl_trend,
    ),
    Claim(
        "g2_lowest_g4_beats_g3",
        "Table 2: G = 2 has the lowest error, and G = 4 beats G = 3",
        lambda p: (
            "Table 2: error G=2/3/4 "
            + " / ".join(f"{_p(p, 'table2', e, 'test_error')}" for e in ("shallow", "shallow_g3", "shallow_g4"))
            + " %"
        ),
        lambda r: _higher(
            r, [("shallow_g3", "shallow"), ("shallow_g4", "shallow"), ("shallow_g3", "shallow_g4")], r.error, "error"
        ),
        quote="Setting G = 2 produces the lowest test error. Interestingly, the test error is lower with G = 4 than "
        "G = 3, even with less parameters.",
    ),
    Claim(
        "reduced_gradient_converges_faster",
        "The reduced gradient (simplex, official rule) converges in fewer steps than softmax",
        lambda p: "Supp. §1.1 and Fig. 1 (distribution plots; no step counts given)",
        _reduced_gradient_faster,
        quote="the direct optimization of group assignment variables with reduced gradients yields faster "
        "convergence than optimization via softmax reparametrization.",
    ),
    Claim(
        "class_groups_semantic",
        f"Class groups are semantic: ARI against the superclasses (G = 2: their best 2-merge) above {SEMANTIC_ARI}",
        lambda p: "The title; the supplement gives no grouping score for CIFAR-100",
        lambda r: _semantic(r, ("shallow", "shallow_g3")),
        quote="Learning to Semantically Split Deep Networks",
    ),
    Claim(
        "class_groups_semantic_with_preset",
        f"With our `semantic` preset (not the paper's setting; docs/studies/semantic-groups.md) the class groups "
        f"are semantic: ARI above {SEMANTIC_ARI}",
        lambda p: "The title; the supplement gives no grouping score for CIFAR-100",
        lambda r: _semantic(r, ("shallow@semantic", "shallow_g3@semantic")),
    ),
]


def claim_rows(runs: Runs, paper: dict) -> list[dict[str, str]]:
    rows = []
    for claim in CLAIMS:
        ours, verdict = claim.check(runs)
        rows.append(
            {
                "claim": claim.key,
                "statement": claim.statement,
                "paper_evidence": claim.paper(paper),
                "our_evidence": ours,
                "verdict": verdict,
            }
        )
    return rows


def render_markdown(rows: list[dict[str, str]], caption: str) -> str:
    lines = [
        f"**{caption}**",
        "",
        f"Rule: {RULE}",
        "",
        "| Claim | Paper's evidence | Our evidence | Verdict |",
        "|---|---|---|---|",
    ]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # "|Δ|" must not end the cell

    lines += [
        f"| {cell(r['statement'])} | {cell(r['paper_evidence'])} | {cell(r['our_evidence'])} | **{r['verdict']}** |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, str]], scale: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, ["claim", "statement", "paper_evidence", "our_evidence", "verdict", "scale"], lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "scale": scale})
    return buf.getvalue()


def write_claims(registry: dict, paper: dict, runs_dir: Path, out_dir: Path, scale: str, dataset: str) -> list[dict]:
    rows = claim_rows(Runs(runs_dir, registry["scales"][scale]["seeds"]), paper)
    caption = (
        f"The supplement's claims at scale '{scale}' ({registry['scales'][scale]['model']['arch'].upper()}, "
        f"{dataset}; seeds {', '.join(map(str, registry['scales'][scale]['seeds']))}). Our numbers are "
        "test error (%), params reduced (%), steps and ARI, mean ± sample std over seeds."
    )
    atomic_write_text(Path(out_dir) / "claims.md", render_markdown(rows, caption))
    atomic_write_text(Path(out_dir) / "claims.csv", render_csv(rows, scale))
    return rows
