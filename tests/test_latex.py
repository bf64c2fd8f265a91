"""The .tex tables compile with a real pdflatex (Debian: texlive-latex-base, texlive-latex-recommended).

Each table is wrapped in a minimal article whose preamble is exactly the \\usepackage lines the
.tex file's leading comment asks for, so the comment is checked too. Without pdflatex the
compiling tests skip, except under CI (CI=true), where they fail.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from splitnet.config import load_registry
from splitnet.latex import tex_cell, tex_text
from splitnet.tables import build_rows, caption, render_latex, write_tables

PDFLATEX = shutil.which("pdflatex")
COMMITTED_SUMMARY = Path("docs/results/cpu/metrics/summary.json")


def _require_pdflatex():
    if PDFLATEX:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            "pdflatex not found under CI: workflow/scripts/test.sh installs texlive-latex-base "
            "and texlive-latex-recommended"
        )
    pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")


def _preamble_packages(tex: str) -> list[str]:
    """The \\usepackage lines of the table's leading comment block."""
    comment = []
    for line in tex.splitlines():
        if not line.startswith("%"):
            break
        comment.append(line)
    return re.findall(r"\\usepackage\{[^}]+\}", "\n".join(comment))


def compile_tables(tmp_path: Path, tables: dict[str, str]) -> Path:
    """Write each table as NAME.tex, \\input it in a standalone article, run pdflatex; the PDF."""
    _require_pdflatex()
    packages = []
    for name, tex in tables.items():
        (tmp_path / f"{name}.tex").write_text(tex, encoding="utf-8")
        packages += [p for p in _preamble_packages(tex) if p not in packages]
    assert packages, "the .tex leading comment lists no packages"
    body = "\n".join(rf"\input{{{name}.tex}}" for name in tables)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n" + "\n".join(packages) + "\n\\begin{document}\n" + body + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / "doc.log").read_text(errors="replace") if (tmp_path / "doc.log").is_file() else proc.stdout
    assert proc.returncode == 0, log[-3000:]
    pdf = tmp_path / "doc.pdf"
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF"), log[-3000:]
    assert "Overfull \\hbox" not in log, "a table is wider than the text"
    return pdf


# Labels, title and cells that need escaping: _, %, &, #, $, ^, ~, {}, unicode symbols.
SYNTHETIC_REGISTRY = {
    "tables": {
        "synthetic_t1": {
            "title": "Table_1: 100% of ~params & {flops} #2, $5 ^ x, 10^6 ± 2, Δ–✓✗",
            "rows": [
                {"experiment": "base_line", "label": "Base_line (100%)"},
                {"experiment": "shallow_g3", "label": "Shallow_split & G=3 #3"},
                {"experiment": "not_run", "label": "Not_run {missing}"},
                {"experiment": "no_paper", "label": "No paper ~ n/a"},
            ],
        }
    },
    "scales": {  # compared with the paper: the paper's data and arch, schedules not shortened
        "paper": {"seeds": [0], "data": {"source": "cifar100"}, "model": {"arch": "wrn-16-8"}, "epochs": {}},
        "tiny_cpu": {
            "seeds": [0],
            "data": {"source": "fashion_mnist"},
            "model": {"arch": "wrn-16-1"},
            "epochs": {"train": 1},
        },
    },
}
SYNTHETIC_PAPER = {
    "tolerance": {
        "params_m": 0.05,
        "params_reduced_pct": 0.2,
        "flops_g": 0.05,
        "flops_reduced_pct": 0.2,
        "test_error": 1.0,
    },
    "synthetic_t1": {
        "base_line": {
            "params_m": 11.0,
            "params_reduced_pct": 0.0,
            "flops_g": 3.10,
            "flops_reduced_pct": 0.0,
            "test_error": 24.28,
        },
        "shallow_g3": {
            "params_m": None,
            "params_reduced_pct": 43.09,
            "flops_g": None,
            "flops_reduced_pct": None,
            "test_error": 25.14,
        },
        "not_run": {
            "params_m": 5.9,
            "params_reduced_pct": 46.39,
            "flops_g": 2.11,
            "flops_reduced_pct": 31.97,
            "test_error": 24.66,
        },
    },  # no_paper: no entry at all
}


def _write_metrics(
    runs: Path, exp: str, params: float, flops: float, params_pct: float, flops_pct: float, error: float
) -> None:
    path = runs / exp / "seed_0" / "evaluate" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "params": params,
                "flops": flops,
                "params_reduced_pct": params_pct,
                "flops_reduced_pct": flops_pct,
                "test_error": error,
            }
        )
    )


