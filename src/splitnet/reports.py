"""The commands that read a scale's finished runs: ``splitnet track`` (into MLflow), ``tables``,
``figures`` and ``study``. Heavy imports stay inside the commands (``--help`` stays fast)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_track(args: argparse.Namespace) -> int:
    """Import the scale's run records into MLflow (one store for every scale)."""
    import os

    # Project rule: no telemetry, here and in what this process starts; set before mlflow
    # (imported by mlflow_import) reads it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from .config import METHOD_STAGES, load_registry, method_of, row_seeds
    from .mlflow_import import TrackEntry, default_tracking_uri, import_runs
    from .outputs import ScaleOutputs
    from .records import RUN_RECORD
    from .study import study_cells

    registry = load_registry(args.params_dir)
    out = ScaleOutputs(args.results, args.scale)
    # Kept as given (relative for a relative --results): the summary file is committed.
    uri = args.tracking_uri or default_tracking_uri(args.results)
    entries = []
    for table, spec in registry["tables"].items():
        for row in spec["rows"]:
            exp = row["experiment"]
            stages = METHOD_STAGES[method_of(registry, exp)]  # the parent run shows the last
            for seed in row_seeds(registry, exp, args.scale, args.extra_seeds):  # one parent run per row and seed
                records = [out.run_dir(exp, seed, stage) / RUN_RECORD for stage in stages]
                entries.append(
                    TrackEntry(table, f"{exp}/seed_{seed}", records, experiment_title=f"splitnet/{args.scale}/{table}")
                )
    files = {f"splitnet/{args.scale}/claims": [path for path in out.claims_files() if path.is_file()]}
    if registry["grouping_study"]["scale"] == args.scale:  # one parent run per (dataset, preset, seed)
        title = f"splitnet/{args.scale}/grouping_study"
        for cell in study_cells(registry):
            cell_out = ScaleOutputs(args.results, cell.scale)
            for seed in cell.seeds:
                records = [
                    cell_out.run_dir(cell.experiment, seed, stage) / RUN_RECORD for stage in METHOD_STAGES["splitnet"]
                ]
                entries.append(
                    TrackEntry(
                        "grouping_study", f"{cell.dataset}/{cell.preset}/seed_{seed}", records, experiment_title=title
                    )
                )
        files[f"{title}/table"] = [path for path in out.study_files() if path.is_file()]
    summary = import_runs(uri, entries, files={name: paths for name, paths in files.items() if paths} or None)
    print(f"tracking {uri}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if args.summary_out:
        from .io import atomic_write_json

        atomic_write_json(Path(args.summary_out), {"tracking_uri": uri, "scale": args.scale, **summary})
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from . import per_seed
    from .arch_check import write_arch_check
    from .claims import claim_experiments, load_claims, write_claims
    from .config import load_registry, read_yaml
    from .outputs import ScaleOutputs, table_runs
    from .tables import dataset_text, seeds_caption, write_tables

    registry = load_registry(args.params_dir)
    out = ScaleOutputs(args.results, args.scale)
    paper_file = Path(args.params_dir) / "paper_results.yaml"
    paper = read_yaml(paper_file)
    claims = load_claims(args.params_dir, registry, paper)
    write_tables(registry, paper_file, out.runs, out.tables, out.summary, args.scale, args.extra_seeds)
    # The claims read the per-seed table only, so committing it lets anyone recompute every verdict.
    runs = table_runs(registry, args.scale, claim_experiments(claims, args.gap_study), args.extra_seeds)
    rows = per_seed.collect(out.runs, runs)
    per_seed.write_csv(out.per_seed, rows)
    dataset, arch = dataset_text(registry, args.scale), registry["scales"][args.scale]["model"]["arch"].upper()
    caption = (
        f"The supplement's claims at scale '{args.scale}' ({arch}, {dataset}); "
        f"{seeds_caption(registry, args.scale, args.extra_seeds)}. Test error, params and FLOPs reduced in %."
    )
    write_claims(claims, paper, rows, out.tables, caption, args.scale)
    write_arch_check(registry, paper_file, out.tables)
    print(
        f"wrote {out.tables}/: {', '.join(sorted(p.name for p in out.tables.iterdir() if not p.name.startswith('.')))}"
        f" and {out.per_seed}"
    )
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .config import load_registry
    from .figures import fig1_assignment_dynamics, fig2_block_structure
    from .outputs import ScaleOutputs

    registry = load_registry(args.params_dir)
    runs, seed = registry["figures"], registry["scales"][args.scale]["seeds"][0]  # figures show the first seed
    out = ScaleOutputs(args.results, args.scale)
    fig1 = runs["fig1_assignment_dynamics"]
    fig1_assignment_dynamics(
        {label: out.run_dir(exp, seed, "learn_groups") for label, exp in fig1.items()},
        out.figures / "fig1_assignment_dynamics",
    )
    (exp,) = runs["fig2_block_structure"].values()
    fig2_block_structure(out.run_dir(exp, seed, "learn_groups") / "model.pt", out.figures / "fig2_block_structure")
    print(f"wrote {out.figures}/fig1_assignment_dynamics.(png|pdf), fig2_block_structure.(png|pdf)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .config import load_registry
    from .figures import fig_class_groups
    from .outputs import ScaleOutputs, study_name
    from .study import FIGURE_PRESETS, study_cells, write_study
    from .tables import seed_metrics

    registry = load_registry(args.params_dir)
    out = ScaleOutputs(args.results, args.scale)
    rows = write_study(registry, args.results, out.tables, args.extended)
    panels = {}
    for cell in study_cells(registry, args.extended):
        if cell.preset in FIGURE_PRESETS:
            metrics = seed_metrics(ScaleOutputs(args.results, cell.scale).runs, cell.experiment, list(cell.seeds))
            if metrics:
                panels[f"{cell.dataset}\n{cell.preset}"] = [{**m["groups"], "seed": m["seed"]} for m in metrics]
    if panels:
        fig_class_groups(panels, out.figures / study_name(args.extended))
    print(
        f"wrote {', '.join(str(p) for p in out.study_files(args.extended))}: "
        f"{sum(r['seeds'] for r in rows)} runs in {len(rows)} (dataset, preset) cells"
    )
    return 0


def cmd_gap_study(args: argparse.Namespace) -> int:
    from .config import load_registry
    from .gap_study import write_gap_study
    from .outputs import ScaleOutputs

    registry = load_registry(args.params_dir)
    out = ScaleOutputs(args.results, args.scale)
    rows = write_gap_study(registry, args.results, out)
    print(
        f"wrote {out.tables}/gap_study.(csv|md), {out.figures}/gap_study.(png|pdf): "
        f"{sum(r['seeds'] for r in rows)} runs in {len(rows)} arms"
    )
    return 0
