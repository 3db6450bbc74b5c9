# Data preparation: training groups and one reranking split per {split}, as Parquet contracts.


rule prepare_train:
    output:
        results("data/train_groups.parquet"),
    log:
        logs("prepare_train.log"),
    benchmark:
        benchmarks("prepare_train.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=config_slice("prepare_train"),
        code=train_data_code,
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} prepare-train --params {params.cfg:q} --out {output} 2> {log}"


rule prepare_split:
    input:
        split_files,
    output:
        split_tables(),
    log:
        logs("prepare_split/{split}.log"),
    benchmark:
        benchmarks("prepare_split/{split}.tsv")
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=config_slice("prepare_split"),
        out=split_dir,
        code=split_data_code,
    shell:
        "exec lorascope --die-with-parent=$PPID --threads {threads} --gpus {resources.gpu} prepare-split --params {params.cfg:q} --out {params.out} 2> {log}"