def synthetic_latex(tmp_path: Path, scale: str) -> str:
    runs = tmp_path / "runs"
    if not runs.exists():
        _write_metrics(runs, "base_line", 10_999_908, 3_095_498_952, 0.0, 0.0, 24.0)
        _write_metrics(runs, "shallow_g3", 12_000_000, 4_000_000_000, -9.09, -29.2, 27.5)  # negative reductions
        _write_metrics(runs, "no_paper", 95_000, 9_300_000, 45.6, 29.3, 19.5)  # < 1: four decimals
    rows = build_rows("synthetic_t1", SYNTHETIC_REGISTRY, SYNTHETIC_PAPER, runs, scale)
    cap = caption("synthetic_t1", SYNTHETIC_REGISTRY, scale, "Fashion_MNIST at 16x16", "WRN-16-1")
    return render_latex(rows, cap, f"tab:synthetic_{scale}")


def test_tex_text_escapes_specials_and_symbols():
    assert tex_text("a_b & 50% #1 $x {y} ~ | <>") == (
        r"a\_b \& 50\% \#1 \$x \{y\} \textasciitilde{} \textbar{} \textless{}\textgreater{}"
    )
    assert tex_text("Params (10^6) ± Δ ✓ ✗ – x^y") == (
        r"Params ($10^{6}$) $\pm$ $\Delta$ $\checkmark$ $\times$ -- x\textasciicircum{}y"
    )
    assert tex_text("C:\\dir") == r"C:\textbackslash{}dir"
    assert [tex_cell(s) for s in ("-10.83", "+0.00", "24.28", "n/a", "missing", "–")] == [
        "$-10.83$",
        "$+0.00$",
        "$24.28$",
        "n/a",
        "missing",
        "--",
    ]


def test_synthetic_tables_are_ascii_and_keep_every_cell(tmp_path):
    paper_scale, smoke_scale = synthetic_latex(tmp_path, "paper"), synthetic_latex(tmp_path, "tiny_cpu")
    for tex in (paper_scale, smoke_scale):
        assert tex.isascii()
        body = [line for line in tex.splitlines() if line.endswith(r"\\")][2:]  # after the two header rows
        assert [len(re.findall(r"(?<!\\)&", line)) for line in body] == [22] * 4  # label + 5 x 4 cells + n, conv.
    assert (
        r"Shallow\_split \& G=3 \#3 & n/a & $12.00$ & -- & -- & $43.09$ & $-9.09$ & $-52.18$ & $\times$" in paper_scale
    )
    assert r"Not\_run \{missing\} & $5.90$ & missing & -- & --" in paper_scale
    assert r"No paper \textasciitilde{} n/a & n/a & $0.0950$ & -- & --" in paper_scale
    assert r"& $24.28$ & $24.00$ & $-0.28$ & $\checkmark$ & $1$ & -- \\" in paper_scale
    assert (
        r"\caption{Table\_1: 100\% of \textasciitilde{}params \& \{flops\} \#2, \$5 \textasciicircum{} x, "
        r"$10^{6}$ $\pm$ 2, $\Delta$--$\checkmark$$\times$. Reproduced at scale 'paper'" in paper_scale
    )
    assert r"scale 'tiny\_cpu'" in smoke_scale and r"($\checkmark$ column: n/c = not comparable)" in smoke_scale
    assert r"\checkmark" not in smoke_scale.partition("\n\\midrule\n")[2]  # rows: n/c at another scale


def test_synthetic_tables_compile(tmp_path):
    tables = {
        "synthetic_paper": synthetic_latex(tmp_path, "paper"),
        "synthetic_smoke": synthetic_latex(tmp_path, "tiny_cpu"),
    }
    assert set(_preamble_packages(tables["synthetic_paper"])) >= {r"\usepackage{booktabs}", r"\usepackage{amssymb}"}
    compile_tables(tmp_path, tables)


def test_regenerated_committed_tables_compile(tmp_path):
    """docs/results/cpu/tables/table{1,2}.tex regenerated by write_tables from the committed metrics summary
    (the reproduced values of every row that ran) and the real params/."""
    summary = json.loads(COMMITTED_SUMMARY.read_text())
    runs = tmp_path / "runs"
    written = set()
    for table in ("table1", "table2"):
        for exp, values in summary[table].items():
            if values is None or exp in written:
                continue
            written.add(exp)
            _write_metrics(
                runs,
                exp,
                values["params_m"] * 1e6,
                values["flops_g"] * 1e9,
                values["params_reduced_pct"],
                values["flops_reduced_pct"],
                values["test_error"],
            )
    out = tmp_path / "tables"
    write_tables(
        load_registry("params"), "params/paper_results.yaml", runs, out, tmp_path / "summary.json", summary["scale"]
    )
    tables = {name: (out / f"{name}.tex").read_text() for name in ("table1", "table2")}
    paper = yaml.safe_load(open("params/paper_results.yaml"))
    assert rf"& ${paper['table1']['baseline']['test_error']:.2f}$ &" in tables["table1"]
    compile_tables(tmp_path / "tables", tables)
