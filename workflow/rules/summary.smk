# The study summary: every evaluation, the first-stage baselines, the training logs and each
# analysis's outputs gathered into the tables the report reads (and study.json).


rule summarize:
    input:
        unpack(summarize_inputs),
    output:
        **summary_targets(),
    log:
        logs("summarize.log"),
    benchmark:
        benchmarks("summarize.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=10,
    params:
        cfg=config_slice("summarize"),
        jobs=summarize_jobs,
        benchmarks=results("benchmarks"),
        code=code_version("lorascope.summarize", *registry.modules("summary")),
    script:
        "../scripts/summarize.py"
