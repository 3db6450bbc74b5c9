"""The ``files`` data source: a reranking split from your own files.

* ``run`` -- the first stage, a TREC run file (``qid Q0 docid rank score tag``); candidates
  are each query's top ``depth`` by score (ties: the run's line order), read streaming into
  bounded per-query lists (:class:`~lorascope.data.ranking.TopScored`);
* ``topics`` -- query texts: TSV (``qid<TAB>text``) or JSONL (``{"qid"|"query_id"|"_id": ...,
  "text"|"query": ...}``, by the ``.jsonl``/``.json`` suffix);
* ``qrels`` -- TREC qrels (``qid iteration docid grade``, the grade an integer);
* passage texts -- ``collection``, a TSV (``docid<TAB>text``) or JSONL (``{"docid"|"doc_id"|
  "_id"|"id": ..., "text": ..., "title": ...}``) file read once, line by line, keeping only
  the texts of the chosen candidates; or ``docstore``, an ir_datasets id whose docstore has
  them (:mod:`lorascope.data.irds`).

The split's queries are the judged queries (in the qrels) that the run ranks; a sample of them
when ``queries`` is set. Every error names the file (and line) at fault: a malformed line, a
grade that is not an integer, a run query without a topic, a candidate the collection lacks.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from lorascope.core.trec import numbered_run, read_qrels, stream_run
from lorascope.data.ranking import IdCodec, TopScored

log = logging.getLogger(__name__)

QUERY_ID_KEYS = ("qid", "query_id", "_id")
QUERY_TEXT_KEYS = ("text", "query")
DOC_ID_KEYS = ("docid", "doc_id", "_id", "id")


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in {".jsonl", ".json"}


def _field(record: Mapping[str, Any], keys: tuple[str, ...], path: Path, number: int,
           what: str) -> str:
    for key in keys:
        if key in record:
            return str(record[key])
    raise ValueError(f"{path} line {number}: no {what} field (one of {', '.join(keys)})")


def _records(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON object or TSV fields)`` of a TSV or JSONL file, blank lines
    skipped; an unparsable line is an error naming the file and line."""
    jsonl = _is_jsonl(path)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if jsonl:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number}: not a JSON {what} ({err})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {number}: a {what} must be a JSON object")
                yield number, record
            else:
                fields = line.rstrip("\n").split("\t", 1)
                if len(fields) != 2:
                    raise ValueError(
                        f"{path} line {number}: a TSV {what} is 'id<TAB>text' (no tab here)")
                yield number, fields


def read_topics(path: str | Path, keep: Collection[str] | None = None) -> dict[str, str]:
    """Query texts of a topics file (only the ids in ``keep``, when given)."""
    path = Path(path)
    topics: dict[str, str] = {}
    for number, record in _records(path, "topic"):
        if isinstance(record, dict):
            qid = _field(record, QUERY_ID_KEYS, path, number, "query id")
            text = _field(record, QUERY_TEXT_KEYS, path, number, "query text")
        else:
            qid, text = record
        if keep is None or qid in keep:
            topics[qid] = text
    return topics


def read_texts(path: str | Path, wanted: Collection[str]) -> dict[str, str]:
    """Texts of the passages ``wanted`` from a collection file, read once line by line (only
    the wanted texts are kept; a title, when given, is put before the text)."""
    path = Path(path)
    texts: dict[str, str] = {}
    for number, record in _records(path, "passage"):
        if isinstance(record, dict):
            docid = _field(record, DOC_ID_KEYS, path, number, "passage id")
            if docid not in wanted:
                continue
            text = _field(record, ("text",), path, number, "text")
            title = record.get("title")
            texts[docid] = f"{title} {text}" if isinstance(title, str) and title.strip() else text
        else:
            docid, text = record
            if docid in wanted:
                texts[docid] = text
    return texts


def query_ids(spec: Mapping[str, Any]) -> list[str]:
    """Every query a ``queries: N`` sample draws from: judged in the qrels and ranked by the
    run, sorted."""
    judged = {q for q, _, _ in read_qrels(spec["qrels"])}
    return sorted({q for q, _, _ in stream_run(spec["run"]) if q in judged})


