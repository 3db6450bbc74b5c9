# Adapter extraction: each checkpoint {step} of a run as a standalone peft adapter with a
# manifest (sha256 of every file, base model and its weights hash, step, loss, config slice).
# An imported adapter (models.<m>.imported) gets the same output from import_adapter: checked
# against the base model, copied, and a manifest saying where it came from.


rule extract_adapter:
    input:
        train=rules.train_lora.output[0],
        base=rules.prepare_base.output[0],
    output:
        directory(results("adapters/{model}/{adapter}/step-{step}")),
    log:
        logs("extract_adapter/{model}/{adapter}/step-{step}.log"),
    wildcard_constraints:
        adapter=TRAINED_ADAPTER,
    priority: 500
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    params:
        cfg=config_slice("extract_adapter"),
        code=code_version("lorascope.extraction:extract_adapter"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} extract-adapter --params {params.cfg:q} --train-dir {input.train}"
        " --base {input.base} --out {output} 2> {log}"


rule import_adapter:
    input:
        base=rules.prepare_base.output[0],
        files=imported_files,
    output:
        directory(results("adapters/{model}/{adapter}/step-{step}")),
    log:
        logs("import_adapter/{model}/{adapter}/step-{step}.log"),
    wildcard_constraints:
        adapter=IMPORTED_ADAPTER,
    priority: 500
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    params:
        cfg=config_slice("import_adapter"),
        code=code_version("lorascope.importing:import_adapter"),
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} import-adapter --params {params.cfg:q}"
        " --base {input.base} --out {output} 2> {log}"
