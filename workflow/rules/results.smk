# Tables, figures and MLflow import: cheap, run on the submitting machine (localrules).

localrules:
    tables,
    figures,
    track,


TABLE_FILES = [str(p) for p in OUT.table_files(REGISTRY)]
FIGURE_FILES = [str(p) for p in OUT.figure_files(REGISTRY)]
TRACKING_FILE = str(OUT.tracking)


rule tables:
    input:
        metrics=expand(f"{RUNS}/{{exp}}/evaluate/metrics.json", exp=TABLE_ROWS),
        paper=f"{PARAMS}/paper_results.yaml",
    output:
        [report(f, caption="../report/tables.rst", category="Tables") if f.endswith(".md") else f for f in TABLE_FILES],
    params:
        tables=json.dumps(REGISTRY["tables"], sort_keys=True),
    log:
        f"{OUT.logs}/tables.log",
    shell:
        "{PYTHON:q} -m splitnet tables --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} > {log:q} 2>&1"


rule figures:
    input:
        models=expand(f"{RUNS}/{{exp}}/learn_groups/model.pt", exp=FIGURE_ROWS),
    output:
        [report(f, caption="../report/figures.rst", category="Figures") if f.endswith(".png") else f
         for f in FIGURE_FILES],
    params:
        figures=json.dumps(REGISTRY["figures"], sort_keys=True),
    log:
        f"{OUT.logs}/figures.log",
    shell:
        "{PYTHON:q} -m splitnet figures --scale {SCALE:q} --params-dir {PARAMS:q} --results {RESULTS:q} > {log:q} 2>&1"


rule track:
    input:
        TABLE_FILES,
    output:
        TRACKING_FILE,
    log:
        f"{OUT.logs}/track.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true {PYTHON:q} -m splitnet track --scale {SCALE:q} --params-dir {PARAMS:q}"
        " --results {RESULTS:q} --summary-out {output:q} > {log:q} 2>&1"
