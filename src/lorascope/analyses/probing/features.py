"""The IR features a probe predicts, per (query, passage) pair, from
:mod:`lorascope.core.termstats` (terms, IDF, BM25 with k1 = 0.9, b = 0.4).

* ``bm25``: the pair's BM25 score;
* ``tf``: query-term frequency, the sum over the query's terms of their count in the passage;
* ``coverage``: the IDF-weighted share of the query's terms the passage contains,
  ``sum(idf(t) for t in q if t in d) / sum(idf(t) for t in q)`` (0 for a query with no terms);
* ``length``: the passage's length in terms.

A query's terms are taken *with* multiplicity everywhere (as BM25 counts them): a repeated
term adds its tf, and its IDF to both sums of the coverage, again.

The passage side is the text the model *sees* (:func:`seen_passages`): scoring cuts each pair
at ``max_length`` tokens, and a feature of words the model never read cannot be read from its
states. The seen text is the passage up to the end of its last kept token (from the fast
tokenizer's offsets, with the very encoding scoring uses), less a word the cut splits (its
first word pieces are no term). The collection statistics (IDF, avgdl) stay those of whole
passages: they describe the collection, not the pair.

The collection statistics (document frequencies, N, avgdl) come from ``shipped``: every
passage of the embedded TREC DL candidate lists (``resources/trec-dl/*.candidates.parquet``,
each docid counted once, whatever split is probed), or ``split``: the split's own unique
passages - all of them, not only the probed subset's, so the statistics do not change with
``queries`` / ``depth`` (for a bring-your-own collection the shipped passages do not describe).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lorascope.core.termstats import K1, B, CollectionStats, terms

if TYPE_CHECKING:
    import numpy as np

    from lorascope.core.roles import ArchitectureRoles

FEATURES = ("bm25", "tf", "coverage", "length")
_TERM_CHAR = re.compile(r"[a-z0-9]")
IDF_SOURCES = ("shipped", "split")


def unique_passages(rows: Iterable[tuple[str, str]]) -> list[str]:
    """The texts of ``(docid, text)`` rows, each docid once (its first text)."""
    seen: dict[str, str] = {}
    for docid, text in rows:
        seen.setdefault(docid, text)
    return list(seen.values())


def shipped_passages() -> list[str]:
    """Every passage of the embedded TREC DL candidate lists, each docid once (collections
    in name order, rows in file order)."""
    from lorascope.data.embedded import SOURCE_FILES, load

    rows: list[tuple[str, str]] = []
    for name in sorted(SOURCE_FILES):
        table = load(name, "candidates")
        rows += zip(table.column("docid").to_pylist(), table.column("text").to_pylist())
    return unique_passages(rows)


def collection_stats(source: str, candidates: Sequence[tuple[str, str, str]]) -> CollectionStats:
    """The statistics of ``source`` (``shipped`` or ``split``: ``candidates``' passages)."""
    if source == "shipped":
        return CollectionStats.from_texts(shipped_passages())
    if source == "split":
        return CollectionStats.from_texts(unique_passages((d, t) for _, d, t in candidates))
    raise ValueError(f"probing params: 'idf' must be one of {', '.join(IDF_SOURCES)}, "
                     f"got {source!r}")


def pair_features(query_terms: Sequence[str], doc_terms: Sequence[str],
                  stats: CollectionStats) -> dict[str, float]:
    """The :data:`FEATURES` of one pair, from its query's and passage's terms."""
    counts = Counter(doc_terms)
    tf = sum(counts[t] for t in query_terms)
    weights = [stats.idf(t) for t in query_terms]
    total = sum(weights)
    covered = sum(w for t, w in zip(query_terms, weights) if counts[t])
    return {
        "bm25": stats.bm25(query_terms, doc_terms, k1=K1, b=B),
        "tf": float(tf),
        "coverage": covered / total if total > 0 else 0.0,
        "length": float(len(doc_terms)),
    }


def feature_matrix(queries: Mapping[str, str], pairs: Sequence[tuple[str, str, str]],
                   stats: CollectionStats, passages: Sequence[str] | None = None
                   ) -> np.ndarray:
    """``(pairs, len(FEATURES))`` float64: the features of ``(qid, docid, text)`` pairs, of
    ``passages[i]`` instead of pair i's text when given (the seen part, :func:`seen_passages`)."""
    import numpy as np

    if passages is not None and len(passages) != len(pairs):
        raise ValueError(f"{len(passages)} passages for {len(pairs)} pairs")
    texts = [t for _, _, t in pairs] if passages is None else passages
    query_terms = {qid: terms(text) for qid, text in queries.items()}
    out = np.empty((len(pairs), len(FEATURES)), dtype=np.float64)
    for i, ((qid, _, _), text) in enumerate(zip(pairs, texts)):
        values = pair_features(query_terms[qid], terms(text), stats)
        out[i] = [values[name] for name in FEATURES]
    return out


def _cut_word_back(passage: str, cut: int) -> int:
    """``cut`` moved back to the start of the term it splits (unchanged between terms)."""
    def inside(i: int) -> bool:
        return bool(_TERM_CHAR.fullmatch(passage[i].lower()))

    if 0 < cut < len(passage) and inside(cut - 1) and inside(cut):
        while cut > 0 and inside(cut - 1):
            cut -= 1
    return cut


def seen_passages(tokenizer: Any, arch: ArchitectureRoles, queries: Mapping[str, str],
                  pairs: Sequence[tuple[str, str, str]], max_length: int
                  ) -> tuple[list[str], int]:
    """Per ``(qid, docid, text)`` pair, the part of the passage the model sees when the pair is
    encoded as scoring encodes it (:func:`lorascope.models.reranker.encode_pairs`, cut at
    ``max_length`` tokens), and how many passages were cut. Needs a fast tokenizer (offsets).

    Decoders: ``"query: {q} document: {p}"`` without special tokens, BOS (if any) prepended,
    the first ``max_length`` tokens kept; BERT: the text pair with ``truncation="only_second"``.
    """
    from lorascope.models.reranker import pair_text

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("probing: the features of the seen passage need a fast tokenizer "
                         f"(offsets); {type(tokenizer).__name__} is not one")
    out: list[str] = []
    cut_count = 0
    for qid, _, passage in pairs:
        query = queries[qid]
        if arch.decoder:
            start = len(pair_text(query, ""))
            offsets = tokenizer(pair_text(query, passage), add_special_tokens=False,
                                return_offsets_mapping=True)["offset_mapping"]
            keep = max(0, max_length - (1 if tokenizer.bos_token_id is not None else 0))
            if len(offsets) <= keep:
                out.append(passage)
                continue
            end = max((e for _, e in offsets[:keep]), default=0) - start
        else:
            encoded = tokenizer(query, passage, truncation="only_second", max_length=max_length,
                                return_offsets_mapping=True)
            ends = [e for (_, e), sid in zip(encoded["offset_mapping"], encoded.sequence_ids())
                    if sid == 1]
            # a text pair's sequences are tokenised apart: the passage's own tokens, all kept?
            if len(ends) >= len(tokenizer(passage, add_special_tokens=False)["input_ids"]):
                out.append(passage)
                continue
            end = max(ends, default=0)
        cut_count += 1
        out.append(passage[:_cut_word_back(passage, max(0, end))])
    return out, cut_count
