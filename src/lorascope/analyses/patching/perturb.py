"""Axiomatic perturbations at the token level of the reranker's own encoding.

Activation patching copies activations between two runs position by position, so a baseline
and its perturbed input must have the same length and their positions must mean the same.
Following MechIR (Parry et al., ECIR 2025), every perturbation edits token ids of the pair as
:func:`lorascope.models.reranker.encode_pairs` encodes it (the ids are checked against it),
and pads the baseline with *filler* tokens where the perturbed input has new ones:

The query term: among the query's terms (:func:`lorascope.core.termstats.terms`: lower-cased
alphanumeric runs, stopwords dropped) that occur in at least one of the split's passages (df >=
1; a misspelled query word no passage contains, as DL19's "volunterilay", would otherwise win
with the largest IDF), the one with the highest IDF over **the split's unique passages** (not
the shipped collection; ties: the first in the query). A query none of whose terms occurs in
the split is skipped (its pairs counted under that reason).

* ``tfc1`` (add a query term): the term *as the query spells it* (its first whole-word
  occurrence in the query text, e.g. "Paris") is inserted at the start of the passage, as its
  tokens mid-text (no special tokens); the baseline has as many filler tokens at the same
  place.
* ``query_term_removal``: the baseline is the clean pair; in the perturbed input every whole-
  word, case-insensitive occurrence of the term in the passage *text* ("Paris", "PARIS",
  "(paris," - the alphanumeric runs of the lower-cased passage equal to the term, as the term
  statistics see them) is mapped by the fast tokenizer's character offsets to the tokens
  covering it, and exactly those tokens become as many filler tokens. Case-sensitive
  tokenizers (LLaMA, Mistral, GPT-NeoX byte-level BPE) give "Paris", " paris" and "(paris"
  different ids, so matching the term's token ids would miss them. A token covering the term
  and a neighbouring character (a BPE token "(p") is replaced whole. Pairs whose passage lacks
  the term are skipped, as are pairs whose occurrences all lie past ``max_length``.
* ``length_control`` (add a non-query term): as ``tfc1``, with the non-query term of the
  split's vocabulary whose token count is the query term's and whose IDF is the closest to it
  (ties: alphabetical) - ``tfc1`` and the control differ only in query-ness. The control is a
  word when the query term is one (all letters), and has a digit when the query term has one
  (on MiniLM / DL19 a plain rule paired "robert" with "0"); it is cased like the query's
  spelling (lower, Capitalised or UPPER) and its token count is that of the cased forms.

Filler: the ``filler`` word's mid-text tokens repeated and cut to the length needed (one token
for "the" in the real tokenizers: k copies). When an insertion pushes a pair past
``max_length``, passage tokens are dropped from its end (before BERT's final ``[SEP]``) in
both inputs alike.

Token groups (disjoint, per position): ``injected`` (the inserted / replaced span), then
``scoring`` (the token the head reads: BERT's ``[CLS]``, a decoder's last token), ``query``
(the query's tokens), ``passage`` (the rest of the passage), ``other`` (special tokens, the
decoders' ``query:`` / ``document:`` prompt words). A position is in one group only and
``injected`` comes first: when a decoder's last token is itself injected (the removed term
ends the passage) it counts as injected and that pair's ``scoring`` group is empty
(:attr:`PerturbationSet.scoring_injected` counts such pairs). ``changed``: the positions whose
id differs between baseline and perturbed input (within the span; equal when filler and
inserted tokens share no token at a position).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.core.roles import ArchitectureRoles
from lorascope.core.termstats import CollectionStats, terms

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Key = tuple[str, str]
PERTURBATIONS = ("tfc1", "query_term_removal", "length_control")
GROUPS = ("query", "passage", "injected", "scoring", "other")
#: The word a term follows when its mid-text tokens are taken (``ids("a term") - ids("a")``).
ANCHOR = "a"
_CHUNK = 512
#: A term as :func:`lorascope.core.termstats.terms` finds it in lower-cased text.
_WORD = re.compile(r"[a-z0-9]+")
#: Skip reasons of the queries without a term to perturb with.
NO_TERM = "query has no term"
ABSENT_TERMS = "no query term occurs in the split's passages"


@dataclass(frozen=True)
class EncodedPair:
    """One clean pair: ids (as :func:`encode_pairs` gives them, no padding), BERT's token types,
    a label per position (``query``, ``passage``, ``other``), the passage's character span of
    each passage position, and the passage text."""

    ids: tuple[int, ...]
    types: tuple[int, ...] | None
    labels: tuple[str, ...]
    spans: tuple[tuple[int, int] | None, ...]
    passage: str


@dataclass(frozen=True)
class TermChoice:
    """A query's chosen term (lower-cased, as the term statistics count it), its spelling in
    the query and the spelling's mid-text ids (what ``tfc1`` inserts), and its length control
    (the vocabulary term, its cased spelling and ids). ``term`` ``None``: no term qualifies
    (``reason`` says why); ``control`` ``None``: no control of the same token count."""

    qid: str
    term: str | None
    idf: float | None
    ids: tuple[int, ...] = ()
    control: str | None = None
    control_idf: float | None = None
    control_ids: tuple[int, ...] = ()
    spelling: str | None = None
    control_spelling: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"term": self.term, "spelling": self.spelling, "idf": _round(self.idf),
               "tokens": len(self.ids), "control": self.control,
               "control_spelling": self.control_spelling,
               "control_idf": _round(self.control_idf)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class PerturbationSet:
    """One perturbation's aligned inputs: per kept pair its key, baseline and perturbed
    features (``input_ids`` and BERT's ``token_type_ids``, same length), the changed positions,
    the edited span and the token groups; ``skipped``: pairs left out, by reason."""

    name: str
    keys: list[Key] = field(default_factory=list)
    baseline: list[dict[str, list[int]]] = field(default_factory=list)
    perturbed: list[dict[str, list[int]]] = field(default_factory=list)
    changed: list[tuple[int, ...]] = field(default_factory=list)
    groups: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def scoring_injected(self) -> int:
        """Pairs whose scoring token is itself injected (a decoder's last token replaced):
        their ``scoring`` group is empty, the position counts as ``injected``."""
        return sum(1 for groups in self.groups if not groups["scoring"])

    def __len__(self) -> int:
        return len(self.keys)


# --------------------------------------------------------------------------- tokens


def load_tokenizer(base_dir: str | Path) -> tuple[PreTrainedTokenizerBase, ArchitectureRoles]:
    """The base model's tokenizer as :func:`lorascope.models.reranker.load_reranker` sets it up
    (its pad-token fix, right padding) and its architecture roles, without loading weights."""
    from transformers import AutoConfig, AutoTokenizer

    from lorascope.core.roles import roles_for
    from lorascope.models.reranker import fix_pad_token

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    fix_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer, roles_for(AutoConfig.from_pretrained(base_dir).model_type)


def _lowered(text: str) -> str:
    """``text`` lower-cased character by character, keeping its length (a character whose
    lower case is longer, as "İ", stays): character offsets stay valid."""
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def word_spans(text: str, term: str) -> list[tuple[int, int]]:
    """Character spans of the whole-word, case-insensitive occurrences of ``term`` (a
    :func:`~lorascope.core.termstats.terms` term) in ``text``: the alphanumeric runs of the
    lower-cased text equal to it, left to right."""
    return [m.span() for m in _WORD.finditer(_lowered(text)) if m.group() == term]


def _cased(word: str, like: str) -> str:
    """``word`` in the case pattern of ``like``: UPPER, Capitalised or as it is."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def mid_text_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    """Each word's tokens as it appears mid-text, after a space (no special tokens):
    ``ids("a word")`` minus the ids of ``"a"``."""
    anchor = tokenizer(ANCHOR, add_special_tokens=False)["input_ids"]
    out: list[list[int]] = []
    for start in range(0, len(words), _CHUNK):
        chunk = list(words[start : start + _CHUNK])
        encoded = tokenizer([f"{ANCHOR} {w}" for w in chunk], add_special_tokens=False)
        for word, ids in zip(chunk, encoded["input_ids"]):
            if ids[: len(anchor)] != anchor:
                raise ValueError(f"the tokenizer merges {word!r} with the word before it; "
                                 "its mid-text tokens are not defined")
            out.append(list(ids[len(anchor):]))
    return out


def filler_run(filler: Sequence[int], count: int) -> list[int]:
    """``count`` filler tokens: the filler's tokens repeated and cut to ``count``."""
    return [filler[i % len(filler)] for i in range(count)]


def encode_clean(
    tokenizer: PreTrainedTokenizerBase,
    arch: ArchitectureRoles,
    queries: Mapping[str, str],
    candidates: Sequence[tuple[str, str, str]],
    max_length: int,
) -> list[EncodedPair]:
    """Every candidate encoded as the reranker encodes it, with its positions labelled (from
    the fast tokenizer's offsets); the ids are checked against :func:`encode_pairs`."""
    from lorascope.models.reranker import encode_pairs, pair_text

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("patching needs a fast tokenizer (offset mappings label the positions)")
    out: list[EncodedPair] = []
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start : start + _CHUNK]
        qs = [queries[q] for q, _, _ in chunk]
        ps = [t for _, _, t in chunk]
        reference = encode_pairs(tokenizer, arch, qs, ps, max_length)
        mask = reference["attention_mask"].bool()
        if arch.decoder:
            pairs = _decoder_pairs(tokenizer, qs, ps, max_length, pair_text)
        else:
            pairs = _encoder_pairs(tokenizer, qs, ps, max_length)
        for row, pair in enumerate(pairs):
            expected = reference["input_ids"][row][mask[row]].tolist()
            if list(pair.ids) != expected:
                raise ValueError(f"pair {chunk[row][:2]}: the labelled encoding differs from "
                                 "encode_pairs'")
            out.append(pair)
    return out


def _encoder_pairs(tokenizer: Any, qs: Sequence[str], ps: Sequence[str], max_length: int
                   ) -> list[EncodedPair]:
    encoded = tokenizer(list(qs), list(ps), truncation="only_second", max_length=max_length,
                        return_offsets_mapping=True)
    out = []
    for row, passage in enumerate(ps):
        sequence = encoded.sequence_ids(row)
        labels = tuple("other" if s is None else ("query" if s == 0 else "passage")
                       for s in sequence)
        spans = tuple(tuple(o) if s == 1 else None
                      for s, o in zip(sequence, encoded["offset_mapping"][row]))
        out.append(EncodedPair(tuple(encoded["input_ids"][row]),
                               tuple(encoded["token_type_ids"][row]), labels, spans, passage))
    return out


def _decoder_pairs(tokenizer: Any, qs: Sequence[str], ps: Sequence[str], max_length: int,
                   pair_text: Any) -> list[EncodedPair]:
    template = pair_text("\x00", "\x01")
    q_at = template.index("\x00")
    gap = template.index("\x01") - q_at - 1  # characters between the query and the passage
    texts = [pair_text(q, p) for q, p in zip(qs, ps)]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for row, (q, passage) in enumerate(zip(qs, ps)):
        q_end = q_at + len(q)
        p_at = q_end + gap
        labels: list[str] = ["other"] * len(bos)
        spans: list[tuple[int, int] | None] = [None] * len(bos)
        for s, e in encoded["offset_mapping"][row]:
            if e > p_at:
                labels.append("passage")
                spans.append((max(s, p_at) - p_at, e - p_at))
            elif s < q_end and e > q_at:
                labels.append("query")
                spans.append(None)
            else:
                labels.append("other")
                spans.append(None)
        ids = (bos + list(encoded["input_ids"][row]))[:max_length]
        n = len(ids)
        out.append(EncodedPair(tuple(ids), None, tuple(labels[:n]), tuple(spans[:n]), passage))
    return out


# --------------------------------------------------------------------------- terms


def choose_terms(
    tokenizer: PreTrainedTokenizerBase,
    queries: Mapping[str, str],
    stats: CollectionStats,
) -> dict[str, TermChoice]:
    """Per query its highest-IDF term among those occurring in ``stats``' documents (df >= 1;
    ties: query order), spelled as in the query, and that term's length control: the
    vocabulary's non-query term of the same kind (all letters or not) whose spelling cased like
    the query's has the same number of mid-text tokens, with the closest IDF (ties:
    alphabetical). ``stats``: the split's passages (the stage's choice)."""
    vocabulary = sorted(stats.df)
    idf = {t: stats.idf(t) for t in vocabulary}
    lengths: dict[str, int] = {}
    out: dict[str, TermChoice] = {}
    for qid in sorted(queries):
        words = list(dict.fromkeys(terms(queries[qid])))
        present = [w for w in words if stats.df.get(w, 0) >= 1]
        if not present:
            out[qid] = TermChoice(qid, None, None, reason=ABSENT_TERMS if words else NO_TERM)
            continue
        best = max(present, key=lambda w: (stats.idf(w), -present.index(w)))
        spans = word_spans(queries[qid], best)
        spelling = queries[qid][spans[0][0] : spans[0][1]] if spans else best
        ids = tuple(mid_text_ids(tokenizer, [spelling])[0])
        target = stats.idf(best)
        kind = best.isalpha()
        others = sorted((t for t in vocabulary if t not in words and t.isalpha() == kind),
                        key=lambda t: (abs(idf[t] - target), t))
        control = None
        for start in range(0, len(others), 256):
            window = [_cased(t, spelling) for t in others[start : start + 256]]
            chunk = [t for t in dict.fromkeys(window) if t not in lengths]
            for word, tokens in zip(chunk, mid_text_ids(tokenizer, chunk)):
                lengths[word] = len(tokens)
            control = next((t for t, cased in zip(others[start : start + 256], window)
                            if lengths[cased] == len(ids)), None)
            if control is not None:
                break
        cased = None if control is None else _cased(control, spelling)
        out[qid] = TermChoice(
            qid, best, target, ids, control, None if control is None else idf[control],
            () if cased is None else tuple(mid_text_ids(tokenizer, [cased])[0]),
            spelling=spelling, control_spelling=cased)
    return out


# --------------------------------------------------------------------------- perturbations


def _groups(labels: Sequence[str], scoring: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = {g: [] for g in GROUPS}
    for position, label in enumerate(labels):
        group = "scoring" if position == scoring and label != "injected" else label
        out[group].append(position)
    return {g: tuple(p) for g, p in out.items()}


def _features(ids: Sequence[int], types: Sequence[int] | None) -> dict[str, list[int]]:
    out = {"input_ids": list(ids)}
    if types is not None:
        out["token_type_ids"] = list(types)
    return out


def _add(out: PerturbationSet, key: Key, base: Sequence[int], pert: Sequence[int],
         types: Sequence[int] | None, labels: Sequence[str], decoder: bool) -> None:
    out.keys.append(key)
    out.baseline.append(_features(base, types))
    out.perturbed.append(_features(pert, types))
    out.changed.append(tuple(i for i, (a, b) in enumerate(zip(base, pert)) if a != b))
    out.groups.append(_groups(labels, len(labels) - 1 if decoder else 0))


def _insert(out: PerturbationSet, key: Key, pair: EncodedPair, tokens: Sequence[int],
            filler: Sequence[int], max_length: int, decoder: bool) -> None:
    """``tokens`` inserted at the passage's first position; the baseline gets filler."""
    passage = [i for i, label in enumerate(pair.labels) if label == "passage"]
    if not passage:
        out.skip("no passage tokens")
        return
    at, k = passage[0], len(tokens)
    labels = [*pair.labels[:at], *["injected"] * k, *pair.labels[at:]]
    pert = [*pair.ids[:at], *tokens, *pair.ids[at:]]
    base = [*pair.ids[:at], *filler_run(filler, k), *pair.ids[at:]]
    types = None if pair.types is None else [*pair.types[:at], *[pair.types[at]] * k,
                                             *pair.types[at:]]
    excess = len(pert) - max_length
    if excess > 0:
        tail = [i for i, label in enumerate(labels) if label == "passage"]
        if len(tail) < excess:
            out.skip("no room for the insertion")
            return
        drop = set(tail[-excess:])
        keep = [i for i in range(len(pert)) if i not in drop]
        labels, pert, base = ([seq[i] for i in keep] for seq in (labels, pert, base))
        types = None if types is None else [types[i] for i in keep]
    _add(out, key, base, pert, types, labels, decoder)


def occurrences(pair: EncodedPair, term: str) -> tuple[list[tuple[int, int]], int]:
    """The passage positions to replace for ``term``: per whole-word, case-insensitive
    occurrence in the passage text (:func:`word_spans`) the tokens whose character span
    overlaps it (a ``range``-like ``(first, last + 1)``; overlapping runs merged), left to
    right; and the number of occurrences in the text (some may lie past ``max_length``)."""
    spans = word_spans(pair.passage, term)
    runs: list[tuple[int, int]] = []
    for begin, end in spans:
        covering = [i for i, (label, span) in enumerate(zip(pair.labels, pair.spans))
                    if label == "passage" and span is not None
                    and span[0] < end and span[1] > begin]
        if not covering:
            continue
        first, stop = covering[0], covering[-1] + 1
        if runs and first < runs[-1][1]:
            runs[-1] = (runs[-1][0], max(stop, runs[-1][1]))
        else:
            runs.append((first, stop))
    return runs, len(spans)


def _remove(out: PerturbationSet, key: Key, pair: EncodedPair, term: str,
            filler: Sequence[int], decoder: bool) -> None:
    runs, found = occurrences(pair, term)
    if not found:
        out.skip("passage lacks the query term")
        return
    if not runs:
        out.skip("query term only past max_length")
        return
    pert, labels = list(pair.ids), list(pair.labels)
    for first, stop in runs:
        pert[first:stop] = filler_run(filler, stop - first)
        labels[first:stop] = ["injected"] * (stop - first)
    _add(out, key, pair.ids, pert, pair.types, labels, decoder)


def build_perturbations(
    tokenizer: PreTrainedTokenizerBase,
    arch: ArchitectureRoles,
    queries: Mapping[str, str],
    candidates: Sequence[tuple[str, str, str]],
    stats: CollectionStats,
    *,
    names: Sequence[str] = PERTURBATIONS,
    filler: str = "the",
    max_length: int,
) -> tuple[dict[str, PerturbationSet], dict[str, TermChoice]]:
    """The perturbations ``names`` of every candidate (``(qid, docid, text)``), deterministic;
    the term choices per query."""
    unknown = sorted(set(names) - set(PERTURBATIONS))
    if unknown:
        raise ValueError(f"unknown perturbations {unknown}; known: {list(PERTURBATIONS)}")
    filler_ids = mid_text_ids(tokenizer, [filler])[0]
    if not filler_ids:
        raise ValueError(f"filler {filler!r} encodes to no tokens")
    asked = {q for q, _, _ in candidates}
    choices = choose_terms(tokenizer, {q: queries[q] for q in asked}, stats)
    clean = encode_clean(tokenizer, arch, queries, candidates, max_length)
    sets = {name: PerturbationSet(name) for name in names}
    for (qid, docid, _), pair in zip(candidates, clean):
        choice = choices[qid]
        for name, out in sets.items():
            if choice.term is None:
                out.skip(choice.reason or NO_TERM)
            elif name == "tfc1":
                _insert(out, (qid, docid), pair, choice.ids, filler_ids, max_length,
                        arch.decoder)
            elif name == "length_control":
                if choice.control is None:
                    out.skip("no control term of the same token count")
                else:
                    _insert(out, (qid, docid), pair, choice.control_ids, filler_ids,
                            max_length, arch.decoder)
            else:
                _remove(out, (qid, docid), pair, choice.term, filler_ids, arch.decoder)
    for out in sets.values():
        log.info("%s: %d pairs, skipped %s", out.name, len(out), out.skipped or "none")
    return sets, choices
