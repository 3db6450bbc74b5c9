# Shared helpers for all stages: the validated study, named input functions, and the
# functions that hand each job its own config slice (as canonical JSON).
from lorascope import plan, slices
from lorascope.config import load_study

# Validates against workflow/schemas/config.schema.yaml (fills its defaults) and checks what
# a schema cannot; a bad config stops here, before any job runs, naming the key and value.
STUDY = load_study(config)
plan.check_plan(STUDY)  # ablation specs against each model's depth and roles
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


def base_model_params(wildcards):
    return slices.to_json(slices.base_model(STUDY, wildcards.model))


def train_params(wildcards):
    return slices.to_json(slices.train(STUDY, wildcards.model, wildcards.adapter))


def extract_params(wildcards):
    step = int(wildcards.step)
    return slices.to_json(
        slices.extract(STUDY, wildcards.model, wildcards.adapter, step)
    )


def base_model_inputs(wildcards):
    """Tiny models pretrain on the study's training passages; other sources need no data."""
    if STUDY.models[wildcards.model].kind == "tiny":
        return {"train_groups": f"{RESULTS}/data/train_groups.parquet"}
    return {}


def train_groups_arg(wildcards, input):
    return (
        f"--train-groups {input.train_groups}" if "train_groups" in input.keys() else ""
    )


def train_work_dir(wildcards):
    return f"{RESULTS}/work/train/{wildcards.model}/{wildcards.adapter}"


def train_runtime(wildcards):
    """Minutes for a training job: generous for the run's length (profiles may override)."""
    steps = STUDY.models[wildcards.model].training.steps[-1]
    return max(30, steps // 2)


def adapter_targets():
    return [
        f"{RESULTS}/adapters/{m.name}/{a.name}/step-{step}"
        for m in STUDY.models.values()
        for a in m.training.adapters
        for step in m.training.steps
    ]


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
    return (
        data_all_targets(wildcards)
        + adapter_targets()
        + [f"reports/{STUDY.name}/{name}" for name in REPORT_FILES]
    )


SPLIT_TABLES = ("queries", "candidates", "qrels")


def evaluate_params(wildcards):
    return slices.to_json(
        slices.evaluate(
            STUDY,
            wildcards.model,
            wildcards.adapter,
            int(wildcards.step),
            wildcards.sweep,
            wildcards.split,
        )
    )


def eval_summary(job):
    return f"{RESULTS}/eval/{job.model}/{job.adapter}/step-{job.step}/{job.sweep}/{job.split}/summary.json"


def eval_jobs():
    return list(plan.evaluation_jobs(STUDY))


def evaluation_targets():
    return [eval_summary(job) for job in eval_jobs()]


def summarize_inputs(wildcards):
    return {
        "evals": evaluation_targets(),
        "first_stage": first_stage_targets(),
        "train": [
            f"{RESULTS}/train/{m.name}/{a.name}"
            for m in STUDY.models.values()
            for a in m.training.adapters
        ],
        "bases": [f"{RESULTS}/models/{m}/base" for m in STUDY.models],
    }


def summarize_jobs(wildcards):
    """The evaluation jobs (aligned with input.evals) with their run fields."""
    jobs = []
    for job in eval_jobs():
        adapter = plan.adapter_of(STUDY.models[job.model], job.adapter)
        jobs.append(
            {
                "model": job.model,
                "adapter": job.adapter,
                "rank": adapter.rank,
                "targets": adapter.targets_name,
                "step": job.step,
                "sweep": job.sweep,
                "split": job.split,
            }
        )
    return jobs


def summarize_params(wildcards):
    cfg = slices.summarize(STUDY)
    cfg["checkpoints_sweep"] = plan.CHECKPOINTS
    cfg["study"] = {
        "study": STUDY.name,
        "config_hash": STUDY.hash,
        "models": {
            m.name: {"label": m.label, "mechanics_only": m.mechanics_only}
            for m in STUDY.models.values()
        },
        "splits": {
            s.name: {"dataset": s.dataset, "depth": s.depth, "queries": s.queries}
            for s in STUDY.splits.values()
        },
    }
    return cfg


def report_params(wildcards):
    return slices.report(STUDY)


REPORT_FILES = ("report.md", "report.tex", "report.html")
