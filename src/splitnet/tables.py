"""Paper tables regenerated from the rows' ``metrics.json``: Paper | Reproduced | Δ | ✓.

Every row runs once per seed of the scale; a Reproduced cell is the mean ± sample std over the
seeds found (n in its own column).  Formatting is fixed (sorted keys, fixed decimals, no
timestamps) so a regenerated table diffs cleanly.  A row with no finished seed shows
``missing``, never a number; a paper value that is not available shows ``n/a``.  Numbers are
compared (✓/✗) only at the paper scale: other scales use another dataset and network, which
the caption states.  Grouping rows also show ``assignment_converged`` (the smallest over their
seeds; below 0.9 they are marked as not converged).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import read_yaml, row_seeds
from .convergence import CONVERGED
from .io import atomic_write_json, atomic_write_text
from .latex import TEX_PACKAGES, tex_cell, tex_text
from .outputs import run_dir

COLUMNS = (  # key, header, decimals
    ("params_m", "Params (10^6)", 2),
    ("params_reduced_pct", "Params reduced (%)", 2),
    ("flops_g", "FLOPs (10^9)", 2),
    ("flops_reduced_pct", "FLOPs reduced (%)", 2),
    ("test_error", "Test error (%)", 2),
)
PAPER_SETTING = {"source": "cifar100", "arch": "wrn-16-8"}


def compares_to_paper(registry: dict, scale: str) -> bool:
    """Are the scale's numbers comparable with the paper's? Its network and data are the
    paper's and no stage's schedule is shortened (``paper``, ``paper_fp32``)."""
    entry = registry["scales"][scale]
    return (
        entry["data"]["source"] == PAPER_SETTING["source"]
        and entry["model"]["arch"] == PAPER_SETTING["arch"]
        and not entry["epochs"]
        and not entry.get("overrides")
    )


def reproduced_values(metrics: dict) -> dict[str, float]:
    return {
        "params_m": metrics["params"] / 1e6,
        "params_reduced_pct": metrics["params_reduced_pct"],
        "flops_g": metrics["flops"] / 1e9,
        "flops_reduced_pct": metrics["flops_reduced_pct"],
        "test_error": metrics["test_error"],
    }


@dataclass(frozen=True)
class Cell:
    paper: float | None
    reproduced: float | None  # mean over the seeds; None exactly when no seed finished
    delta: float | None
    ok: str  # "✓", "✗", "–" (nothing to compare) or "n/c" (not comparable at this scale)
    std: float = 0.0  # sample std over the seeds (0 for one seed)
    n: int = 0


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_metrics(runs_dir: Path, experiment: str, seeds: list[int]) -> list[dict]:
    """The evaluate metrics of every finished seed of a row, in seed order (each names its seed)."""
    found = []
    for seed in seeds:
        path = run_dir(runs_dir, experiment, seed, "evaluate") / "metrics.json"
        if path.is_file():
            found.append({**json.loads(path.read_text()), "seed": seed})
    return found


def assignment_converged(metrics: list[dict]) -> float | None:
    """The least converged seed's ``assignment_converged`` (None: not a grouping row)."""
    values = [m["grouping"]["assignment_converged"] for m in metrics if "grouping" in m]
    return min(values) if values else None


def _decimals(key: str, value: float, default: int) -> int:
    # Smoke/ci networks have ~0.1 M params and ~0.01 GFLOPs: keep significant digits.
    if key in ("params_m", "flops_g") and abs(value) < 1:
        return 4
    return default


def fmt(key: str, value: float | None, default: int, missing: str) -> str:
    if value is None:
        return missing
    return f"{value:.{_decimals(key, value, default)}f}"


def fmt_delta(key: str, delta: float | None, default: int) -> str:
    return "–" if delta is None else f"{delta:+.{_decimals(key, delta, default)}f}"


def build_rows(
    table: str, registry: dict, paper: dict, runs_dir: Path, scale: str, extra_seeds: bool = False
) -> list[dict]:
    """One dict per table row: label, experiment, per-column Cell (mean ± std over the seeds),
    the per-seed metrics (empty when no seed finished) and the grouping's convergence."""
    tol = paper["tolerance"]
    comparable = compares_to_paper(registry, scale)
    out = []
    for row in registry["tables"][table]["rows"]:
        exp = row["experiment"]
        metrics = seed_metrics(runs_dir, exp, row_seeds(registry, exp, scale, extra_seeds))
        per_seed = [reproduced_values(m) for m in metrics]
        reported = paper.get(table, {}).get(exp, {})
        cells = {}
        for key, _, _ in COLUMNS:
            p = reported.get(key)
            r, std = mean_std([v[key] for v in per_seed]) if per_seed else (None, 0.0)
            delta = None if p is None or r is None else r - p
            if delta is None:
                ok = "–"
            elif not comparable:
                ok = "n/c"
            else:
                ok = "✓" if abs(delta) <= tol[key] + 1e-9 else "✗"
            cells[key] = Cell(p, r, delta, ok, std, len(per_seed))
        out.append(
            {
                "experiment": exp,
                "label": row["label"],
                "cells": cells,
                "metrics": metrics,
                "converged": assignment_converged(metrics),
            }
        )
    return out


