# LoRA reranker training: one job per {model} x {adapter} (= r<rank>-<targets>), checkpoints at
# the configured steps. A killed job resumes from its work directory when rerun, if the run is
# the same (settings, base weights, training data, code); `exec` makes the trainer the job's
# process, so Snakemake's kill reaches it (and it dies with Snakemake, lorascope.cli).


rule train_lora:
    input:
        base=rules.prepare_base.output[0],
        train_groups=rules.prepare_train.output[0],
    output:
        directory(results("train/{model}/{adapter}")),
    log:
        logs("train_lora/{model}/{adapter}.log"),
    benchmark:
        benchmarks("train_lora/{model}/{adapter}.tsv")
    priority: train_priority
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("train"),
        runtime=train_runtime,
    params:
        cfg=config_slice("train_lora"),
        work=train_work_dir,
        code=code_version("lorascope.training.stage:train_lora"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} train --params {params.cfg:q} --base {input.base}"
        " --train-groups {input.train_groups} --work-dir {params.work} --out {output}"
        " --code {params.code} 2> {log}"
