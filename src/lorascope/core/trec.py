"""TREC run files (``qid Q0 docid rank score tag``): read line by line with errors naming the
file and line (a first stage given as a run file), and written in the order trec_eval
evaluates them, with scores that read back exactly (every evaluation's exported runs).

Written runs are exact: each score is the double lorascope's metrics were computed from,
written with ``repr`` (it parses back to the same double), and the lines are in trec_eval's
own order (score descending, ties by docid descending), so trec_eval on an exported run gives
bitwise the metrics the stage reports. Files appear whole or not at all
(:mod:`lorascope.core.fileio`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lorascope.core.fileio import atomic_dir, write_text
from lorascope.core.names import checkpoint_name

#: The file name of a run in a folder of runs: ``<name>.run``.
RUN_SUFFIX = ".run"
#: The folder of an evaluation's TREC runs when none is named: beside its scores.
RUNS_DIR = "runs"
#: The params of a sweep job that name its runs, with the ablation.
SWEEP_TAG_FIELDS = ("model", "adapter", "step", "sweep")


def stream_run(path: str | Path) -> Iterator[tuple[str, str, float]]:
    """``(qid, docid, score)`` of a TREC run file, line by line (``qid Q0 docid rank score
    tag``, whitespace-separated; the rank column is ignored, as trec_eval does: order is by
    score). A malformed line is a ``ValueError`` naming the file and line."""
    for _, qid, docid, score in numbered_run(path):
        yield qid, docid, score


def numbered_run(path: str | Path) -> Iterator[tuple[int, str, str, float]]:
    """:func:`stream_run` with each entry's line number first."""
    for number, fields in _lines(path, "run", "qid Q0 docid rank score tag"):
        try:
            score = float(fields[4])
        except ValueError:
            raise ValueError(f"{path} line {number}: score {fields[4]!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"{path} line {number}: score {fields[4]!r} is not finite")
        yield number, fields[0], fields[2], score


def read_qrels(path: str | Path) -> list[tuple[str, str, int]]:
    """``(qid, docid, grade)`` of a TREC qrels file (``qid iteration docid grade``); a
    malformed line or a grade that is not an integer is a ``ValueError`` naming the line."""
    qrels = []
    for number, fields in _lines(path, "qrels", "qid iteration docid grade"):
        try:
            grade = int(fields[3])
        except ValueError:
            raise ValueError(
                f"{path} line {number}: relevance grade {fields[3]!r} is not an integer"
            ) from None
        qrels.append((fields[0], fields[2], grade))
    return qrels


def _lines(path: str | Path, kind: str, layout: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a whitespace-separated TREC file, blank lines skipped;
    a line without as many fields as ``layout`` names is an error naming it."""
    count = len(layout.split())
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != count:
                raise ValueError(
                    f"{path} line {number}: a TREC {kind} line has {count} fields ({layout}), "
                    f"this one has {len(fields)}: {line.strip()[:80]!r}"
                )
            yield number, fields


def trec_order(hits: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """A query's ``(docid, score)`` in the order trec_eval evaluates them: score descending,
    ties by docid descending."""
    return sorted(hits, key=lambda h: (h[1], h[0]), reverse=True)


def run_lines(scores: Mapping[tuple[str, str], float], tag: str) -> Iterator[str]:
    """The lines of a TREC run file for ``{(qid, docid): score}``: queries in sorted order,
    each query's documents in :func:`trec_order`, ranks from 1, scores written exactly
    (``repr``: they read back as the same double). A tag or an id that is not one word, or a
    score that is not finite, is a ``ValueError``."""
    check_tag(tag)
    by_query: dict[str, list[tuple[str, float]]] = {}
    for (qid, docid), score in scores.items():
        score = float(score)
        if not (_is_word(qid) and _is_word(docid)):
            raise ValueError(f"run {tag}: query {qid!r} document {docid!r}: ids in a TREC run "
                             "are one word each")
        if not math.isfinite(score):
            raise ValueError(f"run {tag}: query {qid!r} document {docid!r} has score {score!r}; "
                             "a TREC run needs finite scores (trec_eval cannot order the rest)")
        by_query.setdefault(qid, []).append((docid, score))
    for qid in sorted(by_query):
        for rank, (docid, score) in enumerate(trec_order(by_query[qid]), start=1):
            yield f"{qid} Q0 {docid} {rank} {score!r} {tag}\n"


def check_tag(tag: str) -> str:
    """``tag`` if it is a valid run tag (one non-empty word: trec_eval splits lines on
    whitespace), else a ``ValueError``."""
    if not isinstance(tag, str) or not _is_word(tag):
        raise ValueError(f"a TREC run tag is one word, got {tag!r}")
    return tag


def run_tag(*parts: object) -> str:
    """The run tag naming what was ranked: ``parts`` joined by ``.`` (e.g. model, adapter,
    ``step-<N>``, sweep, ablation), checked by :func:`check_tag`."""
    return check_tag(".".join(str(part) for part in parts))


def sweep_tagger(params: Mapping[str, Any]) -> Callable[[str], str]:
    """The run tag of each ablation of a sweep job (``evaluate``, a checkpoint of
    ``evaluate_checkpoints``): ``<model>.<adapter>.step-<step>.<sweep>.<ablation>``. Params
    without one of :data:`SWEEP_TAG_FIELDS`, or with one that is not a word, are a
    ``ValueError`` here, before any scoring."""
    missing = [k for k in SWEEP_TAG_FIELDS if params.get(k) is None]
    if missing:
        raise ValueError(f"evaluate params: {missing} missing; "
                         f"{', '.join(SWEEP_TAG_FIELDS)} name the exported TREC runs")
    prefix = (params["model"], params["adapter"], checkpoint_name(params["step"]),
              params["sweep"])
    run_tag(*prefix, "ablation")

    def tag(ablation: str) -> str:
        return run_tag(*prefix, ablation)

    return tag


def write_run(path: str | os.PathLike[str], scores: Mapping[tuple[str, str], float],
              tag: str) -> Path:
    """Write one run file (:func:`run_lines`) atomically (:func:`lorascope.core.fileio.write_text`):
    the lines are made before anything is written, so on an error nothing is left at
    ``path``'s name. Returns the path written."""
    path = Path(path)
    write_text(path, "".join(run_lines(scores, tag)))
    return path


def write_runs(out_dir: str | os.PathLike[str],
               runs: Mapping[str, Mapping[tuple[str, str], float]],
               tag: Callable[[str], str]) -> dict[str, Path]:
    """Write ``<name>.run`` for every run (name -> ``{(qid, docid): score}``) into ``out_dir``,
    tagged ``tag(name)``. The folder is replaced as a whole
    (:func:`lorascope.core.fileio.atomic_dir`): on an error (a bad name or tag, a non-finite
    score) ``out_dir`` is left as it was. Returns ``{name: final path}``."""
    out_dir = Path(out_dir)
    for name in runs:
        _check_name(name)
    tags = {name: check_tag(tag(name)) for name in runs}
    with atomic_dir(out_dir) as tmp:
        for name, scores in runs.items():
            (tmp / f"{name}{RUN_SUFFIX}").write_text("".join(run_lines(scores, tags[name])))
    return {name: out_dir / f"{name}{RUN_SUFFIX}" for name in runs}


def _is_word(text: str) -> bool:
    """Non-empty and free of whitespace: one field of a run line."""
    return bool(text) and not any(c.isspace() for c in text)


def _check_name(name: str) -> None:
    """A run's name is a plain file name (no separator, not hidden, no whitespace)."""
    if not _is_word(name) or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"a run's name must be a plain file name, got {name!r}")

