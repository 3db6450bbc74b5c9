# Shared by every rule file - the validated study, the path helpers, the one helper that hands
# a rule its config slice, and the named input functions. (Snakemake's linter wants functions
# apart from rules: an analysis's rule file, workflow/rules/analyses/<name>.smk, declares its
# rules and registers its jobs and outputs; the generic functions here do the rest.)
from functools import cache

from lorascope.analyses import registry
from lorascope.core.adapters import ADAPTER_FILES
from lorascope.core.names import REPORT_PAGES, SPLIT_TABLES
from lorascope.study import plan, slices
from lorascope.study.codedeps import code_version
from lorascope.study.parse import load_study, read_config_files

# Validates against the study schema (lorascope/study/config.schema.yaml plus each analysis's
# schema.yaml; fills the defaults) and checks what a schema cannot; a bad config stops here,
# before any job runs, naming the key and value.
# Config files are re-read strictly: a key given twice is an error (YAML's last-wins would
# hide it), and a YTE template is refused (Snakemake has evaluated it by now: see README).
# Relative model paths resolve from the directory of the config file that names them.
STUDY = load_study(config, read_config_files(workflow.configfiles))
plan.check_plan(STUDY)  # ablation specs against each model's depth and roles
# Adapter names: a trained run's (r<rank>-<targets>[-<variant>]) and an imported adapter's (no
# dash), so that extract_adapter and import_adapter never claim the same output.
TRAINED_ADAPTER = r"r\d+-[a-z][a-z0-9_]*(-[a-z][a-z0-9_]*)?"
IMPORTED_ADAPTER = r"[a-z][a-z0-9_]*"
# The conda environment of every rule, relative to the rule file (analyses sit one level down).
ENV = "../../envs/lorascope.yaml"
ANALYSIS_ENV = "../../../envs/lorascope.yaml"

# ---- paths -----------------------------------------------------------------------------------
# A rule's outputs are patterns under results/{study}/ whose names tell their wildcards;
# input functions fill a pattern in for one job with `path`.


def results(pattern):
    """A path pattern under results/{study}/ (the {study} wildcard left in)."""
    return f"results/{{study}}/{pattern}"


def logs(pattern):
    return results(f"logs/{pattern}")


def benchmarks(pattern):
    return results(f"benchmarks/{pattern}")


def path(pattern, **wildcards):
    """One job's path: a results/{study}/ pattern with the study and `wildcards` filled in."""
    return results(pattern).format(study=STUDY.name, **wildcards)


def split_tables(split="{split}"):
    """The tables of a split: patterns, or one split's paths when `split` is a name."""
    tables = [results(f"data/{split}/{table}.parquet") for table in SPLIT_TABLES]
    return (
        tables if split == "{split}" else [t.format(study=STUDY.name) for t in tables]
    )


def split_dir(wildcards):
    return path("data/{split}", split=wildcards.split)


# ---- params: a rule's config slice ------------------------------------------------------------
# Each rule also carries `code=code_version(<its stage's entry point>)`, the content hash of the
# package files the stage runs (lorascope.study.codedeps): editing a module reruns exactly the
# stages that import it, and everything downstream of them.


def job_wildcards(wildcards):
    """A job's wildcards but the study, steps and ranks as ints: its slice's arguments."""
    return {
        k: int(v) if k in ("step", "rank") else v
        for k, v in wildcards.items()
        if k != "study"
    }


def config_slice(rule):
    """The `params:` function of a rule: its config slice for one job, as canonical JSON
    (lorascope.study.slices: exactly the values the job's outputs depend on)."""
    slice_of = slices.for_rule(rule)

    def params(wildcards):
        return slices.to_json(slice_of(STUDY, **job_wildcards(wildcards)))

    return params


def embedded_tables(source, dataset):
    """Package data a data stage reads: the shipped tables of an embedded collection."""
    return (f"resources/trec-dl/{dataset}.*.parquet",) if source == "embedded" else ()


# ---- the paper's plan ---------------------------------------------------------------------------


def adapter_dir(model, adapter, step):
    return path(
        "adapters/{model}/{adapter}/step-{step}",
        model=model,
        adapter=adapter,
        step=step,
    )


def chosen_checkpoints(steps_of):
    """The input function (extracted checkpoint dirs) and params function (`--adapter
    STEP=DIR` each) of a rule that reads the checkpoints `steps_of(study, model, adapter)`.
    """

    def dirs(wildcards):
        steps = steps_of(STUDY, wildcards.model, wildcards.adapter)
        return [adapter_dir(wildcards.model, wildcards.adapter, step) for step in steps]

    def args(wildcards):
        steps = steps_of(STUDY, wildcards.model, wildcards.adapter)
        return " ".join(
            f"--adapter {step}={d}" for step, d in zip(steps, dirs(wildcards))
        )

    return dirs, args


