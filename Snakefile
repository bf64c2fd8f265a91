# SplitNet reproduction: data -> baseline -> grouping -> split -> finetune -> evaluate -> tables.
#   snakemake --cores all                        # cpu scale (default), local; also runs the grouping study
#   snakemake --cores all grouping_study         # only the grouping study (results/cpu/tables/grouping_study.csv)
#   snakemake --cores all --config extra_seeds=True   # the committed reference results: more seeds for the small effects
#   snakemake --cores all --config gap_study=True     # also the gap study (hours; docs/studies/verdicts.md)
#   snakemake --cores all --config extended_study=True  # also the grouping study's extended datasets (~45 min)
#   snakemake --cores all --config scale=paper --profile workflow/profiles/slurm
# Experiments, scales and paper numbers live in params/; the rules live in workflow/rules/.

configfile: "params/pipeline.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/results.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        TABLE_FILES,
        CLAIMS_FILES,
        FIGURE_FILES,
        TRACKING_FILE,
        STUDY_FILES if HAS_STUDY else [],
        GAP_FILES if config["gap_study"] else [],
        EXTENDED_STUDY_FILES if HAS_STUDY and config["extended_study"] else [],
