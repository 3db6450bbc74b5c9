# Shared helpers for all stages: the validated study, named input functions, and the
# functions that hand each job its own config slice (as canonical JSON).
from functools import cache

from lorascope import plan, slices, variants
from lorascope.codedeps import code_version
from lorascope.config import load_study

# Validates against workflow/schemas/config.schema.yaml (fills its defaults) and checks what
# a schema cannot; a bad config stops here, before any job runs, naming the key and value.
STUDY = load_study(config)
plan.check_plan(STUDY)  # ablation specs against each model's depth and roles
RESULTS = f"results/{STUDY.name}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
ENV = "../../envs/lorascope.yaml"

# Code dependencies: every rule carries the content hash of the package files its stage runs
# as the param `code` (`code=code_version("lorascope.<module>[:<function>]")`, see
# lorascope.codedeps), so editing a module reruns exactly the stages that import it, and
# everything downstream of them.


def embedded_tables(source, dataset):
    """Package data a data stage reads: the shipped tables of an embedded collection."""
    return (f"resources/trec-dl/{dataset}.*.parquet",) if source == "embedded" else ()


def train_data_code(wildcards):
    data = embedded_tables(STUDY.train.source, STUDY.train.dataset)
    return code_version("lorascope.data.prepare:prepare_train", data=data)


def split_data_code(wildcards):
    split = STUDY.splits[wildcards.split]
    data = embedded_tables(split.source, split.dataset)
    return code_version("lorascope.data.prepare:prepare_split", data=data)


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


def train_groups_arg(wildcards):
    """The --train-groups option of prepare_base: tiny models only (base_model_inputs)."""
    paths = base_model_inputs(wildcards)
    return f"--train-groups {paths['train_groups']}" if paths else ""


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
        + compressed_targets()
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


@cache
def eval_jobs():
    """Every evaluation job of the study, planned once per process (summarize's inputs and
    params both walk them; on a 10,000-job study that is ~7,000 jobs each time)."""
    return tuple(plan.evaluation_jobs(STUDY))


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
        "boundary": boundary_targets(),
        "lens": lens_targets(),
        "anatomy": anatomy_targets(),
    }


def run_fields(model, adapter, step, sweep, split):
    """A summary row's run fields (rank, targets and variant from the config)."""
    a = plan.adapter_of(STUDY.models[model], adapter)
    return {
        "model": model,
        "adapter": adapter,
        "rank": a.rank,
        "targets": a.targets_name,
        "variant": variants.label(a.variant),
        "step": step,
        "sweep": sweep,
        "split": split,
    }


def summarize_jobs(wildcards):
    """The run fields of the evaluation jobs (aligned with input.evals) and of the boundary
    comparisons (aligned with input.boundary)."""
    return {
        "evals": [
            run_fields(j.model, j.adapter, j.step, j.sweep, j.split)
            for j in eval_jobs()
        ],
        "boundary": [
            run_fields(m, a, step, "", split) for m, a, step, split in boundary_jobs()
        ],
    }


def summarize_params(wildcards):
    """Convergence settings and the study's description for study.json. Not the config
    hash (it changes with any value; a report-only change must not rerun the summary).
    """
    cfg = slices.summarize(STUDY)
    cfg["checkpoints_sweep"] = plan.CHECKPOINTS
    cfg["study"] = {
        "study": STUDY.name,
        "models": {
            m.name: {"label": m.label, "mechanics_only": m.mechanics_only}
            for m in STUDY.models.values()
        },
        "splits": {
            s.name: {"dataset": s.dataset, "depth": s.depth, "queries": s.queries}
            for s in STUDY.splits.values()
        },
        "adapters": {
            m.name: {
                a.name: {
                    "rank": a.rank,
                    "targets": a.targets_name,
                    "variant": variants.label(a.variant),
                }
                for a in m.training.adapters
            }
            for m in STUDY.models.values()
        },
        "analyses": STUDY.raw.get("analyses") or {},
    }
    return cfg


def report_params(wildcards):
    """The report's presentation settings, and the hash of the whole config (its provenance
    block names the config that produced it; every change reaches the report anyway)."""
    return {**slices.report(STUDY), "config_hash": STUDY.hash}


REPORT_FILES = ("report.md", "report.tex", "report.html")


# ---- analyses (workflow/rules/analyses.smk) ----


def _steps(model):
    return STUDY.models[model].training.steps


def run_checkpoints(wildcards):
    """The base model and every extracted checkpoint of one run."""
    root = f"{RESULTS}/adapters/{wildcards.model}/{wildcards.adapter}"
    return {
        "base": f"{RESULTS}/models/{wildcards.model}/base",
        "adapters": [f"{root}/step-{step}" for step in _steps(wildcards.model)],
    }


def checkpoint_args(wildcards):
    """`--adapter STEP=DIR` for every checkpoint of the run (run_checkpoints' order)."""
    root = f"{RESULTS}/adapters/{wildcards.model}/{wildcards.adapter}"
    return " ".join(
        f"--adapter {step}={root}/step-{step}" for step in _steps(wildcards.model)
    )


def anatomy_params(wildcards):
    return slices.to_json(slices.anatomy(STUDY, wildcards.model, wildcards.adapter))


def lens_params(wildcards):
    return slices.to_json(
        slices.lens(STUDY, wildcards.model, wildcards.adapter, wildcards.split)
    )


def boundary_selection(wildcards):
    """The boundary sweep's summary on the selection split, which chooses b."""
    b = STUDY.analyses.boundary
    run = f"{RESULTS}/eval/{wildcards.model}/{wildcards.adapter}/step-{wildcards.step}"
    return {"summaries": [f"{run}/{b.sweep}/{b.selection_split}/summary.json"]}


def prune_boundary_params(wildcards):
    return slices.to_json(
        slices.prune_boundary(
            STUDY, wildcards.model, wildcards.adapter, int(wildcards.step)
        )
    )


def compare_boundary_params(wildcards):
    return slices.to_json(
        slices.compare_boundary(
            STUDY,
            wildcards.model,
            wildcards.adapter,
            int(wildcards.step),
            wildcards.split,
        )
    )


def export_compressed_params(wildcards):
    return slices.to_json(
        slices.export_compressed(
            STUDY,
            wildcards.model,
            wildcards.adapter,
            int(wildcards.step),
            int(wildcards.rank),
        )
    )


def anatomy_targets():
    return [f"{RESULTS}/anatomy/{m}/{a}.parquet" for m, a in plan.anatomy_runs(STUDY)]


def lens_targets():
    return [
        f"{RESULTS}/lens/{m}/{a}/{s}/lens.parquet" for m, a, s in plan.lens_jobs(STUDY)
    ]


def boundary_jobs():
    b = STUDY.analyses.boundary
    return [
        (m, a, step, split)
        for m, a, step in plan.boundary_runs(STUDY)
        for split in (b.splits if b else ())
    ]


def boundary_targets():
    return [
        f"{RESULTS}/boundary/{m}/{a}/step-{step}/{split}/summary.json"
        for m, a, step, split in boundary_jobs()
    ]


def compressed_targets():
    return [
        f"{RESULTS}/compressed/{m}/{a}/step-{step}/r{rank}"
        for m, a, step, rank in plan.compression_exports(STUDY)
    ]
