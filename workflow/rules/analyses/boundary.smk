# Boundary-layer pruning (analyses.boundary): b chosen on the boundary sweep, the adapter pruned
# to layers 0..b, then pruned vs full on each test split: metrics, significance, unmerged speed
# (lorascope.analyses.boundary).
from lorascope.analyses.boundary import study as boundary_study


rule prune_boundary:
    input:
        summaries=expand(
            rules.evaluate.output.summary,
            allow_missing=True,
            **boundary_study.selection(STUDY),
        ),
        adapter=rules.extract_adapter.output[0],
        base=rules.prepare_base.output[0],
    output:
        directory(results("boundary/{model}/{adapter}/step-{step}/pruned")),
    log:
        logs("prune_boundary/{model}/{adapter}/step-{step}.log"),
    benchmark:
        benchmarks("prune_boundary/{model}/{adapter}/step-{step}.tsv")
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=config_slice("prune_boundary"),
        code=code_version("lorascope.analyses.boundary.prune:prune_boundary"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} prune-boundary --params {params.cfg:q}"
        " --boundary-summary {input.summaries} --adapter {input.adapter} --base {input.base}"
        " --out {output} 2> {log}"


rule compare_boundary:
    input:
        base=rules.prepare_base.output[0],
        adapter=rules.extract_adapter.output[0],
        pruned=rules.prune_boundary.output[0],
        split=rules.prepare_split.output,
    output:
        scores=results("boundary/{model}/{adapter}/step-{step}/{split}/scores.parquet"),
        metrics=results(
            "boundary/{model}/{adapter}/step-{step}/{split}/metrics.parquet"
        ),
        summary=results("boundary/{model}/{adapter}/step-{step}/{split}/summary.json"),
        runs=directory(results("boundary/{model}/{adapter}/step-{step}/{split}/runs")),
    log:
        logs("compare_boundary/{model}/{adapter}/step-{step}/{split}.log"),
    benchmark:
        benchmarks("compare_boundary/{model}/{adapter}/step-{step}/{split}.tsv")
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("compare_boundary"),
        split_dir=split_dir,
        code=code_version("lorascope.analyses.boundary.compare:compare_boundary"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} compare-boundary"
        " --params {params.cfg:q} --base {input.base} --adapter {input.adapter}"
        " --pruned {input.pruned} --split-dir {params.split_dir} --scores {output.scores}"
        " --metrics {output.metrics} --summary {output.summary} 2> {log}"


ANALYSIS_SUMMARY["boundary"] = (
    boundary_study.jobs,
    {"summary": rules.compare_boundary.output.summary},
)
