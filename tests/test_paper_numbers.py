"""The supplement's Tables 1 and 2, held here as its text, against params/paper_results.yaml.

TABLE1_TEXT and TABLE2_TEXT are copied verbatim from ../shared/reference/supplement.txt (the PDF's
text: each column is printed as a list, superscripts are flattened, so "PARAMS(106)" is
Params (10^6)). The tests parse them, check that they still occur in the supplement, and compare
every cell with params/paper_results.yaml: every value the supplement reports is in the yaml, and
every non-null yaml value is one the supplement reports.
"""

import os
from pathlib import Path

import pytest
import yaml

from splitnet.config import PRESET_SEPARATOR, load_registry
from splitnet.tables import COLUMNS

SUPPLEMENT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "supplement.txt"
PAPER_RESULTS = Path("params/paper_results.yaml")

TABLE1_TEXT = """\
Table 1. Comparison of Parameter/Computation Reduction and Test Errors on CIFAR-100.

NETWORK
WRN-16-8
FC SPLIT
SHALLOW SPLIT
DEEP SPLIT (DROPOUT)
HIER. SPLIT (DROPOUT)
FC SPLIT (OVERLAP)
SHALLOW SPLIT (OVERLAP)
DEEP SPLIT (OVERLAP)
SSL(1E-3) (WEN ET AL., 2016)
SSL(3E-3) (WEN ET AL., 2016)
SSL(5E-3) (WEN ET AL., 2016)

PARAMS(106) % REDUCED
0.0
0.35
32.54
46.39
62.58
0.32
21.67
27.02
9.40
32.38
59.31

11.0
11.0
7.42
5.90
4.12
11.0
8.62
8.03
9.97
7.44
4.48

FLOPS(109) % REDUCED
0.0
0.0
14.63
31.97
39.29
0.0
9.77
19.52
12.64
33.14
48.71

3.10
3.10
2.64
2.11
1.88
3.10
2.79
2.49
2.70
2.07
1.60

TEST ERROR(%)
24.28
24.26
23.96
24.66
24.80
24.04
23.74
24.10
24.15
24.49
24.65
"""

TABLE2_TEXT = """\
Table 2. Effect of G on Shallow SplitNet on CIFAR-100

MODEL

BASELINE
SHALLOW SPLIT
SHALLOW SPLIT
SHALLOW SPLIT

G

2
3
4

PARAMS
REDUCED (%)
0.0
32.44
43.09
48.66

TEST ERROR (%)

24.28
23.94
25.14
24.10
"""

# Supplement row name -> experiment id (params/experiments.yaml `tables:`).
TABLE1_ROWS = {
    "WRN-16-8": "baseline",
    "FC SPLIT": "fc",
    "SHALLOW SPLIT": "shallow",
    "DEEP SPLIT (DROPOUT)": "deep",
    "HIER. SPLIT (DROPOUT)": "hier",
    "FC SPLIT (OVERLAP)": "fc_overlap",
    "SHALLOW SPLIT (OVERLAP)": "shallow_overlap",
    "DEEP SPLIT (OVERLAP)": "deep_overlap",
    "SSL(1E-3) (WEN ET AL., 2016)": "ssl_1e-3",
    "SSL(3E-3) (WEN ET AL., 2016)": "ssl_3e-3",
    "SSL(5E-3) (WEN ET AL., 2016)": "ssl_5e-3",
}
TABLE2_ROWS = {
    ("BASELINE", None): "baseline",
    ("SHALLOW SPLIT", 2): "shallow",
    ("SHALLOW SPLIT", 3): "shallow_g3",
    ("SHALLOW SPLIT", 4): "shallow_g4",
}


def _is_number(line: str) -> bool:
    try:
        float(line)
    except ValueError:
        return False
    return True


def _blocks(text: str) -> list[list[str]]:
    """Paragraphs (runs of non-blank lines) of ``text``, each a list of lines."""
    return [block.splitlines() for block in text.strip().split("\n\n")]


def _numbers(lines: list[str]) -> list[float]:
    assert all(_is_number(line) for line in lines), lines
    return [float(line) for line in lines]


