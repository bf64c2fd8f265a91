# prepare-data: raw dataset -> train/val/test tensors + manifest (shared by every row).


rule prepare_data:
    output:
        f"{DATA}/manifest.json",
    params:
        cfg=stage_params("baseline", "prepare_data"),
    log:
        f"{OUT.logs}/prepare_data.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet prepare-data --experiment baseline --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --out {DATA:q} > {log:q} 2>&1"
