# Data preparation: training groups and one reranking split per {split}, as Parquet contracts.


rule prepare_train:
    output:
        "results/{study}/data/train_groups.parquet",
    log:
        "results/{study}/logs/prepare_train.log",
    benchmark:
        "results/{study}/benchmarks/prepare_train.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=train_data_params,
        code=train_data_code,
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} prepare-train --params {params.cfg:q} --out {output} 2> {log}"


rule prepare_split:
    output:
        expand("results/{{study}}/data/{{split}}/{table}.parquet", table=SPLIT_TABLES),
    log:
        "results/{study}/logs/prepare_split/{split}.log",
    benchmark:
        "results/{study}/benchmarks/prepare_split/{split}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=split_data_params,
        out=split_dir,
        code=split_data_code,
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} prepare-split --params {params.cfg:q} --out {params.out} 2> {log}"
