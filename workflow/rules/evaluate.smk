# Evaluation: one job per {model} x {adapter} x {step} x {sweep} x {split}. The base model and
# the adapter are loaded once; every ablation of the sweep is scored by switching LoRA modules
# off in place. The built-in sweep "checkpoints" (the full adapter only) gives the curves.


rule evaluate:
    input:
        base="results/{study}/models/{model}/base",
        adapter="results/{study}/adapters/{model}/{adapter}/step-{step}",
        split=expand(
            "results/{{study}}/data/{{split}}/{table}.parquet", table=SPLIT_TABLES
        ),
    output:
        scores="results/{study}/eval/{model}/{adapter}/step-{step}/{sweep}/{split}/scores.parquet",
        metrics="results/{study}/eval/{model}/{adapter}/step-{step}/{sweep}/{split}/metrics.parquet",
        summary="results/{study}/eval/{model}/{adapter}/step-{step}/{sweep}/{split}/summary.json",
    log:
        "results/{study}/logs/evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.log",
    benchmark:
        "results/{study}/benchmarks/evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        cfg=evaluate_params,
        split_dir=split_dir,
        code=code_version("lorascope.stages:evaluate"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} evaluate --params {params.cfg:q} --base {input.base}"
        " --adapter {input.adapter} --split-dir {params.split_dir} --scores {output.scores}"
        " --metrics {output.metrics} --summary {output.summary} 2> {log}"


rule summarize:
    input:
        unpack(summarize_inputs),
    output:
        evaluations="results/{study}/summary/evaluations.parquet",
        convergence="results/{study}/summary/convergence.parquet",
        training_log="results/{study}/summary/training_log.parquet",
        boundary="results/{study}/summary/boundary.parquet",
        lens="results/{study}/summary/lens.parquet",
        anatomy="results/{study}/summary/anatomy.parquet",
        study="results/{study}/summary/study.json",
    log:
        "results/{study}/logs/summarize.log",
    benchmark:
        "results/{study}/benchmarks/summarize.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=10,
    params:
        cfg=summarize_params,
        jobs=summarize_jobs,
        benchmarks="results/{study}/benchmarks",
        code=code_version("lorascope.summarize"),
    script:
        "../scripts/summarize.py"
