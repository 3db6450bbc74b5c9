# Shared helpers for all stages: the validated study, named input functions, and the
# functions that hand each job its own config slice (as canonical JSON).
from lorascope import slices
from lorascope.config import load_study

# Validates against workflow/schemas/config.schema.yaml (fills its defaults) and checks what
# a schema cannot; a bad config stops here, before any job runs, naming the key and value.
STUDY = load_study(config)
RESULTS = f"results/{STUDY.name}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
ENV = "../../envs/lorascope.yaml"


def train_data_params(wildcards):
    return slices.to_json(slices.train_data(STUDY))


def split_data_params(wildcards):
    return slices.to_json(slices.split_data(STUDY, wildcards.split))


def first_stage_params(wildcards):
    return slices.to_json(slices.first_stage(STUDY, wildcards.split))


def split_dir(wildcards):
    return f"{RESULTS}/data/{wildcards.split}"


def data_targets():
    out = [f"{RESULTS}/data/train_groups.parquet"]
    for split in STUDY.splits:
        out += expand(f"{RESULTS}/data/{split}/{{table}}.parquet", table=SPLIT_TABLES)
    return out


def first_stage_targets():
    return [f"{RESULTS}/first_stage/{split}/summary.json" for split in STUDY.splits]


def data_all_targets(wildcards):
    return data_targets() + first_stage_targets()


def all_targets(wildcards):
    return data_all_targets(wildcards)


SPLIT_TABLES = ("queries", "candidates", "qrels")
