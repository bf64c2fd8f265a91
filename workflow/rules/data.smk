# prepare-data: raw dataset -> train/val/test tensors + manifest (shared by every row).


rule prepare_data:
    output:
        f"{DATA}/manifest.json",
    params:
        cfg=stage_params("baseline", "data"),
    log:
        f"{RUNS}/logs/prepare_data.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} prepare-data --experiment baseline --scale {SCALE}"
        " --params-dir {PARAMS} --out {DATA} > {log} 2>&1"
