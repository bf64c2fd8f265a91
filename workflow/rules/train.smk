# Training stages. GPU jobs at paper scale. Every job passes --resume: it continues its own
# checkpoint, or restores its finished result, only when made from identical inputs (config
# sections, input file sha256, code; see src/splitnet/fingerprint.py); otherwise it starts fresh.


rule train_baseline:
    # the baseline row, or the baseline with a preset (the gap study's wider baselines)
    input:
        data=manifest(),
    output:
        model=run_dir("{baseline}", "{seed}", "train") + "/model.pt",
        record=run_dir("{baseline}", "{seed}", "train") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.baseline, "train", w.seed, w.scale),
        code=STAGE_CODE["train"],
        data=lambda w: ScaleOutputs(RESULTS, w.scale).data,
        out=lambda w: run_dir(w.baseline, w.seed, "train", w.scale),
    threads: threads_of
    resources:
        **GPU_RESOURCES,
    log:
        log_file("{baseline}/seed_{seed}/train"),
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet train --experiment {wildcards.baseline:q} --scale {wildcards.scale:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {params.data:q} --out {params.out:q} --resume"
        " > {log:q} 2>&1"


rule learn_groups:
    input:
        unpack(learn_inputs),
    output:
        model=run_dir("{exp}", "{seed}", "learn_groups") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "learn_groups") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "learn_groups", w.seed, w.scale),
        code=STAGE_CODE["learn_groups"],
        baseline=baseline_args,
        data=lambda w: ScaleOutputs(RESULTS, w.scale).data,
        out=lambda w: run_dir(w.exp, w.seed, "learn_groups", w.scale),
    threads: threads_of
    resources:
        **GPU_RESOURCES,
    log:
        log_file("{exp}/seed_{seed}/learn_groups"),
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet learn-groups --experiment {wildcards.exp:q} --scale {wildcards.scale:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {params.data:q} {params.baseline:q} --out {params.out:q} --resume > {log:q} 2>&1"


rule split:
    input:
        source=split_source,
    output:
        model=run_dir("{exp}", "{seed}", "split") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "split") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "split", w.seed, w.scale),
        code=STAGE_CODE["split"],
        out=lambda w: run_dir(w.exp, w.seed, "split", w.scale),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        log_file("{exp}/seed_{seed}/split"),
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet split --experiment {wildcards.exp:q} --scale {wildcards.scale:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"


rule finetune:
    input:
        data=manifest(),
        source=run_dir("{exp}", "{seed}", "split") + "/model.pt",
    output:
        model=run_dir("{exp}", "{seed}", "finetune") + "/model.pt",
        record=run_dir("{exp}", "{seed}", "finetune") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "finetune", w.seed, w.scale),
        code=STAGE_CODE["finetune"],
        data=lambda w: ScaleOutputs(RESULTS, w.scale).data,
        out=lambda w: run_dir(w.exp, w.seed, "finetune", w.scale),
        launcher=finetune_launcher,
        parallel=lambda w: ["--parallel"] if finetune_workers(w) > 1 else [],
    threads: threads_of
    resources:
        # model-parallel finetuning (docs/parallel.md): one GPU per worker at scales with finetune_workers > 1
        **{**GPU_RESOURCES, "gpu": lambda w: gpus(w) * finetune_workers(w)},
    log:
        log_file("{exp}/seed_{seed}/finetune"),
    shell:
        "SPLITNET_RULE={rule:q} {params.launcher:q} -m splitnet finetune --experiment {wildcards.exp:q} --scale {wildcards.scale:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {params.data:q} --source {input.source:q} --out {params.out:q} --resume"
        " {params.parallel:q} > {log:q} 2>&1"


rule evaluate:
    input:
        data=manifest(),
        source=final_model,
    output:
        metrics=run_dir("{exp}", "{seed}", "evaluate") + "/metrics.json",
        record=run_dir("{exp}", "{seed}", "evaluate") + "/run.json",
    params:
        cfg=lambda w: stage_params(w.exp, "evaluate", w.seed, w.scale),
        code=STAGE_CODE["evaluate"],
        data=lambda w: ScaleOutputs(RESULTS, w.scale).data,
        out=lambda w: run_dir(w.exp, w.seed, "evaluate", w.scale),
    threads: threads_of
    resources:
        **GPU_RESOURCES,
    log:
        log_file("{exp}/seed_{seed}/evaluate"),
    shell:
        "SPLITNET_RULE={rule:q} {PYTHON:q} -m splitnet evaluate --experiment {wildcards.exp:q} --scale {wildcards.scale:q}"
        " --seed {wildcards.seed:q} --params-dir {PARAMS:q} --data {params.data:q} --source {input.source:q} --out {params.out:q} > {log:q} 2>&1"
