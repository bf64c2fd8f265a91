# Tables, figures and MLflow import: cheap, run on the submitting machine (localrules).

localrules:
    tables,
    figures,
    track,

TABLE_FILES = [f"{RESULTS}/tables/{t}.{ext}" for t in REGISTRY["tables"] for ext in ("md", "tex", "csv")] + [
    f"{RESULTS}/tables/class_groups.md",
    f"{RESULTS}/tables/arch_check.md",
    f"{RESULTS}/tables/arch_check.csv",
    f"{RESULTS}/metrics/summary.json",
]
FIGURE_FILES = [f"{RESULTS}/figures/{f}.{ext}" for f in ("fig1_assignment_dynamics", "fig2_block_structure")
                for ext in ("png", "pdf")]
TRACKING_FILE = f"{RESULTS}/tracking/{SCALE}.json"


rule tables:
    input:
        metrics=expand(f"{RUNS}/{{exp}}/evaluate/metrics.json", exp=TABLE_ROWS),
        paper=f"{PARAMS}/paper_results.yaml",
    output:
        [report(f, caption="../report/tables.rst", category="Tables") if f.endswith(".md") else f for f in TABLE_FILES],
    params:
        tables=json.dumps(REGISTRY["tables"], sort_keys=True),
    log:
        f"{RUNS}/logs/tables.log",
    shell:
        "{SPLITNET} tables --scale {SCALE} --params-dir {PARAMS} --results {RESULTS} > {log} 2>&1"


rule figures:
    input:
        snapshots=expand(f"{RUNS}/{{exp}}/learn_groups/model.pt", exp=["shallow", "shallow_simplex", "deep"]),
    output:
        [report(f, caption="../report/figures.rst", category="Figures") if f.endswith(".png") else f
         for f in FIGURE_FILES],
    log:
        f"{RUNS}/logs/figures.log",
    shell:
        "{SPLITNET} figures --scale {SCALE} --results {RESULTS} > {log} 2>&1"


rule track:
    input:
        TABLE_FILES,
    output:
        TRACKING_FILE,
    log:
        f"{RUNS}/logs/track.log",
    shell:
        "{SPLITNET} track --scale {SCALE} --params-dir {PARAMS} --results {RESULTS} --summary-out {output} > {log} 2>&1"
