"""First-stage rankings held in bounded memory: :class:`IdCodec` and :class:`TopScored`, a
per-query top-``depth`` of a ranking streamed from anywhere (ir_datasets scoreddocs, a TREC
run file), kept as 32-bit id codes."""

from __future__ import annotations

from array import array
from collections.abc import Iterable

_INT_CODE_LIMIT = 2**31  # numeric ids below this are stored as themselves (array 'i')


class IdCodec:
    """Maps string ids to 32-bit ints: canonical decimal ids as themselves, others interned."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._names: list[str] = []

    def encode(self, doc_id: str) -> int:
        if doc_id.isascii() and doc_id.isdigit() and (doc_id == "0" or doc_id[0] != "0"):
            value = int(doc_id)
            if value < _INT_CODE_LIMIT:
                return value
        code = self._codes.get(doc_id)
        if code is None:
            code = -(len(self._names) + 1)
            if -code > _INT_CODE_LIMIT:
                raise OverflowError("too many non-numeric document ids")
            self._codes[doc_id] = code
            self._names.append(doc_id)
        return code

    def decode(self, code: int) -> str:
        return str(code) if code >= 0 else self._names[-code - 1]


class TopScored:
    """Per-query top-``depth`` scoreddocs by score (descending, ties in stream order).

    Bounded memory: a query's list is cut back to ``depth`` whenever it reaches ``2 * depth``,
    and once ``depth`` entries are held, any entry scoring no higher than the lowest held one
    is skipped (with ties broken by stream order it could only rank below them). For a run
    file already in rank order (or all scores equal, as the MS MARCO BM25 lists) exactly
    ``depth`` entries are ever held.
    """

    def __init__(self, qids: Iterable[str], depth: int, codec: IdCodec) -> None:
        self.depth = depth
        self.codec = codec
        self.ids: dict[str, array] = {q: array("i") for q in qids}
        self.scores: dict[str, array] = {q: array("d") for q in self.ids}
        self.floor: dict[str, float] = {}

    def add(self, qid: str, doc_id: str, score: float) -> None:
        ids = self.ids.get(qid)
        if ids is None:
            return
        floor = self.floor.get(qid)
        if floor is not None and score <= floor:
            return
        scores = self.scores[qid]
        ids.append(self.codec.encode(doc_id))
        scores.append(score)
        if len(ids) == self.depth and floor is None:
            self.floor[qid] = min(scores)
        elif len(ids) >= 2 * self.depth:
            self._trim(qid)

    def _order(self, qid: str) -> list[int]:
        scores = self.scores[qid]
        return sorted(range(len(scores)), key=lambda i: -scores[i])[: self.depth]

    def _trim(self, qid: str) -> None:
        keep = self._order(qid)
        ids, scores = self.ids[qid], self.scores[qid]
        self.ids[qid] = array("i", (ids[i] for i in keep))
        self.scores[qid] = array("d", (scores[i] for i in keep))
        self.floor[qid] = self.scores[qid][-1]

    def ranked(self, qid: str) -> list[tuple[int, float]]:
        """The query's kept (code, score) pairs, best first, duplicates removed."""
        ids, scores = self.ids[qid], self.scores[qid]
        seen: set[int] = set()
        out = []
        for i in self._order(qid):
            if ids[i] not in seen:
                seen.add(ids[i])
                out.append((ids[i], scores[i]))
        return out

    def pop(self, qid: str) -> list[tuple[int, float]]:
        ranked = self.ranked(qid)
        del self.ids[qid], self.scores[qid]
        self.floor.pop(qid, None)
        return ranked

