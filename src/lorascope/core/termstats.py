"""Classic IR term statistics: the analyser, document frequencies, IDF and BM25.

What the causal analyses need from lexical IR: which query terms a passage contains and how
often, how rare each term is (IDF over a collection), and a BM25 score. Everything here works
on *terms* (lower-cased alphanumeric runs, English stopwords dropped), never on a model's
word pieces, so the same statistics serve every architecture.

Definitions: Robertson/Sparck-Jones BM25 with the ``(k1 + 1)`` factor in the numerator and
Lucene's non-negative IDF, on unstemmed terms with Lucene's English stopword set dropped;
Anserini's MS MARCO defaults k1 = 0.9, b = 0.4:

* ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))`` over the ``N`` documents of the
  collection the statistics were built from (a term it never saw has ``df = 0``);
* ``bm25(q, d) = sum over query terms t (with multiplicity) of
  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))``, with ``|d|``
  and ``avgdl`` exact term counts.

How this differs from Lucene 8+ and Anserini (so the scores are not theirs, bit for bit):
they drop the ``(k1 + 1)`` factor (a constant factor, 1.9 here: no effect on rankings or on
a probe's R²); their default analyser stems with Porter (here "runs" and "run" are two
terms); and Lucene stores each document's length quantised to one byte (``SmallFloat``), so
their ``|d|`` is approximate where this one is exact.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_TERM = re.compile(r"[a-z0-9]+")

#: Lucene's English stopword set (what Anserini's default analyser drops).
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
#: Anserini's BM25 defaults for MS MARCO passage.
K1 = 0.9
B = 0.4


def terms(text: str) -> list[str]:
    """The terms of ``text``: lower-cased alphanumeric runs, stopwords dropped, in order."""
    return [t for t in _TERM.findall(text.lower()) if t not in STOPWORDS]


@dataclass(frozen=True)
class CollectionStats:
    """Document frequencies of a collection.

    Attributes:
        documents: ``N``, the documents counted.
        avgdl: their mean length in terms.
        df: per term, the documents that contain it.
    """

    documents: int
    avgdl: float
    df: dict[str, int]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CollectionStats:
        """The statistics of ``texts`` (each one document; pass each document once)."""
        df: Counter[str] = Counter()
        n = 0
        length = 0
        for text in texts:
            words = terms(text)
            n += 1
            length += len(words)
            df.update(set(words))
        if n == 0:
            raise ValueError("collection statistics need at least one document")
        return cls(documents=n, avgdl=length / n, df=dict(df))

    def idf(self, term: str) -> float:
        """Lucene's BM25 IDF of ``term`` (a term of no document gets the largest value)."""
        df = self.df.get(term, 0)
        return math.log(1 + (self.documents - df + 0.5) / (df + 0.5))

    def bm25(self, query_terms: Sequence[str], doc_terms: Sequence[str], *,
             k1: float = K1, b: float = B) -> float:
        """BM25 of a passage's terms for a query's terms (repeated query terms count again)."""
        tf = Counter(doc_terms)
        norm = k1 * (1 - b + b * len(doc_terms) / self.avgdl) if self.avgdl > 0 else k1
        score = 0.0
        for term in query_terms:
            f = tf.get(term, 0)
            if f:
                score += self.idf(term) * f * (k1 + 1) / (f + norm)
        return score
