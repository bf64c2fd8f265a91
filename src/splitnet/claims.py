"""The supplement's claims (``params/claims.yaml``), each judged on a scale's per-seed numbers.

The registry holds every claim's quote, the paper's cells, its tests and the rules (margins,
confidence, power), fixed before the runs that judge them.  Each test compares rows over their
seeds with Welch's t (unequal variances) at 95 %; ``claims.yaml`` states each kind's rule.  Next
to every verdict: n, the minimum detectable effect (MDE) at 80 % power for that comparison, and
the paper's effect; a test whose MDE exceeds the paper's effect is "untestable at n = …".
Verdicts are computed from ``per_seed.csv`` rows only, so they can be recomputed from the
committed table (tests/test_committed_artifacts.py).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import yaml
from scipy import stats as scipy_stats

from .config import ConfigError, read_yaml, split_experiment
from .io import atomic_write_text
from .tables import mean_std

CLAIMS_FILE = "claims.yaml"
HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
VERDICT = {1: HOLDS, -1: CONTRADICTED, 0: INCONCLUSIVE}
CSV_COLUMNS = (
    "id",
    "statement",
    "verdict",
    "stable",
    "n",
    "mde_80pct",
    "paper_effect",
    "paper_evidence",
    "our_evidence",
)


def load_claims(params_dir: str | Path, registry: dict, paper: dict) -> dict:
    """``params/claims.yaml``, validated: schema, known rows and presets, existing paper cells."""
    path = Path(params_dir) / CLAIMS_FILE
    doc = read_yaml(path)
    schema = yaml.safe_load(resources.files("splitnet").joinpath("schemas/claims.schema.yaml").read_text())
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: {key}: {err.message}")
    for i, claim in enumerate(doc["claims"]):
        where = f"{path}: claims[{i}] ({claim['id']})"
        for cell in claim["paper"]:
            table, row, metric = cell.split(".")
            if paper.get(table, {}).get(row, {}).get(metric) is None:
                raise ConfigError(f"{where}.paper: {cell} is not a cell of params/paper_results.yaml")
        for j, test in enumerate(claim["tests"]):
            for exp in tested_rows(test):
                try:
                    split_experiment(registry, exp)
                except ConfigError as e:
                    raise ConfigError(f"{where}.tests[{j}]: {e}") from None
            ref = test.get("reference")
            if isinstance(ref, str) and ref not in doc["rules"]:
                raise ConfigError(f"{where}.tests[{j}].reference: {ref!r} is not a number or a key of rules")
    ids = [c["id"] for c in doc["claims"]]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: claims: an id appears twice")
    return doc


def tested_rows(test: dict) -> list[str]:
    """The experiments a test reads (gap_shrinks: also each row at the wide preset)."""
    rows = [test["a"], *([test["b"]] if "b" in test else [])]
    if test["kind"] == "gap_shrinks":
        rows += [f"{r}@{test['wide']}" for r in rows]
    return rows


def claim_experiments(doc: dict, gap_study: bool = False) -> set[str]:
    """Every experiment some claim reads; the gap study's wide rows only with ``gap_study``
    (they are its own target, not the main run's)."""
    rows = {exp for claim in doc["claims"] for test in claim["tests"] for exp in tested_rows(test)}
    return rows if gap_study else {exp for exp in rows if not exp.endswith(tuple(_wide_presets(doc)))}


def _wide_presets(doc: dict) -> set[str]:
    return {f"@{t['wide']}" for claim in doc["claims"] for t in claim["tests"] if "wide" in t}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std over seeds (0 for one seed)
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stat(values: list[float]) -> Stat | None:
    return Stat(*mean_std(values), len(values)) if values else None


def _welch(*sides: Stat) -> tuple[float, float] | None:
    """(standard error, degrees of freedom) of a ±1 combination of the sides' means: one mean, a
    difference, or a difference of differences; None when a side has fewer than two seeds."""
    if any(side.n < 2 for side in sides):
        return None
    parts = [side.std**2 / side.n for side in sides]
    se = math.sqrt(sum(parts))
    if se == 0:
        return 0.0, math.inf
    df = sum(parts) ** 2 / sum(p**2 / (side.n - 1) for p, side in zip(parts, sides))  # Welch-Satterthwaite
    return se, df


def _around(estimate: float, welch: tuple[float, float] | None, confidence: float) -> tuple[float, float] | None:
    """The ``confidence`` t interval around ``estimate`` with Welch's (standard error, df)."""
    if welch is None:
        return None
    se, df = welch
    if se == 0:  # identical seeds (e.g. deterministic step counts): the estimate is exact
        return estimate, estimate
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return estimate - half, estimate + half


def interval(
    a: Stat, b: Stat | None = None, reference: float = 0.0, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Confidence interval of ``a.mean - b.mean`` (Welch), or of ``a.mean - reference``."""
    if b is None:
        return _around(a.mean - reference, _welch(a), confidence)
    return _around(a.mean - b.mean, _welch(a, b), confidence)


def mde(a: Stat, b: Stat | None = None, confidence: float = 0.95, power: float = 0.8) -> float | None:
    """The smallest true difference this comparison detects with probability ``power`` (two-sided
    Welch test at 1 - ``confidence``): (t_{1-α/2} + t_{power}) x standard error, at Welch's df."""
    w = _welch(a) if b is None else _welch(a, b)
    if w is None:
        return None
    se, df = w
    return 0.0 if se == 0 else (float(scipy_stats.t.ppf(0.5 + confidence / 2, df) + scipy_stats.t.ppf(power, df))) * se


@dataclass(frozen=True)
class Outcome:
    """One test of a claim: our evidence, its sign (+1 the claim's way, -1 against, 0 neither)."""

    text: str
    sign: int
    n: str = ""
    mde: float | None = None
    paper_effect: float | None = None


class Samples:
    """Per-seed values of every row (``per_seed.csv`` rows), by experiment and metric."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def values(self, experiment: str, metric: str) -> list[float]:
        return [r[metric] for r in self.rows if r["experiment"] == experiment and r[metric] is not None]

    def stat(self, experiment: str, metric: str) -> Stat | None:
        if metric == "steps_to_convergence":  # a seed that never converged has no step count: no statistic
            seeds = [r for r in self.rows if r["experiment"] == experiment]
            if any(r[metric] is None for r in seeds):
                return None
        return stat(self.values(experiment, metric))


def _fmt(name: str, value: Stat | None) -> str:
    return f"{name} {value}" if value is not None else f"{name} missing"


def _ci_text(ci: tuple[float, float]) -> str:
    return f"95 % CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _paper_diff(claim: dict, test: dict, paper: dict) -> float | None:
    """The paper's ``a - b`` for the test's metric, from a table that reports both (claim's cells)."""
    cells = set(claim["paper"])
    for table in ("table1", "table2"):
        if {f"{table}.{test['a']}.{test['metric']}", f"{table}.{test.get('b')}.{test['metric']}"} <= cells:
            return paper[table][test["a"]][test["metric"]] - paper[table][test["b"]][test["metric"]]
    return None


def _pairwise(test: dict, samples: Samples, rules: dict, paper_diff: float | None) -> Outcome:
    a, b = samples.stat(test["a"], test["metric"]), samples.stat(test["b"], test["metric"])
    text = f"{test['metric']} {_fmt(test['a'], a)} vs {_fmt(test['b'], b)}"
    kind, conf, margin = test["kind"], rules["confidence"], rules["close_margin_pt"]
    effect = None
    if paper_diff is not None:
        effect = {"lower": -paper_diff, "higher": paper_diff, "not_worse": margin - paper_diff}[kind]
    if a is None or b is None:
        return Outcome(text, 0, paper_effect=effect)
    n = f"{a.n} vs {b.n}"
    ci = interval(a, b, confidence=conf)
    detectable = mde(a, b, conf, rules["power"])
    if ci is None:
        return Outcome(text + " (n < 2 on a side)", 0, n, detectable, effect)
    text += f"; {test['a']} − {test['b']} {_ci_text(ci)}"
    if kind == "lower":
        sign = 1 if ci[1] < 0 else -1 if ci[0] > 0 else 0
    elif kind == "higher":
        sign = 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0
    else:  # not_worse
        text += f" against the margin +{margin:.2f}"
        sign = 1 if ci[1] <= margin else -1 if ci[0] > margin else 0
    return Outcome(text, sign, n, detectable, effect)


def _above(test: dict, samples: Samples, rules: dict) -> Outcome:
    ref = test["reference"]
    value = float(rules[ref] if isinstance(ref, str) else ref)
    a = samples.stat(test["a"], test["metric"])
    text = f"{test['metric']} {_fmt(test['a'], a)} against {value:g}"
    if a is None:
        return Outcome(text, 0)
    ci = interval(a, reference=value, confidence=rules["confidence"])
    if ci is None:
        return Outcome(text + " (n < 2)", 0, str(a.n))
    text += f"; mean − {value:g} {_ci_text(ci)}"
    return Outcome(text, 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0, str(a.n), mde(a, None, rules["confidence"]))


def _matches_architecture(test: dict, samples: Samples, rules: dict) -> Outcome:
    a = samples.stat(test["a"], test["metric"])
    exact = samples.values(test["a"], "balanced_params_reduced_pct")
    tol = rules["architecture_tolerance_pt"]
    if a is None or not exact:
        return Outcome(f"{test['metric']} {_fmt(test['a'], a)}; balanced figure missing", 0)
    figure = exact[0]
    text = (
        f"{test['metric']} {_fmt(test['a'], a)} vs {figure:.2f} for a balanced {test['a']} split of this "
        f"network (tolerance ±{tol:.2f})"
    )
    return Outcome(text, 1 if abs(a.mean - figure) <= tol else -1, str(a.n))


def _gap_shrinks(test: dict, samples: Samples, rules: dict) -> Outcome:
    """(a − b) at the wide preset minus (a − b) as the row runs: below 0 when the gap shrinks."""
    wide = test["wide"]
    names = [test["a"], test["b"], f"{test['a']}@{wide}", f"{test['b']}@{wide}"]
    found = [samples.stat(name, test["metric"]) for name in names]
    stats = [s for s in found if s is not None and s.n >= 2]
    if len(stats) < len(names):
        missing = [name for name, s in zip(names, found) if s is None or s.n < 2]
        return Outcome(f"rows missing: {', '.join(missing)} (the gap study: `snakemake gap_study`)", 0)
    a, b, a_wide, b_wide = stats
    gap, gap_wide = a.mean - b.mean, a_wide.mean - b_wide.mean
    ci = _around(gap_wide - gap, _welch(a, b, a_wide, b_wide), rules["confidence"])
    assert ci is not None  # every side has n >= 2 (checked above)
    text = f"{test['a']} − {test['b']}: {gap:+.2f} as run, {gap_wide:+.2f} at {wide}; change {_ci_text(ci)}"
    n = "/".join(str(s.n) for s in stats)
    return Outcome(text, 1 if ci[1] < 0 else -1 if ci[0] > 0 else 0, n)


def judge(claim: dict, test: dict, samples: Samples, rules: dict, paper: dict) -> Outcome:
    kind = test["kind"]
    if kind in ("lower", "higher", "not_worse"):
        return _pairwise(test, samples, rules, _paper_diff(claim, test, paper))
    checks: dict[str, Callable[[dict, Samples, dict], Outcome]] = {
        "above": _above,
        "matches_architecture": _matches_architecture,
        "gap_shrinks": _gap_shrinks,
    }
    return checks[kind](test, samples, rules)


def untestable(outcome: Outcome) -> bool:
    """The comparison could not have detected an effect of the paper's size at this n."""
    return outcome.mde is not None and outcome.paper_effect is not None and outcome.mde > outcome.paper_effect


def combine(signs: list[int]) -> str:
    if any(s < 0 for s in signs):
        return CONTRADICTED
    return HOLDS if signs and all(s > 0 for s in signs) else INCONCLUSIVE


def paper_evidence(claim: dict, paper: dict) -> str:
    cells = [f"{c.replace('table', 'Table ', 1)} {paper[c.split('.')[0]][c.split('.')[1]][c.split('.')[2]]}"
             for c in claim["paper"]]  # fmt: skip
    quote = f"“{claim['quote']}”" if claim.get("quote") else ""
    return "; ".join(filter(None, [quote, ", ".join(cells)])) or "no number in the supplement"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def verdict(claim: dict, samples: Samples, rules: dict, paper: dict) -> str:
    return combine([judge(claim, test, samples, rules, paper).sign for test in claim["tests"]])


def stable(claim: dict, samples: Samples, rules: dict, paper: dict) -> bool:
    """Does the verdict survive leaving out any one seed of any row the claim reads?"""
    full = verdict(claim, samples, rules, paper)
    rows = {exp for test in claim["tests"] for exp in tested_rows(test)}
    return all(
        verdict(claim, Samples([r for r in samples.rows if r is not left_out]), rules, paper) == full
        for left_out in samples.rows
        if left_out["experiment"] in rows
    )


def claim_rows(doc: dict, samples: Samples, paper: dict) -> list[dict[str, str]]:
    rows = []
    for claim in doc["claims"]:
        outcomes = [judge(claim, test, samples, doc["rules"], paper) for test in claim["tests"]]
        texts = [
            o.text + (f" [untestable at n = {o.n}: MDE {o.mde:.2f} > the paper's effect {o.paper_effect:.2f}]"
                      if untestable(o) else "")
            for o in outcomes
        ]  # fmt: skip
        rows.append(
            {
                "id": claim["id"],
                "statement": claim["statement"],
                "verdict": combine([o.sign for o in outcomes]),
                "stable": "yes" if stable(claim, samples, doc["rules"], paper) else "no",
                "n": "; ".join(o.n or "–" for o in outcomes),
                "mde_80pct": "; ".join(_num(o.mde) for o in outcomes),
                "paper_effect": "; ".join(_num(o.paper_effect) for o in outcomes),
                "paper_evidence": paper_evidence(claim, paper),
                "our_evidence": "; ".join(texts),
            }
        )
    return rows


def rule_text(rules: dict) -> str:
    return (
        f"Each test compares rows over seeds with Welch's t ({rules['confidence']:.0%} two-sided CI): lower/higher "
        f"hold when the CI of the difference excludes 0 the claim's way; not_worse holds when its upper end is ≤ "
        f"+{rules['close_margin_pt']:.2f} pt; above holds when the CI of the mean is above the reference; a claim "
        "holds when all its tests hold, is contradicted when one goes significantly against it, inconclusive "
        f"otherwise. MDE: the difference detectable at {rules['power']:.0%} power at this n. Stable: the verdict "
        "is the same with any one seed of any row left out. Rules fixed before the runs (params/claims.yaml, "
        "git history)."
    )


def render_markdown(rows: list[dict[str, str]], caption: str, rules: dict) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"**{caption}**",
        "",
        f"Rule: {rule_text(rules)}",
        "",
        "| Claim | Paper's evidence | Our evidence | n | MDE (80 %) | Paper's effect | Verdict | Stable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['id']}`: {cell(r['statement'])} | {cell(r['paper_evidence'])} | {cell(r['our_evidence'])} | "
        f"{r['n']} | {r['mde_80pct']} | {r['paper_effect']} | **{r['verdict']}** | {r['stable']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, str]], scale: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, [*CSV_COLUMNS, "scale"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "scale": scale})
    return buf.getvalue()


def write_claims(doc: dict, paper: dict, per_seed_rows: list[dict], out_dir: Path, caption: str, scale: str) -> list:
    rows = claim_rows(doc, Samples(per_seed_rows), paper)
    atomic_write_text(Path(out_dir) / "claims.md", render_markdown(rows, caption, doc["rules"]))
    atomic_write_text(Path(out_dir) / "claims.csv", render_csv(rows, scale))
    return rows
