# Tables, figures and MLflow import: cheap, run on the submitting machine (localrules).

localrules:
    tables,
    grouping_study,
    grouping_study_extended,
    gap_study,
    figures,
    track,


TABLE_FILES = [str(p) for p in OUT.table_files(REGISTRY)]
CLAIMS_FILES = [str(p) for p in OUT.claims_files()]
FIGURE_FILES = [str(p) for p in OUT.figure_files(REGISTRY)]
TRACKING_FILE = str(OUT.tracking)
STUDY_FILES = [str(p) for p in OUT.study_files()]
EXTENDED_STUDY_FILES = [str(p) for p in OUT.study_files(extended=True)]
HAS_STUDY = REGISTRY["grouping_study"]["scale"] == SCALE  # the study belongs to one scale's pipeline
# `--config extra_seeds=true`: the rows of the scale's seed_groups run their extra seeds, and the
# tables, claims and MLflow read them (a constant flag, never a config value, reaches the shell)
EXTRA_SEEDS = "--extra-seeds" if config["extra_seeds"] else ""
# `--config gap_study=True`: also the gap study (not in the default run), whose runs the claims then read
GAP_STUDY = "--gap-study" if config["gap_study"] else ""
TABLE_RUNS = table_runs(REGISTRY, SCALE, claim_experiments(CLAIMS, config["gap_study"]), config["extra_seeds"])
GAP_FILES = [f"{OUT.tables}/gap_study.{ext}" for ext in ("csv", "md")] + [
    f"{OUT.figures}/gap_study.{ext}" for ext in ("png", "pdf")
]


rule tables:
    input:
        # every row of the tables, figures and claims, over its seeds: what `splitnet tables` checks for
        metrics=[run_dir(exp, seed, "evaluate", SCALE) + "/metrics.json" for exp, seed in TABLE_RUNS],
        # the claims' block-weight measure reads the groupings themselves
        groupings=[run_dir(exp, seed, "learn_groups", SCALE) + "/model.pt" for exp, seed in TABLE_RUNS
                   if method(exp) == "splitnet"],
        paper=f"{PARAMS}/paper_results.yaml",
        claims=f"{PARAMS}/claims.yaml",
    output:
        [report(f, caption="../report/tables.rst", category="Tables") if f.endswith(".md") else f for f in TABLE_FILES],
        [report(f, caption="../report/claims.rst", category="Claims") if f.endswith(".md") else f
         for f in CLAIMS_FILES],
    params:
        tables=json.dumps(REGISTRY["tables"], sort_keys=True),
        code=REPORT_CODE["tables"],
    log:
        f"{OUT.logs}/tables.log",
    shell:
        "{PYTHON:q} -m splitnet tables --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} {EXTRA_SEEDS}"
        " {GAP_STUDY}"
        " > {log:q} 2>&1"


rule figures:
    input:
        models=[run_dir(exp, SEEDS[0], "learn_groups", SCALE) + "/model.pt" for exp in FIGURE_ROWS],  # the first seed
    output:
        [report(f, caption="../report/figures.rst", category="Figures") if f.endswith(".png") else f
         for f in FIGURE_FILES],
    params:
        figures=json.dumps(REGISTRY["figures"], sort_keys=True),
        code=REPORT_CODE["figures"],
    log:
        f"{OUT.logs}/figures.log",
    shell:
        "{PYTHON:q} -m splitnet figures --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} > {log:q} 2>&1"


rule track:
    input:
        TABLE_FILES,
        CLAIMS_FILES,
        STUDY_FILES if HAS_STUDY else [],  # the study's runs are imported too
    output:
        TRACKING_FILE,
    params:
        code=REPORT_CODE["track"],
    log:
        f"{OUT.logs}/track.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true {PYTHON:q} -m splitnet track --scale {SCALE:q} --params-dir {PARAMS:q}"
        " --results {RESULTS:q} --summary-out {output:q} {EXTRA_SEEDS} > {log:q} 2>&1"


rule grouping_study:
    input:
        # every (dataset, preset, seed) run of the study, at the dataset's own scale
        metrics=[str(p) for p in study_inputs(REGISTRY, RESULTS)],
    output:
        [report(f, caption="../report/study.rst", category="Grouping study") if f.endswith((".md", ".png")) else f
         for f in STUDY_FILES],
    params:
        study=json.dumps({k: REGISTRY[k] for k in ("grouping_study", "presets")}, sort_keys=True),
        code=REPORT_CODE["study"],
    log:
        f"{OUT.logs}/grouping_study.log",
    shell:
        "{PYTHON:q} -m splitnet study --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} > {log:q} 2>&1"


# `--config extended_study=True` (or this target): the study's datasets marked `extended: true`
rule grouping_study_extended:
    input:
        metrics=[str(p) for p in study_inputs(REGISTRY, RESULTS, extended=True)],
    output:
        [report(f, caption="../report/study.rst", category="Grouping study") if f.endswith((".md", ".png")) else f
         for f in EXTENDED_STUDY_FILES],
    params:
        study=json.dumps({k: REGISTRY[k] for k in ("grouping_study", "presets")}, sort_keys=True),
        code=REPORT_CODE["study"],
    log:
        f"{OUT.logs}/grouping_study_extended.log",
    shell:
        "{PYTHON:q} -m splitnet study --extended --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q}"
        " > {log:q} 2>&1"


rule gap_study:
    input:
        # every (arm, seed) of the gap study, at its scale
        metrics=[str(p) for p in gap_inputs(REGISTRY, RESULTS)],
    output:
        [report(f, caption="../report/gap_study.rst", category="Gap study") if f.endswith((".md", ".png")) else f
         for f in GAP_FILES],
    params:
        study=json.dumps({k: REGISTRY[k] for k in ("gap_study", "presets")}, sort_keys=True),
        code=REPORT_CODE["gap_study"],
    log:
        f"{OUT.logs}/gap_study.log",
    shell:
        "{PYTHON:q} -m splitnet gap-study --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} > {log:q} 2>&1"
