import json
from pathlib import Path

import yaml

from splitnet.arch_check import arch_check_rows
from splitnet.claims import claim_experiments, load_claims
from splitnet.cli import build_parser, main
from splitnet.config import load_registry, read_yaml
from splitnet.outputs import ScaleOutputs, table_runs
from splitnet.tables import build_rows, render_csv, render_latex, render_markdown, write_tables
from splitnet.validate import check_results_command


def _metrics(params, flops, error):
    return {
        "params": params,
        "flops": flops,
        "params_reduced_pct": 100 * (1 - params / 10_999_908),
        "flops_reduced_pct": 100 * (1 - flops / 3_095_498_952),
        "test_error": error,
    }


def _write(runs, exp, metrics):
    path = runs / exp / "seed_0" / "evaluate" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


def _cells(markdown_line):  # label, then Paper/Reproduced/Δ/✓ per column
    return [cell.strip() for cell in markdown_line.strip().strip("|").split("|")]


def test_missing_rows_show_missing_and_paper_scale_gets_checkmarks(tmp_path):
    registry = load_registry("params")
    paper = yaml.safe_load(open("params/paper_results.yaml"))
    _write(tmp_path, "shallow", _metrics(7_435_364, 2_642_416_840, 24.5))
    rows = build_rows("table1", registry, paper, tmp_path, "paper")
    by = {r["experiment"]: r for r in rows}
    assert by["deep"]["metrics"] == []
    md = render_markdown(rows, "caption")
    deep_line = next(line for line in md.splitlines() if line.startswith("| Deep Split"))
    assert "missing" in deep_line and not any(ch.isdigit() for ch in deep_line.split("|")[3])
    cells = by["shallow"]["cells"]
    assert cells["params_reduced_pct"].ok == "✓"  # 32.41 vs 32.54
    assert cells["test_error"].ok == "✓" and round(cells["test_error"].delta, 2) == 0.54
    baseline_error = by["baseline"]["cells"]["test_error"]  # paper value 24.28, but no run
    assert baseline_error.paper == 24.28 and baseline_error.reproduced is None and baseline_error.ok == "–"
    baseline_line = next(line for line in md.splitlines() if line.startswith("| WRN-16-8"))
    assert _cells(baseline_line)[17:21] == ["24.28", "missing", "–", "–"]
    table2 = {r["experiment"]: r for r in build_rows("table2", registry, paper, tmp_path, "paper")}
    flops = table2["shallow"]["cells"]["flops_g"]  # Table 2 has no FLOPs column: null, shown as n/a
    assert flops.paper is None and flops.reproduced is not None and flops.ok == "–"
    shallow_line = next(
        line
        for line in render_markdown(list(table2.values()), "c").splitlines()
        if line.startswith("| Shallow Split (G=2)")
    )
    assert _cells(shallow_line)[9:13] == ["n/a", "2.64", "–", "–"]
    smoke = build_rows("table1", registry, paper, tmp_path, "smoke")
    assert {c.ok for r in smoke for c in r["cells"].values()} <= {"n/c", "–"}
    assert "\\checkmark" in render_latex(rows, "c", "tab:t1")
    assert "table1,shallow,Shallow Split (G=2),params_reduced_pct,32.54,32.41,-0.13,✓,paper" in render_csv(
        rows, "table1", "paper", "CIFAR-100"
    )


def test_regenerated_tables_are_byte_identical(tmp_path):
    registry = load_registry("params")
    runs = tmp_path / "runs"
    _write(runs, "baseline", _metrics(10_999_908, 3_095_498_952, 21.0))
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        write_tables(registry, "params/paper_results.yaml", runs, out, out / "summary.json", "smoke")
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1] and "table1.tex" in outs[0]
    assert b"NOT CIFAR-100 numbers" in outs[0]["table1.md"]


def test_arch_check_rows_all_within_tolerance():
    rows = arch_check_rows(load_registry("params"), yaml.safe_load(open("params/paper_results.yaml")))
    assert all(r["ok_params_reduced_pct"] for r in rows)
    assert all(r["ok_flops_reduced_pct"] in (True, None) for r in rows)


