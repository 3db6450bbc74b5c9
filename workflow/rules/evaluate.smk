# Evaluation: one job per {model} x {adapter} x {step} x {sweep} x {split}. The base model and
# the adapter are loaded once; every ablation of the sweep is scored by switching LoRA modules
# off in place. The built-in sweep "checkpoints" (the full adapter only) gives the curves.


rule evaluate:
    input:
        base=rules.prepare_base.output[0],
        adapter=rules.extract_adapter.output[0],
        split=rules.prepare_split.output,
    output:
        scores=results(
            "eval/{model}/{adapter}/step-{step}/{sweep}/{split}/scores.parquet"
        ),
        metrics=results(
            "eval/{model}/{adapter}/step-{step}/{sweep}/{split}/metrics.parquet"
        ),
        summary=results(
            "eval/{model}/{adapter}/step-{step}/{sweep}/{split}/summary.json"
        ),
    log:
        logs("evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.log"),
    benchmark:
        benchmarks("evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        cfg=config_slice("evaluate"),
        split_dir=split_dir,
        code=code_version("lorascope.evaluate:evaluate"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} evaluate --params {params.cfg:q} --base {input.base}"
        " --adapter {input.adapter} --split-dir {params.split_dir} --scores {output.scores}"
        " --metrics {output.metrics} --summary {output.summary} 2> {log}"
