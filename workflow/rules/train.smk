# Training stages. GPU jobs at paper scale; every job resumes from its own checkpoint when
# Snakemake/SLURM retries it (--resume), and writes only its own directory.


rule train_baseline:
    input:
        data=f"{DATA}/manifest.json",
    output:
        model=f"{RUNS}/baseline/train/model.pt",
        record=f"{RUNS}/baseline/train/run.json",
    params:
        cfg=stage_params("baseline", "model", "engine", "train"),
    threads: threads_of("baseline")
    resources:
        **GPU_RESOURCES,
    log:
        f"{RUNS}/logs/baseline/train.log",
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} train --experiment baseline --scale {SCALE} --params-dir {PARAMS}"
        " --data {DATA} --out {RUNS}/baseline/train --resume > {log} 2>&1"


rule learn_groups:
    input:
        unpack(learn_inputs),
    output:
        model=f"{RUNS}/{{exp}}/learn_groups/model.pt",
        record=f"{RUNS}/{{exp}}/learn_groups/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "model", "engine", "group", "ssl"),
        baseline=lambda w, input: f"--baseline {input.baseline}" if "baseline" in input.keys() else "",
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{RUNS}/logs/{{exp}}/learn_groups.log",
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} learn-groups --experiment {wildcards.exp} --scale {SCALE}"
        " --params-dir {PARAMS} --data {DATA} {params.baseline} --out {RUNS}/{wildcards.exp}/learn_groups"
        " --resume > {log} 2>&1"


rule split:
    input:
        source=split_source,
    output:
        model=f"{RUNS}/{{exp}}/split/model.pt",
        record=f"{RUNS}/{{exp}}/split/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "model", "group", "split", "ssl"),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{RUNS}/logs/{{exp}}/split.log",
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} split --experiment {wildcards.exp} --scale {SCALE} --params-dir {PARAMS}"
        " --source {input.source} --out {RUNS}/{wildcards.exp}/split > {log} 2>&1"


rule finetune:
    input:
        data=f"{DATA}/manifest.json",
        source=f"{RUNS}/{{exp}}/split/model.pt",
    output:
        model=f"{RUNS}/{{exp}}/finetune/model.pt",
        record=f"{RUNS}/{{exp}}/finetune/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "engine", "finetune"),
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{RUNS}/logs/{{exp}}/finetune.log",
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} finetune --experiment {wildcards.exp} --scale {SCALE} --params-dir {PARAMS}"
        " --data {DATA} --source {input.source} --out {RUNS}/{wildcards.exp}/finetune --resume > {log} 2>&1"


rule evaluate:
    input:
        data=f"{DATA}/manifest.json",
        source=final_model,
    output:
        metrics=f"{RUNS}/{{exp}}/evaluate/metrics.json",
        record=f"{RUNS}/{{exp}}/evaluate/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "model", "engine", "evaluate"),
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{RUNS}/logs/{{exp}}/evaluate.log",
    shell:
        "SPLITNET_RULE={rule} {SPLITNET} evaluate --experiment {wildcards.exp} --scale {SCALE} --params-dir {PARAMS}"
        " --data {DATA} --source {input.source} --out {RUNS}/{wildcards.exp}/evaluate > {log} 2>&1"
