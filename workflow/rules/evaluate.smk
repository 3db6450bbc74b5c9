# Evaluation. Each base model's own zero-shot ranking (models.<m>.zero_shot), a baseline row
# of every table beside BM25 and the random floor. The checkpoint curves: one job per
# {model} x {adapter} x {split} scores the full adapter of every checkpoint (loaded once, the
# checkpoints swapped in). The sweeps: one job per {model} x {adapter} x {step} x {sweep} x
# {split}; the base model and the adapter are loaded once and every ablation of the sweep is
# scored by switching LoRA modules off in place. Priorities: the jobs with most passes first.


rule evaluate_checkpoints:
    input:
        base=rules.prepare_base.output[0],
        adapters=curve_checkpoints,
        split=rules.prepare_split.output,
    output:
        directory(results("eval/{model}/{adapter}/checkpoints/{split}")),
    log:
        logs("evaluate_checkpoints/{model}/{adapter}/{split}.log"),
    benchmark:
        benchmarks("evaluate_checkpoints/{model}/{adapter}/{split}.tsv")
    priority: curve_priority
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("evaluate_checkpoints"),
        adapters=curve_args,
        split_dir=split_dir,
        code=code_version("lorascope.curves:evaluate_checkpoints"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} evaluate-checkpoints --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir} --out {output}"
        " 2> {log}"


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
        runs=directory(
            results("eval/{model}/{adapter}/step-{step}/{sweep}/{split}/runs")
        ),
    log:
        logs("evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.log"),
    benchmark:
        benchmarks("evaluate/{model}/{adapter}/step-{step}/{sweep}/{split}.tsv")
    priority: evaluate_priority
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("evaluate"),
        split_dir=split_dir,
        code=code_version("lorascope.evaluate:evaluate"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} evaluate --params {params.cfg:q} --base {input.base}"
        " --adapter {input.adapter} --split-dir {params.split_dir} --scores {output.scores}"
        " --metrics {output.metrics} --summary {output.summary} --runs {output.runs} 2> {log}"


rule evaluate_zero_shot:
    input:
        base=rules.prepare_base.output[0],
        split=rules.prepare_split.output,
    output:
        metrics=results("zero_shot/{model}/{split}/metrics.parquet"),
        summary=results("zero_shot/{model}/{split}/summary.json"),
        run=results("zero_shot/{model}/{split}/zero_shot.run"),
    log:
        logs("evaluate_zero_shot/{model}/{split}.log"),
    benchmark:
        benchmarks("evaluate_zero_shot/{model}/{split}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("evaluate_zero_shot"),
        split_dir=split_dir,
        code=code_version("lorascope.zero_shot:evaluate_zero_shot"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} evaluate-zero-shot --params {params.cfg:q}"
        " --base {input.base} --split-dir {params.split_dir} --metrics {output.metrics}"
        " --summary {output.summary} --run {output.run} 2> {log}"
