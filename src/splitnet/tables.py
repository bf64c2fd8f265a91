"""Paper tables regenerated from the rows' ``metrics.json``: Paper | Reproduced | Δ | ✓.

Formatting is fixed (sorted keys, fixed decimals, no timestamps) so a regenerated table diffs
cleanly.  A row whose run is missing shows ``missing``, never a number; a paper value that is
not available shows ``n/a``.  Numbers are compared (✓/✗) only at the paper scale: other scales
use another dataset and network, which the caption states.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .io import atomic_write_json, atomic_write_text

COLUMNS = (  # key, header, decimals
    ("params_m", "Params (10^6)", 2),
    ("params_reduced_pct", "Params reduced (%)", 2),
    ("flops_g", "FLOPs (10^9)", 2),
    ("flops_reduced_pct", "FLOPs reduced (%)", 2),
    ("test_error", "Test error (%)", 2),
)
COMPARED_SCALE = "paper"


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
    reproduced: float | None
    delta: float | None
    ok: str  # "✓", "✗", "–" (nothing to compare) or "n/c" (not comparable at this scale)


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


def build_rows(table: str, registry: dict, paper: dict, metrics_dir: Path, scale: str) -> list[dict]:
    """One dict per table row: label, experiment, per-column Cell, and the raw metrics (or None)."""
    tol = paper["tolerance"]
    out = []
    for row in registry["tables"][table]["rows"]:
        exp = row["experiment"]
        path = metrics_dir / exp / "evaluate" / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else None
        repro = reproduced_values(metrics) if metrics else {}
        reported = paper.get(table, {}).get(exp, {})
        cells = {}
        for key, _, _ in COLUMNS:
            p, r = reported.get(key), repro.get(key)
            delta = None if p is None or r is None else r - p
            if delta is None:
                ok = "–"
            elif scale != COMPARED_SCALE:
                ok = "n/c"
            else:
                ok = "✓" if abs(delta) <= tol[key] + 1e-9 else "✗"
            cells[key] = Cell(p, r, delta, ok)
        out.append({"experiment": exp, "label": row["label"], "cells": cells, "metrics": metrics})
    return out


def caption(table: str, registry: dict, scale: str, dataset: str, arch: str) -> str:
    title = registry["tables"][table]["title"]
    note = (
        "" if scale == COMPARED_SCALE else
        f" NOT CIFAR-100 numbers: scale '{scale}' runs {arch} on {dataset}; Paper columns are the "
        f"supplement's WRN-16-8/CIFAR-100 values, shown for reference only (✓ column: n/c = not comparable)."
    )
    return f"{title}. Reproduced at scale '{scale}' ({arch}, {dataset}).{note}"


def render_markdown(rows: list[dict], cap: str) -> str:
    head = ["Row"]
    for _, name, _ in COLUMNS:
        head += [f"{name} Paper", "Reproduced", "Δ", "✓"]
    lines = [f"**{cap}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"]]
        for key, _, dec in COLUMNS:
            c = row["cells"][key]
            missing = "missing" if row["metrics"] is None else "n/a"
            cells += [fmt(key, c.paper, dec, "n/a"), fmt(key, c.reproduced, dec, missing),
                      fmt_delta(key, c.delta, dec), c.ok]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Text-mode LaTeX for every character the tables can contain that LaTeX would misread or that
# pdflatex's default input encoding cannot typeset; everything else is copied as is.
TEX_TEXT = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "–": "--", "—": "---", "−": "$-$", "±": r"$\pm$", "×": r"$\times$", "→": r"$\rightarrow$",
    "Δ": r"$\Delta$", "✓": r"$\checkmark$", "✗": r"$\times$",
}
TEX_POWER = re.compile(r"(\d+)\^(\d+)")  # "10^6" in a header -> $10^{6}$
TEX_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
TEX_PACKAGES = (("booktabs", r"\toprule, \midrule, \bottomrule"), ("amssymb", r"$\checkmark$"),
                ("graphicx", r"\resizebox: a table wider than the text is shrunk to \linewidth"))
OK_TEX = {"✓": r"$\checkmark$", "✗": r"$\times$", "–": "--", "n/c": "n/c"}


def tex_text(text: str) -> str:
    """``text`` as LaTeX text mode: specials escaped, ``a^b`` as math, symbols as LaTeX commands."""
    out, pos = [], 0
    for match in TEX_POWER.finditer(text):
        out.append("".join(TEX_TEXT.get(ch, ch) for ch in text[pos:match.start()]))
        out.append(f"${match[1]}^{{{match[2]}}}$")
        pos = match.end()
    out.append("".join(TEX_TEXT.get(ch, ch) for ch in text[pos:]))
    return "".join(out)


def tex_cell(text: str) -> str:
    """A formatted table cell: a (signed) number in math mode (a true minus sign), else text."""
    return f"${text}$" if TEX_NUMBER.fullmatch(text) else tex_text(text)


def render_latex(rows: list[dict], cap: str, label: str) -> str:
    spec = "l" + "rrrc" * len(COLUMNS)
    groups = " & ".join(rf"\multicolumn{{4}}{{c}}{{{tex_text(name)}}}" for _, name, _ in COLUMNS)
    sub = " & ".join([r"Paper & Repr. & $\Delta$ & ok"] * len(COLUMNS))
    lines = [
        "% Generated by splitnet.tables from the runs' metrics.json; do not edit.",
        "% Input: UTF-8 (LaTeX's default). The document's preamble needs:",
        *(rf"%   \usepackage{{{pkg}}}  % {what}" for pkg, what in TEX_PACKAGES),
        r"\begin{table*}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{2pt}",
        rf"\caption{{{tex_text(cap)}}}", rf"\label{{{label}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule", f"Row & {groups} \\\\", f" & {sub} \\\\", r"\midrule",
    ]
    for row in rows:
        cells = [tex_text(row["label"])]
        for key, _, dec in COLUMNS:
            c = row["cells"][key]
            missing = "missing" if row["metrics"] is None else "n/a"
            cells += [tex_cell(fmt(key, c.paper, dec, "n/a")), tex_cell(fmt(key, c.reproduced, dec, missing)),
                      tex_cell(fmt_delta(key, c.delta, dec)), OK_TEX[c.ok]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict], table: str, scale: str, dataset: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "row", "label", "column", "paper", "reproduced", "delta", "ok", "scale", "dataset"])
    for row in rows:
        for key, _, dec in COLUMNS:
            c = row["cells"][key]
            missing = "missing" if row["metrics"] is None else ""
            writer.writerow([table, row["experiment"], row["label"], key, fmt(key, c.paper, dec, ""),
                             fmt(key, c.reproduced, dec, missing), fmt(key, c.delta, dec, ""), c.ok, scale, dataset])
    return buf.getvalue()


def class_groups_markdown(rows: list[dict], scale: str, dataset: str) -> str:
    lines = [f"**Learned class → group assignments (scale '{scale}', {dataset}).**", ""]
    for row in rows:
        groups = (row["metrics"] or {}).get("groups")
        if not groups:
            continue
        ari, pur = groups.get("superclass_ari"), groups.get("superclass_purity")
        score = "" if ari is None else f" — superclass ARI {ari:.3f}, purity {pur:.3f}"
        lines.append(f"*{row['label']}* (split {row['metrics']['split']}){score}")
        lines.append("")
        for g, classes in enumerate(groups["groups"]):
            lines.append(f"- group {g}: {', '.join(classes)}")
        lines.append("")
    if "superclasses" in next((r["metrics"]["groups"] for r in rows if (r["metrics"] or {}).get("groups")), {}):
        sup = next(r["metrics"]["groups"]["superclasses"] for r in rows if (r["metrics"] or {}).get("groups"))
        lines.append("Dataset superclasses: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(sup.items())))
    return "\n".join(lines) + "\n"


def write_tables(registry: dict, paper_file: Path, runs_dir: Path, out_dir: Path, metrics_file: Path, scale: str) -> None:
    """Write table1/table2 .md/.tex/.csv, class_groups.md and the DVC metrics summary."""
    paper = yaml.safe_load(Path(paper_file).read_text())
    sc = registry["scales"][scale]
    dataset = {"cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST"}.get(sc["data"]["source"], sc["data"]["source"])
    if sc["data"].get("resize"):
        dataset += f" at {sc['data']['resize']}x{sc['data']['resize']}"
    arch = sc["model"]["arch"].upper()
    summary: dict[str, dict] = {}
    group_rows: dict[str, dict] = {}
    for table in registry["tables"]:
        rows = build_rows(table, registry, paper, runs_dir, scale)
        cap = caption(table, registry, scale, dataset, arch)
        atomic_write_text(out_dir / f"{table}.md", render_markdown(rows, cap))
        atomic_write_text(out_dir / f"{table}.tex", render_latex(rows, cap, f"tab:{table}"))
        atomic_write_text(out_dir / f"{table}.csv", render_csv(rows, table, scale, dataset))
        summary[table] = {
            r["experiment"]: ({k: round(c.reproduced, 6) for k, c in r["cells"].items()} if r["metrics"] else None)
            for r in rows
        }
        for r in rows:
            group_rows.setdefault(r["experiment"], r)
    atomic_write_text(out_dir / "class_groups.md", class_groups_markdown(list(group_rows.values()), scale, dataset))
    atomic_write_json(metrics_file, {"scale": scale, **summary})
