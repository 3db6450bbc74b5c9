# Linear probes for IR features (analyses.probing): per layer, ridge probes predicting BM25,
# query-term frequency, IDF-weighted coverage and passage length from the scoring token's
# hidden state, for the base model and chosen checkpoints of a run (lorascope.analyses.probing).
from lorascope.analyses.probing import study as probing_study

# The probed checkpoints of a run and its last one (the base model's head): the input function
# and the `--adapter STEP=DIR` arguments.
probing_checkpoint_dirs, probing_checkpoint_args = chosen_checkpoints(
    probing_study.checkpoint_steps
)


rule probing:
    input:
        base=rules.prepare_base.output[0],
        adapters=probing_checkpoint_dirs,
        split=rules.prepare_split.output,
    output:
        table=results("probing/{model}/{adapter}/{split}/probing.parquet"),
        folds=results("probing/{model}/{adapter}/{split}/folds.parquet"),
        summary=results("probing/{model}/{adapter}/{split}/summary.json"),
    log:
        logs("probing/{model}/{adapter}/{split}.log"),
    benchmark:
        benchmarks("probing/{model}/{adapter}/{split}.tsv")
    priority: 10  # one pass per checkpoint
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("probing"),
        adapters=probing_checkpoint_args,
        split_dir=split_dir,
        code=code_version("lorascope.analyses.probing.stage:probing"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} probing --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir}"
        " --out {output.table} --per-fold {output.folds} --summary {output.summary}"
        " 2> {log}"


ANALYSIS_SUMMARY["probing"] = (
    probing_study.jobs,
    {"probing": rules.probing.output.table},
)