# every extracted checkpoint of one run, in step order (the curves, the lens)
checkpoint_dirs, checkpoint_args = chosen_checkpoints(
    lambda study, model, adapter: study.models[model].steps_of(adapter)
)


def adapter_targets():
    return [
        adapter_dir(m.name, a.name, step)
        for m in STUDY.models.values()
        for a in m.adapters()
        for step in m.steps_of(a.name)
    ]


def data_targets():
    out = [path("data/train_groups.parquet")]
    for split in STUDY.splits:
        out += split_tables(split)
    return out


def first_stage_targets():
    return [path("first_stage/{split}/summary.json", split=s) for s in STUDY.splits]


def zero_shot_summary(model, split):
    return path("zero_shot/{model}/{split}/summary.json", model=model, split=split)


@cache
def sweep_jobs():
    """Every evaluate job (a sweep on one checkpoint and split), planned once per process
    (summarize's inputs and params both walk them; on a 10,000-job study that is ~7,000
    jobs each time)."""
    return tuple(plan.sweep_jobs(STUDY))


@cache
def curve_jobs():
    """Every evaluate_checkpoints job (the checkpoint curve of a run on a split)."""
    return tuple(plan.curve_jobs(STUDY))


def eval_summary(job, name="summary.json"):
    """A sweep job's summary.json (or its other output ``name``, e.g. metrics.parquet)."""
    return path(
        f"eval/{{model}}/{{adapter}}/step-{{step}}/{{sweep}}/{{split}}/{name}",
        **vars(job),
    )


def contrasted_jobs():
    """The sweep jobs whose sweep compares pairs of its ablations (summarize reads their
    per-query metrics)."""
    return [job for job in sweep_jobs() if STUDY.sweeps[job.sweep].compare]


def curve_dir(job):
    pattern = "eval/{model}/{adapter}/checkpoints/{split}"
    return path(pattern, model=job.model, adapter=job.adapter, split=job.split)


def curve_checkpoints(wildcards):
    """The extracted checkpoints a curve job scores (every step, or the last one only)."""
    steps = plan.curve_steps(STUDY, wildcards.model, wildcards.adapter, wildcards.split)
    return [adapter_dir(wildcards.model, wildcards.adapter, step) for step in steps]


def curve_args(wildcards):
    """`--adapter STEP=DIR` for every checkpoint of a curve job."""
    steps = plan.curve_steps(STUDY, wildcards.model, wildcards.adapter, wildcards.split)
    return " ".join(
        f"--adapter {step}={d}" for step, d in zip(steps, curve_checkpoints(wildcards))
    )


def run_fields(model, adapter, step, sweep, split):
    """A summary row's run fields (rank, targets and variant from the config)."""
    return {
        "model": model,
        "adapter": adapter,
        **plan.adapter_fields(STUDY, model, adapter),
        "step": step,
        "sweep": sweep,
        "split": split,
    }


# ---- data, base models, training (data.smk, models.smk, train.smk) -----------------------------


def train_data_code(wildcards):
    data = [
        g for d in STUDY.train.datasets for g in embedded_tables(STUDY.train.source, d)
    ]
    return code_version("lorascope.data.prepare:prepare_train", data=data)


def imported_files(wildcards):
    """A local imported adapter's files (a changed file reruns its import); none from the hub."""
    source = plan.adapter_of(STUDY.models[wildcards.model], wildcards.adapter).source
    if "path" not in source:
        return []
    return [f"{source['path']}/{name}" for name in ADAPTER_FILES]


def split_files(wildcards):
    """The split's own files (source: files, or a run file): a changed file reruns it."""
    return STUDY.splits[wildcards.split].files()


def split_data_code(wildcards):
    split = STUDY.splits[wildcards.split]
    data = embedded_tables(split.source, split.dataset)
    return code_version("lorascope.data.prepare:prepare_split", data=data)


def base_model_inputs(wildcards):
    """Tiny models pretrain on the study's training passages; other sources need no data."""
    if STUDY.models[wildcards.model].kind == "tiny":
        return {"train_groups": path("data/train_groups.parquet")}
    return {}


def train_groups_arg(wildcards):
    """The --train-groups option of prepare_base: tiny models only (base_model_inputs)."""
    paths = base_model_inputs(wildcards)
    return f"--train-groups {paths['train_groups']}" if paths else ""


def train_work_dir(wildcards):
    return path("work/train/{model}/{adapter}", **job_wildcards(wildcards))


# ---- scheduling: longest jobs first ----------------------------------------------------------
# On a few cores the study ends when its longest chain does: training runs before any scoring,
# the adapters most sweeps wait for first; then the scoring jobs with the most passes.


def train_priority(wildcards):
    """Above every scoring job; among trainings, the adapter with the most sweep jobs first."""
    waiting = sum(
        1
        for job in plan.sweep_jobs(STUDY)
        if (job.model, job.adapter) == (wildcards.model, wildcards.adapter)
    )
    return 1000 + waiting


