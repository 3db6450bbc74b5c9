"""The ir_datasets-backed data source for full-scale studies (MS MARCO passage).

Three entry points, each yielding plain rows for :mod:`lorascope.data.common`:

* :func:`query_ids` -- the query ids of a dataset;
* :func:`train_groups` -- TRAIN_GROUPS rows (one positive plus hard negatives per judged
  positive), hard negatives taken from the dataset's own scoreddocs or from another dataset's
  docpairs (``docpairs:<id>``, e.g. ``msmarco-passage/train/triples-small``);
* :func:`rerank_split` -- queries, candidates (first-stage ranking with passage text) and qrels
  of a reranking split such as ``msmarco-passage/trec-dl-2019/judged``.

Memory: an MS MARCO training preparation covers ~500k queries and streams ~40M docpairs or
hundreds of millions of scoreddocs. Only per-query *capped* lists of document ids are kept,
stored as 32-bit integer codes in :class:`array.array` (MS MARCO ids are decimal numbers;
other ids are interned), never texts; texts are fetched from the docstore batch by batch while
rows are yielded.

There is no network on the machines this runs on: every file must be pre-placed under
``$IR_DATASETS_HOME``. A failed download is re-raised as a :class:`DatasetUnavailableError`
(a ``RuntimeError``) naming the dataset. ``ir_datasets`` is imported lazily, inside the
functions, because it reads ``IR_DATASETS_HOME`` at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from lorascope.data import common
from lorascope.data.ranking import IdCodec, TopScored

log = logging.getLogger(__name__)

#: Queries whose passages are fetched from the docstore in one ``get_many`` call.
BATCH_QUERIES = 512

DOCPAIRS_PREFIX = "docpairs:"
SCOREDDOCS = "scoreddocs"



class DatasetUnavailableError(RuntimeError):
    """ir_datasets could not provide a dataset's files (no network, nothing pre-placed)."""


# --------------------------------------------------------------------------- loading


def _home() -> str:
    return os.environ.get("IR_DATASETS_HOME", os.path.expanduser("~/.ir_datasets"))


@contextlib.contextmanager
def _loading(dataset: str, what: str) -> Iterator[None]:
    """Turn ir_datasets' download failures into one clear error naming the dataset.

    Offline, ir_datasets raises ``RuntimeError('All download sources failed', ...)`` (several
    mirrors), a ``requests`` connection error (an ``OSError``) or ``FileNotFoundError`` (a
    file that can only be placed by hand).
    """
    try:
        yield
    except DatasetUnavailableError:
        raise
    except (OSError, RuntimeError) as err:
        cause = repr(err)
        if len(cause) > 400:
            cause = cause[:400] + "..."
        raise DatasetUnavailableError(
            f"ir_datasets could not load {what} of dataset {dataset!r} (a download failed; "
            f"there is no network access here). Its files must be pre-placed under "
            f"$IR_DATASETS_HOME (now {_home()!r}); see RECIPE.md. Cause: {cause}"
        ) from err


def _load(dataset: str) -> Any:
    """``ir_datasets.load`` with an unknown id reported as a ``ValueError``."""
    import ir_datasets  # lazy: reads IR_DATASETS_HOME at import time

    try:
        return ir_datasets.load(dataset)
    except KeyError as err:
        raise ValueError(f"unknown ir_datasets dataset id {dataset!r}") from err


def _require(ds: Any, dataset: str, entity: str, purpose: str) -> None:
    if not getattr(ds, f"has_{entity}")():
        raise ValueError(f"ir_datasets dataset {dataset!r} has no {entity}, needed {purpose}")


def _doc_text(doc: Any) -> str:
    """A passage's text: ``text`` (or the default text), prefixed by a non-empty title."""
    text = getattr(doc, "text", None)
    if text is None:
        text = doc.default_text()
    title = getattr(doc, "title", None)
    if isinstance(title, str) and title.strip():
        return f"{title} {text}"
    return text


def _fetch_texts(store: Any, dataset: str, doc_ids: Iterable[str]) -> dict[str, str]:
    """Texts of ``doc_ids`` (those the docstore has) in one ``get_many`` call."""
    wanted = sorted(set(doc_ids))
    with _loading(dataset, "the documents"):
        docs = store.get_many(wanted)
    return {doc_id: _doc_text(doc) for doc_id, doc in docs.items()}


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stream_top_scored(
    ds: Any, dataset: str, qids: Collection[str], depth: int, codec: IdCodec
) -> TopScored:
    top = TopScored(qids, depth, codec)
    with _loading(dataset, "the scoreddocs"):
        stream = ds.scoreddocs_iter()
        for sd in tqdm(stream, desc=f"{dataset} scoreddocs", unit="doc", disable=None):
            top.add(sd.query_id, sd.doc_id, float(sd.score))
    return top


