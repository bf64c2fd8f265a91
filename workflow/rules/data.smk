# prepare-data: raw dataset -> train/val/test tensors + manifest (shared by every row of a scale).


rule prepare_data:
    output:
        manifest(),
    params:
        cfg=lambda w: stage_params("baseline", "prepare_data", None, w.scale),
        code=STAGE_CODE["prepare_data"],
        out=lambda w: ScaleOutputs(RESULTS, w.scale).data,
    log:
        log_file("prepare_data"),
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet prepare-data --experiment baseline --scale {wildcards.scale:q}"
        " --params-dir {PARAMS:q} --out {params.out:q} > {log:q} 2>&1"
