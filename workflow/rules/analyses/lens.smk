# The relevance lens (analyses.lens): the trained score head read out at every layer, for the
# base model and every checkpoint of a run, on a split (lorascope.analyses.lens).
from lorascope.analyses.lens import study as lens_study


rule lens:
    input:
        base=rules.prepare_base.output[0],
        adapters=checkpoint_dirs,
        split=rules.prepare_split.output,
    output:
        table=results("lens/{model}/{adapter}/{split}/lens.parquet"),
        per_query=results("lens/{model}/{adapter}/{split}/per_query.parquet"),
        summary=results("lens/{model}/{adapter}/{split}/summary.json"),
    log:
        logs("lens/{model}/{adapter}/{split}.log"),
    benchmark:
        benchmarks("lens/{model}/{adapter}/{split}.tsv")
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb("score"),
        runtime=30,
    params:
        cfg=config_slice("lens"),
        adapters=checkpoint_args,
        split_dir=split_dir,
        code=code_version("lorascope.analyses.lens.stage:lens"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} lens --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir}"
        " --out {output.table} --per-query {output.per_query} --summary {output.summary}"
        " 2> {log}"


ANALYSIS_SUMMARY["lens"] = (lens_study.jobs, {"lens": rules.lens.output.table})
