# Training stages. GPU jobs at paper scale. Every job passes --resume: it continues its own
# checkpoint, or restores its finished result, only when made from identical inputs (config
# sections, input file sha256, code; see src/splitnet/fingerprint.py); otherwise it starts fresh.


rule train_baseline:
    input:
        data=f"{DATA}/manifest.json",
    output:
        model=f"{RUNS}/baseline/train/model.pt",
        record=f"{RUNS}/baseline/train/run.json",
    params:
        cfg=stage_params("baseline", "train"),
        out=f"{RUNS}/baseline/train",
    threads: threads_of("baseline")
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/baseline/train.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet train --experiment baseline --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --data {DATA:q} --out {params.out:q} --resume > {log:q} 2>&1"


rule learn_groups:
    input:
        unpack(learn_inputs),
    output:
        model=f"{RUNS}/{{exp}}/learn_groups/model.pt",
        record=f"{RUNS}/{{exp}}/learn_groups/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "learn_groups"),
        baseline=baseline_args,
        out=lambda w: f"{RUNS}/{w.exp}/learn_groups",
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/learn_groups.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet learn-groups --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --data {DATA:q} {params.baseline:q} --out {params.out:q} --resume > {log:q} 2>&1"


rule split:
    input:
        source=split_source,
    output:
        model=f"{RUNS}/{{exp}}/split/model.pt",
        record=f"{RUNS}/{{exp}}/split/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "split"),
        out=lambda w: f"{RUNS}/{w.exp}/split",
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{OUT.logs}/{{exp}}/split.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet split --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"


rule finetune:
    input:
        data=f"{DATA}/manifest.json",
        source=f"{RUNS}/{{exp}}/split/model.pt",
    output:
        model=f"{RUNS}/{{exp}}/finetune/model.pt",
        record=f"{RUNS}/{{exp}}/finetune/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "finetune"),
        out=lambda w: f"{RUNS}/{w.exp}/finetune",
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/finetune.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet finetune --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --data {DATA:q} --source {input.source:q} --out {params.out:q} --resume"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        data=f"{DATA}/manifest.json",
        source=final_model,
    output:
        metrics=f"{RUNS}/{{exp}}/evaluate/metrics.json",
        record=f"{RUNS}/{{exp}}/evaluate/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "evaluate"),
        out=lambda w: f"{RUNS}/{w.exp}/evaluate",
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/evaluate.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet evaluate --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --params-dir {PARAMS:q} --data {DATA:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"
