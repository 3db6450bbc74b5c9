# lorascope: where in the network does relevance live?
# A table of contents: config, validation (lorascope.study), one rule file per stage of the
# paper, one per registered analysis (lorascope.analyses.registry), and the default target.
from snakemake.utils import min_version

min_version("9.20")


# config.yaml is the embedded default study; `--configfile other.yaml` runs that study
# instead of being merged over the default's models and splits.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    study=STUDY.name,
    split="|".join(STUDY.splits),
    model="|".join(STUDY.models),
    adapter=f"{TRAINED_ADAPTER}|{IMPORTED_ADAPTER}",
    rank=r"\d+",
    step=r"\d+",
    sweep=r"[a-z][a-z0-9_]*",


include: "workflow/rules/data.smk"
include: "workflow/rules/first_stage.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/adapters.smk"
include: "workflow/rules/evaluate.smk"


for analysis in registry.ANALYSES:

    include: f"workflow/rules/analyses/{analysis.name}.smk"


include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets,
