# The first-stage ranking of each split (and its random floor), evaluated as the baseline rows
# of every table.


rule evaluate_first_stage:
    input:
        rules.prepare_split.output,
    output:
        metrics=results("first_stage/{split}/metrics.parquet"),
        summary=results("first_stage/{split}/summary.json"),
        run=results("first_stage/{split}/first_stage.run"),
    log:
        logs("evaluate_first_stage/{split}.log"),
    benchmark:
        benchmarks("evaluate_first_stage/{split}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=config_slice("evaluate_first_stage"),
        split_dir=split_dir,
        code=code_version("lorascope.first_stage"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} evaluate-first-stage --params {params.cfg:q} --split-dir {params.split_dir}"
        " --metrics {output.metrics} --summary {output.summary} --run {output.run} 2> {log}"


rule data_all:
    # Target: every split prepared and its first-stage ranking evaluated.
    input:
        data_targets(),
        first_stage_targets(),
