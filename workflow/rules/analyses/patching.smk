# Activation patching of axiomatic perturbations (analyses.patching): a query term added to
# the passage (TFC1), removed, or a non-query term of the same length and rarity added; the
# perturbed run's residual stream (per block x token group) and attention heads patched into
# the baseline run, for the base model and chosen checkpoints (lorascope.analyses.patching).
from lorascope.analyses.patching import study as patching_study

# the patched checkpoints of a run and its last one (the base model's score head)
patching_checkpoint_dirs, patching_checkpoint_args = chosen_checkpoints(
    patching_study.checkpoints
)


rule patching:
    input:
        base=rules.prepare_base.output[0],
        adapters=patching_checkpoint_dirs,
        split=rules.prepare_split.output,
    output:
        table=results("patching/{model}/{adapter}/{split}/patching.parquet"),
        heads=results("patching/{model}/{adapter}/{split}/heads.parquet"),
        pairs=results("patching/{model}/{adapter}/{split}/pairs.parquet"),
        summary=results("patching/{model}/{adapter}/{split}/summary.json"),
    log:
        logs("patching/{model}/{adapter}/{split}.log"),
    benchmark:
        benchmarks("patching/{model}/{adapter}/{split}.tsv")
    priority: 40  # many patched passes: among the longest scoring jobs, started early
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("patching"),
        adapters=patching_checkpoint_args,
        split_dir=split_dir,
        code=code_version("lorascope.analyses.patching.stage:patching"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} patching --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir}"
        " --out {output.table} --heads {output.heads} --pairs {output.pairs}"
        " --summary {output.summary} 2> {log}"


ANALYSIS_SUMMARY["patching"] = (
    patching_study.jobs,
    {
        "patching": rules.patching.output.table,
        "patching_heads": rules.patching.output.heads,
    },
)
