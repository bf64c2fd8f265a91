"""The part of Table 1/2 checkable without training: Params/FLOPs % reduced of the WRN-16-8
split rows with balanced groups, against the paper, for both input conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import SPLIT_METHODS, read_yaml
from .io import atomic_write_text
from .model import wide_resnet
from .spec import SplitSpec
from .summary import summarize


def checked_rows(registry: dict, paper: dict) -> list[tuple[str, str, str]]:
    """(table, experiment, split code) of every paper-table row whose Params/FLOPs follow from its
    split alone: split rows without overlap (their groups are balanced by R_E) that the paper reports."""
    rows = []
    for table, spec in registry["tables"].items():
        for row in spec["rows"]:
            name = row["experiment"]
            entry = registry["experiments"].get(name)  # a row@preset is not in the paper
            if (
                entry is not None
                and entry["method"] in SPLIT_METHODS
                and not entry["group"].get("overlap")
                and name in paper[table]
            ):
                rows.append((table, name, entry["group"]["split"]))
    return rows


def arch_check_rows(registry: dict, paper: dict) -> list[dict]:
    dense = wide_resnet("wrn-16-8")
    tol = paper["tolerance"]
    rows = []
    for table, exp, code in checked_rows(registry, paper):
        reported = paper[table][exp]
        row: dict[str, Any] = {"table": table, "experiment": exp, "split": code}
        for conv in ("shared", "partitioned"):
            s = summarize(dense, SplitSpec.parse(code), (3, 32, 32), convention=conv)
            row[conv] = {
                "params_reduced_pct": s["params_reduced_pct"],
                "flops_reduced_pct": s["flops_reduced_pct"],
                "params": s["params"],
                "flops": s["flops"],
            }
        for key in ("params_reduced_pct", "flops_reduced_pct"):
            p = reported.get(key)
            row[f"paper_{key}"] = p
            row[f"ok_{key}"] = None if p is None else abs(row["shared"][key] - p) <= tol[key]
        rows.append(row)
    return rows


def render(rows: list[dict]) -> tuple[str, str]:
    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    def ok(v):
        return "–" if v is None else ("✓" if v else "✗")

    md = [
        "**Architecture check: WRN-16-8 (CIFAR-100 shapes) split with balanced groups vs the paper's "
        "%-reduced columns. `shared` = each branch reads its whole parent (tree; default), `partitioned` = "
        "official resnet_split.py. Computed by counting the split networks that run; independent of training "
        "and of the scale.**",
        "",
        "| Table | Row | Split | Params red. Paper | shared | ✓ | partitioned | FLOPs red. Paper | shared | ✓ | partitioned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    csv = [
        "table,row,split,paper_params_reduced_pct,shared_params_reduced_pct,partitioned_params_reduced_pct,"
        "paper_flops_reduced_pct,shared_flops_reduced_pct,partitioned_flops_reduced_pct"
    ]
    for r in rows:
        s, p = r["shared"], r["partitioned"]
        md.append(
            f"| {r['table']} | {r['experiment']} | {r['split']} | {f(r['paper_params_reduced_pct'])} | "
            f"{f(s['params_reduced_pct'])} | {ok(r['ok_params_reduced_pct'])} | {f(p['params_reduced_pct'])} | "
            f"{f(r['paper_flops_reduced_pct'])} | {f(s['flops_reduced_pct'])} | {ok(r['ok_flops_reduced_pct'])} | "
            f"{f(p['flops_reduced_pct'])} |"
        )
        csv.append(
            ",".join(
                [
                    r["table"],
                    r["experiment"],
                    r["split"],
                    f(r["paper_params_reduced_pct"]),
                    f(s["params_reduced_pct"]),
                    f(p["params_reduced_pct"]),
                    f(r["paper_flops_reduced_pct"]),
                    f(s["flops_reduced_pct"]),
                    f(p["flops_reduced_pct"]),
                ]
            )
        )
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def write_arch_check(registry: dict, paper_file: Path, out_dir: Path) -> list[dict]:
    rows = arch_check_rows(registry, read_yaml(Path(paper_file)))
    md, csv = render(rows)
    atomic_write_text(Path(out_dir) / "arch_check.md", md)
    atomic_write_text(Path(out_dir) / "arch_check.csv", csv)
    return rows
