# Base models: a ready Hugging Face directory per {model} (hub / local / package / GGUF / tiny),
# with base_manifest.json recording the source, revision and weights hash.


rule prepare_base:
    input:
        unpack(base_model_inputs),
    output:
        directory(results("models/{model}/base")),
    log:
        logs("prepare_base/{model}.log"),
    benchmark:
        benchmarks("prepare_base/{model}.tsv")
    priority: 2000
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=mem_mb("prepare"),
        runtime=60,
    params:
        cfg=config_slice("prepare_base"),
        train_groups=train_groups_arg,
        code=code_version("lorascope.models.stage:prepare_base"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} prepare-base --params {params.cfg:q} --out {output} {params.train_groups}"
        " 2> {log}"
