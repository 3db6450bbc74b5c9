# Post-hoc SVD rank compression: the adapters an `svd` sweep evaluates in place (by the evaluate
# rule), exported as plain peft adapters (lorascope.analyses.compression).
from lorascope.analyses.compression import study as compression_study


rule export_compressed:
    input:
        rules.extract_adapter.output[0],
    output:
        directory(results("compressed/{model}/{adapter}/step-{step}/r{rank}")),
    log:
        logs("export_compressed/{model}/{adapter}/step-{step}/r{rank}.log"),
    benchmark:
        benchmarks("export_compressed/{model}/{adapter}/step-{step}/r{rank}.tsv")
    conda:
        ANALYSIS_ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=config_slice("export_compressed"),
        code=code_version("lorascope.analyses.compression.stage:export_compressed"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} export-compressed --params {params.cfg:q}"
        " --adapter {input} --rank {wildcards.rank} --out {output} 2> {log}"


ANALYSIS_TARGETS["compression"] = (
    compression_study.jobs,
    rules.export_compressed.output[0],
)
