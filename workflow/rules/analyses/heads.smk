# Attention-head ablation (analyses.heads): every head zeroed (or mean-ablated) in turn, for the
# base model and chosen checkpoints of a run, on a subset of a split (lorascope.analyses.heads).
from lorascope.analyses.heads import study as heads_study

# the ablated checkpoints and the run's last one (its score head serves the base model)
heads_checkpoint_dirs, heads_checkpoint_args = chosen_checkpoints(
    heads_study.checkpoints
)


rule heads:
    input:
        base=rules.prepare_base.output[0],
        adapters=heads_checkpoint_dirs,
        split=rules.prepare_split.output,
    output:
        table=results("heads/{model}/{adapter}/{split}/heads.parquet"),
        per_query=results("heads/{model}/{adapter}/{split}/per_query.parquet"),
        summary=results("heads/{model}/{adapter}/{split}/summary.json"),
    log:
        logs("heads/{model}/{adapter}/{split}.log"),
    benchmark:
        benchmarks("heads/{model}/{adapter}/{split}.tsv")
    priority: 40  # L x H passes per model: among the longest scoring jobs, started early
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=60,
    params:
        cfg=config_slice("heads"),
        adapters=heads_checkpoint_args,
        split_dir=split_dir,
        code=code_version("lorascope.analyses.heads.stage:heads"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} heads --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir}"
        " --out {output.table} --per-query {output.per_query} --summary {output.summary}"
        " 2> {log}"


ANALYSIS_SUMMARY["heads"] = (heads_study.jobs, {"heads": rules.heads.output.table})
