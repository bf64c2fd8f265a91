# Training stages. GPU jobs at paper scale. Every job passes --resume: it continues its own
# checkpoint, or restores its finished result, only when made from identical inputs (config
# sections, input file sha256, code; see src/splitnet/fingerprint.py); otherwise it starts fresh.


rule train_baseline:
    input:
        data=f"{DATA}/manifest.json",
    output:
        model=run_dir("baseline", "{seed}", "train") + "/model.pt",
        record=run_dir("baseline", "{seed}", "train") + "/run.json",
    params:
        cfg=lambda w: stage_params("baseline", "train", w.seed),
        out=lambda w: run_dir("baseline", w.seed, "train"),
    threads: threads_of("baseline")
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/baseline/seed_{{seed}}/train.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet train --experiment baseline --scale {SCALE:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {DATA:q} --out {params.out:q} --resume"
        " > {log:q} 2>&1"


rule learn_groups:
    input:
        unpack(learn_inputs),
    output:
        model=run_dir("{exp}", "{seed}", "learn_groups") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "learn_groups") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "learn_groups", w.seed),
        baseline=baseline_args,
        out=lambda w: run_dir(w.exp, w.seed, "learn_groups"),
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/seed_{{seed}}/learn_groups.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet learn-groups --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {DATA:q} {params.baseline:q} --out {params.out:q} --resume > {log:q} 2>&1"


rule split:
    input:
        source=split_source,
    output:
        model=run_dir("{exp}", "{seed}", "split") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "split") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "split", w.seed),
        out=lambda w: run_dir(w.exp, w.seed, "split"),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{OUT.logs}/{{exp}}/seed_{{seed}}/split.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet split --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"


rule finetune:
    input:
        data=f"{DATA}/manifest.json",
        source=run_dir("{exp}", "{seed}", "split") + "/model.pt",
    output:
        model=run_dir("{exp}", "{seed}", "finetune") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "finetune") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "finetune", w.seed),
        out=lambda w: run_dir(w.exp, w.seed, "finetune"),
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/seed_{{seed}}/finetune.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet finetune --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {DATA:q} --source {input.source:q} --out {params.out:q} --resume"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        data=f"{DATA}/manifest.json",
        source=final_model,
    output:
        metrics=run_dir("{exp}", "{seed}", "evaluate") + "/metrics.json",
        record=run_dir("{exp}", "{seed}", "evaluate") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "evaluate", w.seed),
        out=lambda w: run_dir(w.exp, w.seed, "evaluate"),
    threads: lambda w: threads_of(w.exp)
    resources:
        **GPU_RESOURCES,
    log:
        f"{OUT.logs}/{{exp}}/seed_{{seed}}/evaluate.log",
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet evaluate --experiment {wildcards.exp:q} --scale {SCALE:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {DATA:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"