def test_rows_show_mean_std_n_over_seeds_and_convergence(tmp_path):
    registry = load_registry("params")
    registry["scales"]["cpu"]["seeds"] = [0, 1, 2, 3]  # seed 3 never ran: n counts what finished
    runs = tmp_path / "runs"
    for seed, (error, converged) in enumerate([(15.0, 0.95), (16.0, 0.8), (17.0, 1.0)]):
        metrics = {
            **_metrics(7_435_364, 2_642_416_840, error),
            "split": "1-2-2",
            "grouping": {"assignment_converged": converged, "steps_to_convergence": {"all": 300 + seed}},
        }
        path = runs / "shallow" / f"seed_{seed}" / "evaluate" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics))
    out = tmp_path / "tables"
    write_tables(registry, "params/paper_results.yaml", runs, out, out / "summary.json", "cpu")
    line = next(row for row in (out / "table1.md").read_text().splitlines() if row.startswith("| Shallow Split (G=2)"))
    cells = _cells(line)
    assert cells[18] == "16.00 ± 1.00" and cells[-2] == "3" and cells[-1] == "0.80 (NOT converged)"
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["table1"]["shallow"]
    assert entry["seeds"] == [0, 1, 2] and entry["n"] == 3 and entry["assignment_converged"] == 0.8
    assert (
        entry["test_error"] == 16.0
        and entry["test_error_std"] == 1.0
        and entry["steps_to_convergence"] == [300, 301, 302]
    )
    assert summary["seeds"] == [0, 1, 2, 3] and summary["table1"]["deep"] is None
    assert "shallow,Shallow Split (G=2),assignment_converged,,0.8000" in (out / "table1.csv").read_text()


def test_only_the_paper_setting_is_compared_with_the_paper():
    from splitnet.tables import compares_to_paper

    registry = load_registry("params")
    assert {s for s in registry["scales"] if compares_to_paper(registry, s)} == {"paper", "paper_fp32"}


def test_tables_command_refuses_missing_runs_unless_partial(tmp_path, capsys):
    registry = load_registry("params")
    claims = load_claims("params", registry, read_yaml(Path("params/paper_results.yaml")))
    runs = table_runs(registry, "smoke", claim_experiments(claims))  # the tables', figures' and claims' rows
    out = ScaleOutputs(tmp_path, "smoke")
    for exp, seed in runs[1:]:  # every run the tables read but the first
        path = out.run_dir(exp, seed, "evaluate") / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_metrics(7_435_364, 2_642_416_840, 24.5)))
    argv = ["tables", "--scale", "smoke", "--results", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    first, seed = runs[0]
    assert err.count("\n") == 1 and f"1 of the {len(runs)} runs" in err and f"{first} (seed {seed})" in err, err
    assert "--partial" in err and not out.tables.exists()  # refused before anything is written
    assert main([*argv, "--partial"]) == 0
    assert "missing" in (out.tables / "table1.md").read_text()
    # with every run finished (the Snakemake rule's inputs), the check passes without the flag
    # (checked alone: rendering, ~20 s of architecture check, was shown above)
    path = out.run_dir(first, seed, "evaluate") / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_metrics(7_435_364, 2_642_416_840, 24.5)))
    check_results_command(build_parser().parse_args(argv))


def test_extra_seeds_add_the_seed_groups_rows_and_only_with_the_flag(tmp_path, capsys):
    from splitnet.config import row_seeds

    registry = load_registry("params")
    (group,) = registry["scales"]["cpu"]["seed_groups"]
    assert row_seeds(registry, "shallow", "cpu") == [0, 1, 2]
    assert row_seeds(registry, "shallow", "cpu", extra_seeds=True) == list(range(group["seeds"]))
    assert row_seeds(registry, "hier", "cpu", extra_seeds=True) == [0, 1, 2]  # not in a group
    plain, extra = table_runs(registry, "cpu"), table_runs(registry, "cpu", extra_seeds=True)
    assert len(extra) - len(plain) == len(group["rows"]) * (group["seeds"] - 3)
    # the tables command with --extra-seeds requires them (and names the missing seeds)
    out = ScaleOutputs(tmp_path, "cpu")
    claims = load_claims("params", registry, read_yaml(Path("params/paper_results.yaml")))
    for exp, seed in table_runs(registry, "cpu", claim_experiments(claims)):
        path = out.run_dir(exp, seed, "evaluate") / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    args = build_parser().parse_args(["tables", "--scale", "cpu", "--results", str(tmp_path)])
    check_results_command(args)  # the plain seeds are there
    assert main(["tables", "--scale", "cpu", "--results", str(tmp_path), "--extra-seeds"]) == 2
    err = capsys.readouterr().err
    assert "baseline (seed 3, 4, 5, 6, 7)" in err and err.count("\n") == 1


def test_a_seed_group_names_known_rows(tmp_path):
    import shutil

    from splitnet.config import ConfigError

    shutil.copytree("params", tmp_path / "params")
    scales = tmp_path / "params" / "scales.yaml"
    scales.write_text(scales.read_text().replace("- rows: [baseline,", "- rows: [baselin,"))
    try:
        load_registry(tmp_path / "params")
    except ConfigError as err:
        assert "scales.cpu.seed_groups[0].rows: unknown experiment 'baselin'" in str(err)
    else:
        raise AssertionError("a seed group with an unknown row was accepted")