def evaluate_priority(wildcards):
    """A sweep job's scoring passes (full + its ablations): its expected length."""
    return plan.sweep_size(STUDY, wildcards.model, wildcards.adapter, wildcards.sweep)


def curve_priority(wildcards):
    """A curve job's scoring passes: one per checkpoint."""
    return len(
        plan.curve_steps(STUDY, wildcards.model, wildcards.adapter, wildcards.split)
    )


def mem_mb(stage):
    """A rule's mem_mb: the model's measured value for ``stage`` (config ``models.<m>.mem_mb``),
    else the rules' default (lorascope.study.spec.MEM_MB); times the attempt, so that a retry (--retries) after an
    out-of-memory kill asks for more."""

    def of(wildcards, attempt):
        return STUDY.models[wildcards.model].memory_mb(stage) * attempt

    return of


def train_runtime(wildcards):
    """Minutes for a training job: generous for the run's length (profiles may override)."""
    steps = STUDY.models[wildcards.model].training.steps[-1]
    return max(30, steps // 2)


# ---- what each analysis adds (registered by workflow/rules/analyses/<name>.smk) -----------------

# name -> (jobs, {key: output pattern}): `jobs(STUDY)` gives the wildcards of each of the
# analysis's jobs; each key is a summary table (or "summary") read from that output.
ANALYSIS_SUMMARY = {}
# name -> (jobs, output pattern): outputs nothing downstream reads (e.g. exported adapters),
# asked for by `all`.
ANALYSIS_TARGETS = {}
SUMMARY_PATH_KEYS = ("summary", *registry.summary_tables())


def fill(pattern, wildcards):
    """An output pattern of a rule (`rules.<rule>.output...`) filled in for one job."""
    return str(pattern).format(study=STUDY.name, **wildcards)


def analysis_entries():
    """Per analysis, one entry per job: its wildcards, its adapter's description and the
    paths summarize reads."""
    out = {}
    for name, (jobs, patterns) in sorted(ANALYSIS_SUMMARY.items()):
        out[name] = [
            {
                **job,
                **plan.adapter_fields(STUDY, job["model"], job["adapter"]),
                **{key: fill(pattern, job) for key, pattern in patterns.items()},
            }
            for job in jobs(STUDY)
        ]
    return out


def analysis_targets():
    return [
        fill(pattern, job)
        for jobs, pattern in ANALYSIS_TARGETS.values()
        for job in jobs(STUDY)
    ]


def summary_targets():
    """Every table of the study summary, and study.json."""
    return {
        **{t: results(f"summary/{t}.parquet") for t in registry.summary_tables()},
        "study": results("summary/study.json"),
    }


# ---- summary, report (summary.smk, report.smk) -------------------------------------------------


def summarize_inputs(wildcards):
    """Every file summarize reads, found from the plan (never by globbing)."""
    inputs = {
        "evals": [eval_summary(job) for job in sweep_jobs()],
        "contrasted": [
            eval_summary(job, "metrics.parquet") for job in contrasted_jobs()
        ],
        "curves": [curve_dir(job) for job in curve_jobs()],
        "zero_shot": [zero_shot_summary(m, s) for m, s in plan.zero_shot_jobs(STUDY)],
        "first_stage": first_stage_targets(),
        "train": [
            path("train/{model}/{adapter}", model=m.name, adapter=a.name)
            for m in STUDY.models.values()
            for a in m.training.adapters
        ],
        "bases": [path("models/{model}/base", model=m) for m in STUDY.models],
    }
    for name, entries in analysis_entries().items():
        inputs[f"analysis_{name}"] = [
            value
            for entry in entries
            for key, value in sorted(entry.items())
            if key in SUMMARY_PATH_KEYS
        ]
    return inputs


def summarize_jobs(wildcards):
    """Every evaluation (its run fields and summary.json: the sweeps', and each step of the
    checkpoint curves') and each analysis's entries (run fields and output paths)."""
    curves = [
        {
            **run_fields(**vars(evaluation)),
            "summary": f"{curve_dir(job)}/step-{evaluation.step}/summary.json",
        }
        for job in curve_jobs()
        for evaluation in job.evaluations()
    ]
    sweeps = [
        {
            **run_fields(**vars(job)),
            "summary": eval_summary(job),
            **(
                {"metrics": eval_summary(job, "metrics.parquet")}
                if STUDY.sweeps[job.sweep].compare
                else {}
            ),
        }
        for job in sweep_jobs()
    ]
    zero_shot = [
        {"model": m, "split": s, "summary": zero_shot_summary(m, s)}
        for m, s in plan.zero_shot_jobs(STUDY)
    ]
    return {
        "evals": curves + sweeps,
        "zero_shot": zero_shot,
        "analyses": analysis_entries(),
    }


def all_targets(wildcards):
    return (
        data_targets()
        + first_stage_targets()
        + adapter_targets()
        + analysis_targets()
        + [f"reports/{STUDY.name}/{page}" for page in REPORT_PAGES]
    )
