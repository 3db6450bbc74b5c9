"""Names shared between stages: one definition each, made and parsed in one place.

Everything that more than one stage (or a stage and the report) writes or reads by name lives
here: the reference ablation, the built-in sweep, the baseline rows, the generated ablation
names (built and parsed by the same pair of functions), the tables of a split and of the study
summary, and the report's pages. Analyses beyond the paper name their own tables in their
folder (:mod:`lorascope.analyses`).
"""

from __future__ import annotations

import re

#: The unablated adapter: the reference of every sweep, of its significance tests and of the
#: reproduction check.
FULL = "full"

#: The built-in sweep of the checkpoint curves: the full adapter only, every checkpoint.
CHECKPOINTS = "checkpoints"

#: Summary rows of the first-stage ranking and of its random reordering (the floor), and of a
#: base model's own zero-shot ranking (sweep and ablation ``zero_shot``, per model).
FIRST_STAGE = "first_stage"
RANDOM = "random"
ZERO_SHOT = "zero_shot"

#: Sweep generators (``generate:`` in a sweep; :mod:`lorascope.core.ablation`).
EACH_LAYER = "each_layer"
EACH_LAYER_ROLE = "each_layer_role"
BOUNDARY = "boundary"
SVD = "svd"
GENERATORS = (EACH_LAYER, EACH_LAYER_ROLE, BOUNDARY, SVD)

#: A training run's folder (the work directory and the published ``train/<model>/<adapter>/``):
#: one ``step-<N>/`` peft adapter per checkpoint, the untrained adapter of a PiSSA/OLoRA run
#: (what extraction subtracts) and the loss log.
INITIAL_ADAPTER = "initial"
TRAIN_LOG = "train_log.csv"


def checkpoint_name(step: int) -> str:
    """The folder of a training run's checkpoint ``step``."""
    return f"step-{step}"


#: The tables of one reranking split (``data/<split>/<table>.parquet``).
SPLIT_TABLES = ("queries", "candidates", "qrels")

#: The study summary's tables for the paper (``summary/<table>.parquet``) and its description;
#: analyses add their own tables (:func:`lorascope.analyses.registry.summary_tables`).
PAPER_SUMMARY_TABLES = ("evaluations", "convergence", "training_log")
STUDY_FILE = "study.json"

#: The report's pages in ``reports/<study>/``.
REPORT_PAGES = ("report.md", "report.tex", "report.html")

_LAYER_NAME = re.compile(r"^drop_layer_(\d+)$")
_LAYER_ROLE_NAME = re.compile(r"^drop_layer_(\d+)_([A-Za-z0-9]+)$")
_BOUNDARY_NAME = re.compile(r"^keep_layers_0_(\d+)$")
_SVD_NAME = re.compile(r"^svd_r(\d+)$")


def layer_name(layer: int) -> str:
    """The ``each_layer`` ablation that zeroes every LoRA module of one layer."""
    return f"drop_layer_{layer:02d}"


def parse_layer_name(name: str) -> int | None:
    """The layer of an ``each_layer`` ablation name; None for any other name."""
    m = _LAYER_NAME.match(name)
    return int(m.group(1)) if m else None


def layer_role_name(layer: int, role: str) -> str:
    """The ``each_layer_role`` ablation that zeroes the one module (layer, role)."""
    return f"drop_layer_{layer:02d}_{role}"


def parse_layer_role_name(name: str) -> tuple[int, str] | None:
    """(layer, role) of an ``each_layer_role`` ablation name; None for any other name."""
    m = _LAYER_ROLE_NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def boundary_name(b: int) -> str:
    """The ``boundary`` ablation that keeps LoRA in layers 0..b."""
    return f"keep_layers_0_{b:02d}"


def parse_boundary_name(name: str) -> int | None:
    """b of a ``boundary`` ablation name; None for any other name (``full`` included)."""
    m = _BOUNDARY_NAME.match(name)
    return int(m.group(1)) if m else None


def svd_name(rank: int) -> str:
    """The ``svd`` ablation that truncates every LoRA update to rank ``rank``."""
    return f"svd_r{rank}"


def parse_svd_name(name: str) -> int | None:
    """The rank of an ``svd`` ablation name; None for any other name."""
    m = _SVD_NAME.match(name)
    return int(m.group(1)) if m else None