def parse_table1(text: str) -> dict[str, dict[str, float]]:
    """Experiment id -> {column key: value}. Layout: the row names, then per quantity a header
    ("PARAMS(106) % REDUCED") over the % REDUCED list, followed by the absolute list (its values
    sit under the first header word), then the test errors."""
    title, names, params_pct, params, flops_pct, flops, errors = _blocks(text)
    assert title[0].startswith("Table 1.") and names[0] == "NETWORK"
    assert params_pct[0] == "PARAMS(106) % REDUCED" and flops_pct[0] == "FLOPS(109) % REDUCED"
    assert errors[0] == "TEST ERROR(%)"
    columns = {
        "params_reduced_pct": _numbers(params_pct[1:]),
        "params_m": _numbers(params),
        "flops_reduced_pct": _numbers(flops_pct[1:]),
        "flops_g": _numbers(flops),
        "test_error": _numbers(errors[1:]),
    }
    rows = names[1:]
    assert all(len(values) == len(rows) for values in columns.values())
    return {TABLE1_ROWS[name]: {key: values[i] for key, values in columns.items()} for i, name in enumerate(rows)}


def parse_table2(text: str) -> dict[str, dict[str, float]]:
    """Experiment id -> {column key: value}. The G column has no entry for the baseline row
    (its first row), so its values belong to the rows after it."""
    title, model_head, models, g_head, g_values, params_pct, error_head, errors = _blocks(text)
    assert title[0].startswith("Table 2.") and model_head == ["MODEL"] and g_head == ["G"]
    assert params_pct[:2] == ["PARAMS", "REDUCED (%)"] and error_head == ["TEST ERROR (%)"]
    groups = [None] + [int(g) for g in g_values]
    pct, err = _numbers(params_pct[2:]), _numbers(errors)
    assert len(models) == len(groups) == len(pct) == len(err)
    return {
        TABLE2_ROWS[(name, g)]: {"params_reduced_pct": p, "test_error": e}
        for name, g, p, e in zip(models, groups, pct, err)
    }


SUPPLEMENT_TABLES = {"table1": parse_table1(TABLE1_TEXT), "table2": parse_table2(TABLE2_TEXT)}


def test_literal_tables_occur_in_the_supplement():
    if not SUPPLEMENT.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SUPPLEMENT} is missing under CI (the checkout's ../shared should hold it)")
        pytest.skip(f"{SUPPLEMENT} not present (a clone without ../shared): cannot check the transcription")
    text = SUPPLEMENT.read_text(encoding="utf-8")
    assert TABLE1_TEXT in text
    assert TABLE2_TEXT in text


def test_rows_are_the_registry_rows_in_the_papers_order():
    """The paper's rows, in its order; rows run with a preset (`row@preset`, not in the paper) follow them."""
    registry = load_registry("params")
    for table, reported in SUPPLEMENT_TABLES.items():
        rows = [row["experiment"] for row in registry["tables"][table]["rows"]]
        plain = [exp for exp in rows if PRESET_SEPARATOR not in exp]
        assert list(reported) == plain, table
        assert rows[: len(plain)] == plain, f"{table}: preset rows come after the paper's rows"


def test_every_cell_matches_paper_results_yaml():
    paper = yaml.safe_load(PAPER_RESULTS.read_text())
    keys = [key for key, _, _ in COLUMNS]
    for table, reported in SUPPLEMENT_TABLES.items():
        assert set(paper[table]) == set(reported), table
        for exp, stored in paper[table].items():
            assert set(stored) == set(keys), (table, exp)
            for key in keys:
                # None where the supplement's table has no such column.
                assert stored[key] == reported[exp].get(key), (table, exp, key, stored[key], reported[exp].get(key))


def test_absolute_and_reduced_columns_agree():
    """The % REDUCED lists belong to the absolute lists after them: value = baseline * (1 - pct/100)
    within the printed rounding (11.0 and 3.10 are rounded, hence 1 % of the baseline)."""
    table1 = SUPPLEMENT_TABLES["table1"]
    for absolute, pct in (("params_m", "params_reduced_pct"), ("flops_g", "flops_reduced_pct")):
        base = table1["baseline"][absolute]
        for exp, row in table1.items():
            assert abs(row[absolute] - base * (1 - row[pct] / 100)) <= 0.01 * base, (exp, absolute)


def test_issue_values_are_the_supplements():
    """The nine values once stored as null (Table 1 test errors, FC Split Params/FLOPs, Table 2 errors)."""
    t1, t2 = SUPPLEMENT_TABLES["table1"], SUPPLEMENT_TABLES["table2"]
    assert [t1[e]["test_error"] for e in ("baseline", "fc", "deep", "hier")] == [24.28, 24.26, 24.66, 24.80]
    assert (t1["fc"]["params_m"], t1["fc"]["flops_g"]) == (11.0, 3.10)
    assert [t2[e]["test_error"] for e in ("baseline", "shallow_g3", "shallow_g4")] == [24.28, 25.14, 24.10]
