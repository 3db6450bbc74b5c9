# Adapter extraction: each checkpoint {step} of a run as a standalone peft adapter with a
# manifest (sha256 of every file, base model and its weights hash, step, loss, config slice).


rule extract_adapter:
    input:
        train="results/{study}/train/{model}/{adapter}",
        base="results/{study}/models/{model}/base",
    output:
        directory("results/{study}/adapters/{model}/{adapter}/step-{step}"),
    log:
        "results/{study}/logs/extract_adapter/{model}/{adapter}/step-{step}.log",
    priority: 2
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    params:
        cfg=extract_params,
        code=code_version("lorascope.adapters:extract"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} extract-adapter --params {params.cfg:q} --train-dir {input.train}"
        " --base {input.base} --out {output} 2> {log}"
