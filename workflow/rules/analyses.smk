# Beyond the paper: analyses of the trained adapters, each asked for by its config key
# (analyses.anatomy, analyses.lens, analyses.boundary, a sweep with `generate: svd`).
# - anatomy: the LoRA update of every checkpoint of a run, per (layer, role) module.
# - lens: the trained score head read out at every layer, base model and every checkpoint.
# - prune_boundary / compare_boundary: b chosen on the boundary sweep, the adapter pruned to
#   layers 0..b, then pruned vs full on each test split (metrics, significance, speed).
# - export_compressed: the adapters an `svd` sweep evaluates in place, as plain peft adapters.


rule anatomy:
    input:
        unpack(run_checkpoints),
    output:
        "results/{study}/anatomy/{model}/{adapter}.parquet",
    log:
        "results/{study}/logs/anatomy/{model}/{adapter}.log",
    benchmark:
        "results/{study}/benchmarks/anatomy/{model}/{adapter}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=anatomy_params,
        adapters=checkpoint_args,
        code=code_version("lorascope.anatomy:anatomy"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} anatomy --params {params.cfg:q} {params.adapters}"
        " --base {input.base} --out {output} 2> {log}"


rule lens:
    input:
        unpack(run_checkpoints),
        split=expand(
            "results/{{study}}/data/{{split}}/{table}.parquet", table=SPLIT_TABLES
        ),
    output:
        table="results/{study}/lens/{model}/{adapter}/{split}/lens.parquet",
        per_query="results/{study}/lens/{model}/{adapter}/{split}/per_query.parquet",
        summary="results/{study}/lens/{model}/{adapter}/{split}/summary.json",
    log:
        "results/{study}/logs/lens/{model}/{adapter}/{split}.log",
    benchmark:
        "results/{study}/benchmarks/lens/{model}/{adapter}/{split}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        cfg=lens_params,
        adapters=checkpoint_args,
        split_dir=split_dir,
        code=code_version("lorascope.lens:lens"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} lens --params {params.cfg:q}"
        " --base {input.base} {params.adapters} --split-dir {params.split_dir}"
        " --out {output.table} --per-query {output.per_query} --summary {output.summary}"
        " 2> {log}"


rule prune_boundary:
    input:
        unpack(boundary_selection),
        adapter="results/{study}/adapters/{model}/{adapter}/step-{step}",
        base="results/{study}/models/{model}/base",
    output:
        directory("results/{study}/boundary/{model}/{adapter}/step-{step}/pruned"),
    log:
        "results/{study}/logs/prune_boundary/{model}/{adapter}/step-{step}.log",
    benchmark:
        "results/{study}/benchmarks/prune_boundary/{model}/{adapter}/step-{step}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=prune_boundary_params,
        code=code_version("lorascope.boundary:prune"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} prune-boundary --params {params.cfg:q}"
        " --boundary-summary {input.summaries} --adapter {input.adapter} --base {input.base}"
        " --out {output} 2> {log}"


rule compare_boundary:
    input:
        base="results/{study}/models/{model}/base",
        adapter="results/{study}/adapters/{model}/{adapter}/step-{step}",
        pruned="results/{study}/boundary/{model}/{adapter}/step-{step}/pruned",
        split=expand(
            "results/{{study}}/data/{{split}}/{table}.parquet", table=SPLIT_TABLES
        ),
    output:
        scores="results/{study}/boundary/{model}/{adapter}/step-{step}/{split}/scores.parquet",
        metrics="results/{study}/boundary/{model}/{adapter}/step-{step}/{split}/metrics.parquet",
        summary="results/{study}/boundary/{model}/{adapter}/step-{step}/{split}/summary.json",
    log:
        "results/{study}/logs/compare_boundary/{model}/{adapter}/step-{step}/{split}.log",
    benchmark:
        "results/{study}/benchmarks/compare_boundary/{model}/{adapter}/step-{step}/{split}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        cfg=compare_boundary_params,
        split_dir=split_dir,
        code=code_version("lorascope.boundary:compare"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} compare-boundary"
        " --params {params.cfg:q} --base {input.base} --adapter {input.adapter}"
        " --pruned {input.pruned} --split-dir {params.split_dir} --scores {output.scores}"
        " --metrics {output.metrics} --summary {output.summary} 2> {log}"


rule export_compressed:
    input:
        "results/{study}/adapters/{model}/{adapter}/step-{step}",
    output:
        directory("results/{study}/compressed/{model}/{adapter}/step-{step}/r{rank}"),
    log:
        "results/{study}/logs/export_compressed/{model}/{adapter}/step-{step}/r{rank}.log",
    benchmark:
        "results/{study}/benchmarks/export_compressed/{model}/{adapter}/step-{step}/r{rank}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        cfg=export_compressed_params,
        code=code_version("lorascope.compression:export_compressed"),
    shell:
        "lorascope --threads {threads} --gpus {resources.gpu} export-compressed --params {params.cfg:q}"
        " --adapter {input} --rank {wildcards.rank} --out {output} 2> {log}"