def fmt_reproduced(key: str, cell: Cell, default: int) -> str:
    text = fmt(key, cell.reproduced, default, "missing")
    return f"{text} ± {fmt(key, cell.std, default, '')}" if cell.n > 1 else text


def fmt_converged(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value >= CONVERGED else f"{value:.2f} (NOT converged)"


def seeds_text(row: dict) -> str:
    return str(len(row["metrics"]))


def caption(table: str, registry: dict, scale: str, dataset: str, arch: str, extra_seeds: bool = False) -> str:
    title = registry["tables"][table]["title"]
    note = (
        ""
        if compares_to_paper(registry, scale)
        else f" NOT CIFAR-100 numbers: scale '{scale}' runs {arch} on {dataset}; Paper columns are the "
        f"supplement's WRN-16-8/CIFAR-100 values, shown for reference only (✓ column: n/c = not comparable)."
    )
    return f"{title}. Reproduced at scale '{scale}' ({arch}, {dataset}); {seeds_caption(registry, scale, extra_seeds)}.{note}"


def seeds_caption(registry: dict, scale: str, extra_seeds: bool) -> str:
    """Which seeds the numbers are over (rows of the scale's seed groups run more with extra seeds)."""
    seeds = registry["scales"][scale]["seeds"]
    text = f"mean ± sample std over seeds {', '.join(map(str, seeds))} (n per row)"
    if extra_seeds:
        text += "; " + "; ".join(
            f"{', '.join(g['rows'])}: seeds 0–{g['seeds'] - 1}"
            for g in registry["scales"][scale].get("seed_groups", [])
        )
    return text


def column_cells(row: dict) -> Iterator[tuple[str, int, Cell]]:
    """(key, decimals, cell) of each column of a table row, in column order."""
    for key, _, decimals in COLUMNS:
        yield key, decimals, row["cells"][key]


def display_cells(row: dict) -> list[str]:
    """A row as the Markdown and LaTeX tables show it: the label, Paper | Reproduced (± std) |
    signed Δ | ✓ per column, the seed count and the assignments' convergence."""
    cells = [row["label"]]
    for key, decimals, cell in column_cells(row):
        cells += [
            fmt(key, cell.paper, decimals, "n/a"),
            fmt_reproduced(key, cell, decimals),
            fmt_delta(key, cell.delta, decimals),
            cell.ok,
        ]
    return [*cells, seeds_text(row), fmt_converged(row["converged"])]


def render_markdown(rows: list[dict], cap: str) -> str:
    head = ["Row"]
    for _, name, _ in COLUMNS:
        head += [f"{name} Paper", "Reproduced", "Δ", "✓"]
    head += ["n", "Assignments converged"]
    lines = [f"**{cap}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(display_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_latex(rows: list[dict], cap: str, label: str) -> str:
    spec = "l" + "rrrc" * len(COLUMNS) + "rr"
    groups = " & ".join(rf"\multicolumn{{4}}{{c}}{{{tex_text(name)}}}" for _, name, _ in COLUMNS) + " & n & Conv."
    sub = " & ".join([r"Paper & Repr. & $\Delta$ & ok"] * len(COLUMNS)) + " & & "
    lines = [
        "% Generated by splitnet.tables from the runs' metrics.json; do not edit.",
        "% Input: UTF-8 (LaTeX's default). The document's preamble needs:",
        *(rf"%   \usepackage{{{pkg}}}  % {what}" for pkg, what in TEX_PACKAGES),
        r"\begin{table*}[t]",
        r"\centering",
        r"\scriptsize",
        r"\setlength{\tabcolsep}{2pt}",
        rf"\caption{{{tex_text(cap)}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        f"Row & {groups} \\\\",
        f" & {sub} \\\\",
        r"\midrule",
    ]
    for row in rows:
        # the label and the convergence note are prose; the cells between are numbers or marks
        label, *numbers, converged = display_cells(row)
        lines.append(" & ".join([tex_text(label), *map(tex_cell, numbers), tex_text(converged)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict], table: str, scale: str, dataset: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "table",
            "row",
            "label",
            "column",
            "paper",
            "reproduced",
            "delta",
            "ok",
            "scale",
            "dataset",
            "reproduced_std",
            "n",
        ]
    )
    for row in rows:
        # one line per column, its values unadorned (no ±, unsigned Δ, empty when absent)
        for key, decimals, cell in column_cells(row):
            writer.writerow(
                [
                    table,
                    row["experiment"],
                    row["label"],
                    key,
                    fmt(key, cell.paper, decimals, ""),
                    fmt(key, cell.reproduced, decimals, "missing"),
                    fmt(key, cell.delta, decimals, ""),
                    cell.ok,
                    scale,
                    dataset,
                    fmt(key, cell.std, decimals, "") if cell.n else "",
                    cell.n,
                ]
            )
        if row["converged"] is not None:
            writer.writerow(
                [
                    table,
                    row["experiment"],
                    row["label"],
                    "assignment_converged",
                    "",
                    f"{row['converged']:.4f}",
                    "",
                    "–",
                    scale,
                    dataset,
                    "",
                    len(row["metrics"]),
                ]
            )
    return buf.getvalue()


def class_groups_markdown(rows: list[dict], scale: str, dataset: str) -> str:
    """Per grouping row and seed: the class groups by name, purity and ARI against the dataset's
    superclasses (chance ARI is 0), and whether the grouping converged."""
    lines = [
        (
            f"**Learned class → group assignments (scale '{scale}', {dataset}).** ARI: adjusted Rand index of the "
            "class groups against the dataset's superclasses (0 = chance, 1 = the superclasses exactly); purity: "
            "share of classes in their group's majority superclass."
        ),
        "",
    ]
    superclasses = None
    for row in rows:
        for m in row["metrics"]:
            groups = m.get("groups")
            if not groups:
                continue
            superclasses = superclasses or groups.get("superclasses")
            ari, pur = groups.get("superclass_ari"), groups.get("superclass_purity")
            score = "" if ari is None else f" — superclass ARI {ari:.3f}, purity {pur:.3f}"
            if "best_merge_ari" in groups:
                score += f", ARI vs the best {len(groups['groups'])}-merge of the superclasses {groups['best_merge_ari']:.3f}"
            converged = m.get("grouping", {}).get("assignment_converged")
            conv = "" if converged is None else f", assignments converged {fmt_converged(converged)}"
            lines.append(f"*{row['label']}* (split {m['split']}, seed {m['seed']}{conv}){score}")
            lines.append("")
            for g, classes in enumerate(groups["groups"]):
                lines.append(f"- group {g}: {', '.join(classes)}")
            lines.append("")
    if superclasses:
        lines.append(
            "Dataset superclasses: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(superclasses.items()))
        )
    return "\n".join(lines) + "\n"


def summary_entry(row: dict) -> dict | None:
    """A row's numbers for ``metrics/summary.json`` (the DVC metrics file)."""
    if not row["metrics"]:
        return None
    entry: dict = {}
    for key, cell in row["cells"].items():
        entry[key] = round(cell.reproduced, 6)
        entry[f"{key}_std"] = round(cell.std, 6)
    entry["n"] = len(row["metrics"])
    entry["seeds"] = [m["seed"] for m in row["metrics"]]
    if row["converged"] is not None:
        entry["assignment_converged"] = round(row["converged"], 6)
        steps = [m["grouping"]["steps_to_convergence"].get("all") for m in row["metrics"]]
        entry["steps_to_convergence"] = steps  # per seed; null: never within the run
    return entry


def write_tables(
    registry: dict,
    paper_file: Path,
    runs_dir: Path,
    out_dir: Path,
    metrics_file: Path,
    scale: str,
    extra_seeds: bool = False,
) -> None:
    """Write table1/table2 .md/.tex/.csv, class_groups.md and the DVC metrics summary."""
    paper = read_yaml(Path(paper_file))
    dataset, arch = dataset_text(registry, scale), registry["scales"][scale]["model"]["arch"].upper()
    summary: dict[str, dict] = {}
    group_rows: dict[str, dict] = {}
    for table in registry["tables"]:
        rows = build_rows(table, registry, paper, runs_dir, scale, extra_seeds)
        cap = caption(table, registry, scale, dataset, arch, extra_seeds)
        atomic_write_text(out_dir / f"{table}.md", render_markdown(rows, cap))
        atomic_write_text(out_dir / f"{table}.tex", render_latex(rows, cap, f"tab:{table}"))
        atomic_write_text(out_dir / f"{table}.csv", render_csv(rows, table, scale, dataset))
        summary[table] = {r["experiment"]: summary_entry(r) for r in rows}
        for r in rows:
            group_rows.setdefault(r["experiment"], r)
    atomic_write_text(out_dir / "class_groups.md", class_groups_markdown(list(group_rows.values()), scale, dataset))
    atomic_write_json(
        metrics_file,
        {"scale": scale, "seeds": registry["scales"][scale]["seeds"], "extra_seeds": extra_seeds, **summary},
    )


def dataset_text(registry: dict, scale: str) -> str:
    data = registry["scales"][scale]["data"]
    dataset = {"cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST"}.get(data["source"], data["source"])
    return dataset + (f" at {data['resize']}x{data['resize']}" if data.get("resize") else "")
