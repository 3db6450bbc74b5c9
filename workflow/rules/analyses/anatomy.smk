# LoRA update anatomy (analyses.anatomy): the update of every checkpoint of a run, per
# (layer, role) module - norms, spectra, effective rank (lorascope.analyses.anatomy).
from lorascope.analyses.anatomy import study as anatomy_study


rule anatomy:
    input:
        base=rules.prepare_base.output[0],
        adapters=checkpoint_dirs,
    output:
        results("anatomy/{model}/{adapter}.parquet"),
    log:
        logs("anatomy/{model}/{adapter}.log"),
    benchmark:
        benchmarks("anatomy/{model}/{adapter}.tsv")
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=config_slice("anatomy"),
        adapters=checkpoint_args,
        code=code_version("lorascope.analyses.anatomy.stage:anatomy"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} anatomy --params {params.cfg:q} {params.adapters}"
        " --base {input.base} --out {output} 2> {log}"


ANALYSIS_SUMMARY["anatomy"] = (anatomy_study.jobs, {"anatomy": rules.anatomy.output[0]})