def rerank_split(
    spec: Mapping[str, Any], *, depth: int, qids: Collection[str] | None
) -> tuple[Iterator[dict], Iterator[dict], Iterator[dict]]:
    """Rows of a reranking split for :func:`lorascope.data.common.write_split` (queries,
    candidates, qrels), as :func:`lorascope.data.irds.rerank_split` gives them."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    all_qrels = read_qrels(spec["qrels"])  # the qrels and the run are each read once here
    judged = sorted({q for q, _, _ in all_qrels})
    chosen = sorted(qids) if qids is not None else judged
    top = ranked_top(spec["run"], chosen, depth)
    order = [q for q in chosen if top.ids[q]]
    if not order:
        ranked = sorted({q for q, _, _ in itertools.islice(stream_run(spec["run"]), 1000)})
        raise ValueError(
            f"{spec['run']}: ranks no query judged in {spec['qrels']} (their query ids share "
            f"none: the run has e.g. {', '.join(ranked[:3]) or 'no lines'}, the qrels "
            f"{', '.join(judged[:3]) or 'no lines'})")
    unranked = [q for q in chosen if not top.ids[q]]
    if unranked:  # as the README says, and as for ir_datasets + run
        log.warning("%s: %d judged queries are not in the run; left out (e.g. %s)",
                    spec["run"], len(unranked), unranked[:5])
    wanted = set(chosen)
    qrels = [r for r in all_qrels if r[0] in wanted]
    topics = read_topics(spec["topics"], keep=wanted)
    missing = [q for q in order if q not in topics]
    if missing:
        raise ValueError(
            f"{spec['topics']}: no topic for {len(missing)} of the {len(order)} queries the run "
            f"{spec['run']} ranks (e.g. {', '.join(missing[:5])})"
        )
    hits = {q: [(top.codec.decode(code), score) for code, score in top.pop(q)] for q in order}
    needed = {d for ranked in hits.values() for d, _ in ranked}
    texts = passage_texts(spec, needed)
    check_texts(spec["run"], needed, texts,
                spec.get("collection") or f"the ir_datasets docstore of {spec.get('docstore')!r}")
    log.info("%s: %d queries, %d qrels, candidates to depth %d", spec["run"], len(order),
             len(qrels), depth)
    kept = set(order)
    query_rows = ({"qid": q, "query": topics[q]} for q in order)
    candidate_rows = (
        {"qid": q, "docid": d, "rank": rank, "first_stage_score": score, "text": texts[d]}
        for q in order for rank, (d, score) in enumerate(hits[q], start=1)
    )
    qrel_rows = ({"qid": q, "docid": d, "relevance": r} for q, d, r in qrels if q in kept)
    return query_rows, candidate_rows, qrel_rows


def ranked_top(run: str | Path, qids: Collection[str], depth: int) -> TopScored:
    """Each of ``qids``' top ``depth`` documents of a TREC run file (streamed). A document
    ranked twice for one of ``qids`` is an error naming the line (trec_eval refuses such
    runs; keeping either score would be a guess)."""
    top = TopScored(qids, depth, IdCodec())
    seen: dict[str, set[str]] = {q: set() for q in qids}
    for number, qid, docid, score in numbered_run(run):
        docs = seen.get(qid)
        if docs is None:
            continue
        if docid in docs:
            raise ValueError(f"{run} line {number}: document {docid!r} is ranked twice for "
                             f"query {qid!r}")
        docs.add(docid)
        top.add(qid, docid, score)
    return top


def check_texts(run: str | Path, needed: Collection[str], texts: Mapping[str, str],
                where: str) -> None:
    """Every passage a run ranks (``needed``) has its text in ``texts`` (read from
    ``where``); else a ``ValueError`` naming the run file and examples."""
    unknown = sorted(set(needed) - texts.keys())
    if unknown:
        raise ValueError(f"{run}: {len(unknown)} ranked passages are not in {where} "
                         f"(e.g. {', '.join(unknown[:5])})")


def passage_texts(spec: Mapping[str, Any], needed: Collection[str]) -> dict[str, str]:
    """Texts of the ``needed`` passages: from ``collection`` or an ir_datasets ``docstore``."""
    if spec.get("collection"):
        return read_texts(spec["collection"], needed)
    from lorascope.data import irds

    return irds.docstore_texts(spec["docstore"], needed)