def _stream_queries(ds: Any, dataset: str, keep: Collection[str] | None) -> dict[str, str]:
    """Query texts of the dataset (only of the ids in ``keep``, when given)."""
    queries: dict[str, str] = {}
    with _loading(dataset, "the queries"):
        for q in tqdm(ds.queries_iter(), desc=f"{dataset} queries", unit="query", disable=None):
            if keep is None or q.query_id in keep:
                queries[q.query_id] = q.default_text()
    return queries


# --------------------------------------------------------------------------- public API


def query_ids(dataset: str) -> list[str]:
    """All query ids of the ir_datasets dataset ``dataset``, in the dataset's order."""
    ds = _load(dataset)
    _require(ds, dataset, "queries", "to list its query ids")
    with _loading(dataset, "the queries"):
        return [str(q.query_id) for q in ds.queries_iter()]


def train_groups(
    dataset: str,
    *,
    group_size: int,
    min_relevance: int,
    negatives: str,
    negatives_depth: int,
    max_queries: int | None,
    exclude_qids: frozenset[str],
    seed: int,
) -> Iterator[dict]:
    """TRAIN_GROUPS rows of ``dataset``: one per judged positive, built by ``make_groups``.

    Positives are the qrels with ``relevance >= min_relevance``. The queries are those of the
    dataset with at least one positive, minus ``exclude_qids``; with ``max_queries`` set,
    :func:`common.select_queries` picks them deterministically. Hard negatives
    (``negatives``):

    * ``"scoreddocs"`` -- the dataset's scoreddocs of rank ``<= negatives_depth`` (ranked by
      score, ties in file order), passages judged > 0 removed;
    * ``"docpairs:<id>"`` -- the ``doc_id_b`` of that dataset's docpairs for the query,
      deduplicated, passages judged > 0 removed, at most ``negatives_depth`` per query.

    A query left without negatives yields no row. The dataset is checked at once (``ValueError``
    for a missing qrels/scoreddocs/docpairs handler); the files are streamed when the returned
    iterator is consumed. Passage texts come from the docstore, ``BATCH_QUERIES`` queries at a
    time.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    if negatives_depth < 1:
        raise ValueError(f"negatives_depth must be at least 1, got {negatives_depth}")
    ds = _load(dataset)
    for entity in ("qrels", "queries", "docs"):
        _require(ds, dataset, entity, "to build training groups")
    if negatives == SCOREDDOCS:
        neg_dataset, neg_ds = dataset, ds
        _require(ds, dataset, "scoreddocs", "for negatives='scoreddocs'")
    elif negatives.startswith(DOCPAIRS_PREFIX) and len(negatives) > len(DOCPAIRS_PREFIX):
        neg_dataset = negatives[len(DOCPAIRS_PREFIX) :]
        neg_ds = _load(neg_dataset)
        _require(neg_ds, neg_dataset, "docpairs", f"for negatives={negatives!r}")
    else:
        raise ValueError(
            f"negatives must be 'scoreddocs' or 'docpairs:<ir_datasets id>', got {negatives!r}"
        )
    return _train_groups(
        ds,
        dataset,
        neg_ds,
        neg_dataset,
        use_docpairs=negatives != SCOREDDOCS,
        group_size=group_size,
        min_relevance=min_relevance,
        negatives_depth=negatives_depth,
        max_queries=max_queries,
        exclude_qids=frozenset(exclude_qids),
        seed=seed,
    )


def _train_groups(
    ds: Any,
    dataset: str,
    neg_ds: Any,
    neg_dataset: str,
    *,
    use_docpairs: bool,
    group_size: int,
    min_relevance: int,
    negatives_depth: int,
    max_queries: int | None,
    exclude_qids: frozenset[str],
    seed: int,
) -> Iterator[dict]:
    # 1. Positives (doc ids only; MS MARCO train: ~530k qrels).
    # Docs judged above 0 are never negatives (grades between 1 and min_relevance - 1 are
    # neither positive nor negative), as for the embedded source.
    positives: dict[str, list[str]] = {}
    judged_relevant: dict[str, set[str]] = {}
    with _loading(dataset, "the qrels"):
        for qrel in tqdm(ds.qrels_iter(), desc=f"{dataset} qrels", unit="qrel", disable=None):
            if qrel.relevance > 0 and qrel.query_id not in exclude_qids:
                judged_relevant.setdefault(qrel.query_id, set()).add(qrel.doc_id)
            if qrel.relevance >= min_relevance and qrel.query_id not in exclude_qids:
                docs = positives.setdefault(qrel.query_id, [])
                if qrel.doc_id not in docs:
                    docs.append(qrel.doc_id)

    # 2. Queries: those of the dataset with a positive, minus the excluded, then selected.
    queries = _stream_queries(ds, dataset, keep=positives)
    n_candidates = len(queries)
    selected = common.select_queries(queries, max_queries, seed)
    chosen = set(selected)
    positives = {q: docs for q, docs in positives.items() if q in chosen}
    queries = {q: text for q, text in queries.items() if q in chosen}
    log.info(
        "%s: %d queries with a positive (relevance >= %d, %d ids excluded); using %d",
        dataset,
        n_candidates,
        min_relevance,
        len(exclude_qids),
        len(selected),
    )

    # 3. Negatives as capped per-query arrays of integer doc-id codes.
    codec = IdCodec()
    if use_docpairs:
        negs = _stream_docpair_negatives(
            neg_ds, neg_dataset, positives, judged_relevant, negatives_depth, codec
        )
    else:
        top = _stream_top_scored(ds, dataset, chosen, negatives_depth, codec)
        negs = {}
        for qid in selected:
            judged = judged_relevant.get(qid, set())
            negs[qid] = array("i", (c for c, _ in top.pop(qid) if codec.decode(c) not in judged))
        del top

    # 4. Rows, batch by batch, texts from the docstore.
    store = ds.docs_store()
    stats = {"groups": 0, "no_negatives": 0, "missing_docs": 0}
    batches = _batches(selected, BATCH_QUERIES)
    total = -(-len(selected) // BATCH_QUERIES)
    for batch in tqdm(batches, total=total, desc=f"{dataset} groups", unit="batch", disable=None):
        neg_ids = {q: [codec.decode(c) for c in negs.pop(q, ())] for q in batch}
        wanted = [d for q in batch for d in positives[q]] + [d for q in batch for d in neg_ids[q]]
        texts = _fetch_texts(store, dataset, wanted)
        stats["missing_docs"] += len(set(wanted) - texts.keys())
        for qid in batch:
            pos = [(d, texts[d]) for d in positives[qid] if d in texts]
            neg = [(d, texts[d]) for d in neg_ids[qid] if d in texts]
            if not neg:
                stats["no_negatives"] += 1
            for row in common.make_groups(qid, queries[qid], pos, neg, group_size, seed):
                stats["groups"] += 1
                yield row
    if stats["missing_docs"]:
        log.warning(
            "%s: %d document ids not in the docstore were skipped", dataset, stats["missing_docs"]
        )
    log.info(
        "%s: %d training groups; %d queries without negatives gave none",
        dataset,
        stats["groups"],
        stats["no_negatives"],
    )


def _stream_docpair_negatives(
    neg_ds: Any,
    neg_dataset: str,
    positives: Mapping[str, list[str]],
    judged_relevant: Mapping[str, set[str]],
    depth: int,
    codec: IdCodec,
) -> dict[str, array]:
    """``doc_id_b`` of the docpairs per query: deduplicated, judged-relevant removed, capped."""
    negs: dict[str, array] = {q: array("i") for q in positives}
    open_queries = len(negs)
    with _loading(neg_dataset, "the docpairs"):
        pairs = tqdm(
            neg_ds.docpairs_iter(), desc=f"{neg_dataset} docpairs", unit="pair", disable=None
        )
        for pair in pairs:
            arr = negs.get(pair.query_id)
            if arr is None or len(arr) >= depth:
                continue
            doc_id = pair.doc_id_b
            if doc_id in judged_relevant.get(pair.query_id, ()):
                continue
            code = codec.encode(doc_id)
            if code in arr:
                continue
            arr.append(code)
            if len(arr) >= depth:
                open_queries -= 1
                if open_queries == 0:  # every query is full: the rest cannot add anything
                    break
    return negs


def docstore_texts(dataset: str, doc_ids: Collection[str]) -> dict[str, str]:
    """Texts of ``doc_ids`` from the docstore of ``dataset`` (those it has), batch by batch."""
    ds = _load(dataset)
    _require(ds, dataset, "docs", "for passage texts")
    return _store_texts(ds.docs_store(), dataset, doc_ids)


def _store_texts(store: Any, dataset: str, doc_ids: Collection[str]) -> dict[str, str]:
    """:func:`_fetch_texts` of any number of ids, ``BATCH_QUERIES * 100`` per call."""
    texts: dict[str, str] = {}
    for batch in _batches(sorted(doc_ids), BATCH_QUERIES * 100):
        texts.update(_fetch_texts(store, dataset, batch))
    return texts


def rerank_split(
    dataset: str, *, depth: int, qids: Collection[str] | None, run: str | None = None
) -> tuple[Iterator[dict], Iterator[dict], Iterator[dict]]:
    """Rows of a reranking split for :func:`common.write_split`: (queries, candidates, qrels).

    * queries: ``qid, query``;
    * candidates: ``qid, docid, rank, first_stage_score, text`` -- the dataset's scoreddocs per
      query ordered by score, descending (a stable sort, so a file whose scores are all equal,
      like the official TREC DL BM25 lists, keeps its order), ``rank`` the 1-based position,
      ``rank <= depth`` kept; a document missing from the docstore is skipped (its rank is not
      reused);
    * qrels: ``qid, docid, relevance``.

    ``qids`` restricts the split to those queries; ``None`` means every query of the dataset
    that appears in the qrels. Queries, qrels and the ranking are read at once; the candidate
    texts are fetched from the docstore when the candidates iterator is consumed.

    ``run``: a TREC run file that is the first stage instead of the dataset's scoreddocs (for
    datasets without them, such as BEIR's); a passage it ranks that the docstore lacks is then
    an error naming the file, not a skipped candidate.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ds = _load(dataset)
    for entity in ("qrels", "queries", "docs") if run else ("qrels", "scoreddocs", "queries", "docs"):
        _require(ds, dataset, entity, "for a reranking split" + ("" if run else
                 " (or give the first stage as a run file: data.splits.<name>.run)"))
    if qids is not None:
        qids = frozenset(qids)

    qrels: list[tuple[str, str, int]] = []
    with _loading(dataset, "the qrels"):
        for qrel in tqdm(ds.qrels_iter(), desc=f"{dataset} qrels", unit="qrel", disable=None):
            if qids is None or qrel.query_id in qids:
                qrels.append((qrel.query_id, qrel.doc_id, int(qrel.relevance)))
    wanted = {q for q, _, _ in qrels} if qids is None else set(qids)
    queries = _stream_queries(ds, dataset, keep=wanted)
    if qids is not None and len(queries) < len(wanted):
        missing = sorted(wanted - queries.keys())
        log.warning(
            "%s: %d requested queries are not in the dataset (e.g. %s)",
            dataset,
            len(missing),
            missing[:5],
        )
    qrels = [r for r in qrels if r[0] in queries]
    order = list(queries)  # dataset order

    texts = None
    if run:  # the run's candidates' texts, fetched once (a missing one is an error)
        from lorascope.data.files import check_texts, ranked_top

        top = ranked_top(run, queries.keys(), depth)
        needed = {top.codec.decode(code) for qid in top.ids for code, _ in top.ranked(qid)}
        texts = _store_texts(ds.docs_store(), dataset, needed)
        check_texts(run, needed, texts, f"the documents of {dataset!r}")
    else:
        top = _stream_top_scored(ds, dataset, queries.keys(), depth, IdCodec())
    no_run = [q for q in order if not top.ids[q]]
    if no_run and run:  # as for source: files, the split's queries are those the run ranks
        log.warning("%s: %d judged queries are not in the run %s; left out (e.g. %s)", dataset,
                    len(no_run), run, no_run[:5])
        order = [q for q in order if top.ids[q]]
        qrels = [r for r in qrels if top.ids[r[0]]]
    elif no_run:
        log.warning("%s: %d queries have no scoreddocs (e.g. %s)", dataset, len(no_run), no_run[:5])
    log.info(
        "%s: %d queries, %d qrels, candidates to depth %d", dataset, len(order), len(qrels), depth
    )

    query_rows = ({"qid": q, "query": queries[q]} for q in order)
    qrel_rows = ({"qid": q, "docid": d, "relevance": r} for q, d, r in qrels)
    return query_rows, _candidates(ds, dataset, order, top, depth, texts), qrel_rows


def _candidates(
    ds: Any, dataset: str, order: Sequence[str], top: TopScored, depth: int,
    texts: Mapping[str, str] | None = None,
) -> Iterator[dict]:
    """Candidate rows, query batch by query batch; texts fetched per batch unless given."""
    store = ds.docs_store() if texts is None else None
    missing = 0
    total = -(-len(order) // BATCH_QUERIES)
    batches = _batches(order, BATCH_QUERIES)
    progress = tqdm(batches, total=total, desc=f"{dataset} candidates", unit="batch", disable=None)
    for batch in progress:
        hits = {
            qid: [
                {
                    "qid": qid,
                    "docid": top.codec.decode(code),
                    "rank": rank,
                    "first_stage_score": float(score),
                }
                for rank, (code, score) in enumerate(top.pop(qid), start=1)
            ]
            for qid in batch
        }
        found = texts if texts is not None else _fetch_texts(
            store, dataset, (h["docid"] for q in batch for h in hits[q]))
        for qid in batch:
            for hit in common.take_depth(hits[qid], depth):
                text = found.get(hit["docid"])
                if text is None:
                    missing += 1
                    continue
                yield {**hit, "text": text}
    if missing:
        log.warning("%s: %d candidates not in the docstore were skipped", dataset, missing)
