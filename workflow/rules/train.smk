# LoRA reranker training: one job per {model} x {adapter} (= r<rank>-<targets>), checkpoints at
# the configured steps. A killed job resumes from its work directory when rerun.


rule train_lora:
    input:
        base="results/{study}/models/{model}/base",
        train_groups="results/{study}/data/train_groups.parquet",
    output:
        directory("results/{study}/train/{model}/{adapter}"),
    log:
        "results/{study}/logs/train_lora/{model}/{adapter}.log",
    benchmark:
        "results/{study}/benchmarks/train_lora/{model}/{adapter}.tsv"
    priority: 2
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=train_runtime,
    params:
        cfg=train_params,
        work=train_work_dir,
        code=code_version("lorascope.stages:train_lora"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} train --params {params.cfg:q} --base {input.base}"
        " --train-groups {input.train_groups} --work-dir {params.work} --out {output}"
        " 2> {log}"
