"""Fast batched scoring of (query, passage) candidates: tokenise once, length-sorted batches.

:class:`PreparedPairs` tokenises a split's candidates once (with the reranker's own encoding,
:func:`lorascope.models.reranker.encode_pairs`) and plans batches once; :meth:`~PreparedPairs.score`
then runs any model over them - the same pairs under every ablation of a sweep, so tokenisation
is paid once per job and every ablation sees identical batches (which is what lets the
reproduction check of evaluation be bitwise).

Batching: pairs are sorted by token length (longest first) and packed greedily so that a
batch's *padded* size ``pairs x longest`` stays within ``batch_tokens``. Neighbours in sorted
order have nearly equal lengths, so padding stays small (the padded/real token ratio is
reported as :attr:`PreparedPairs.padding_ratio`). Longest first means the biggest batch runs
first: an out-of-memory error shows up at once, not at the end.

Memory: the token budget is the control. On CUDA an out-of-memory error halves the budget,
re-plans the pairs not yet scored and carries on (the smaller budget is kept for later
calls); a single pair that does not fit re-raises. A CPU has no such signal (it swaps or the
process is killed), so there the configured budget is simply used.

Padding is always on the right, whatever the tokenizer's ``padding_side``: with right padding
a pair's positions and attended tokens do not depend on its batch neighbours (left padding
shifts the position ids of decoders that derive them from ``arange``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorascope.core.batches import plan_batches
from lorascope.core.roles import ArchitectureRoles

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Key = tuple[str, str]
TOKENIZE_CHUNK = 512


@dataclass(frozen=True)
class ScoringStats:
    """What one :meth:`PreparedPairs.score` call did.

    Attributes:
        pairs: pairs scored.
        batches: forward passes.
        real_tokens: tokens of the pairs themselves.
        padded_tokens: tokens fed to the model, padding included.
        seconds: wall time of the scoring loop.
        batch_tokens: token budget in force at the end (smaller after an OOM halving).
        replans: how many times an out-of-memory error halved the budget in this call.
    """

    pairs: int
    batches: int
    real_tokens: int
    padded_tokens: int
    seconds: float
    batch_tokens: int
    replans: int = 0

    @property
    def padding_ratio(self) -> float:
        """Padded tokens / real tokens (1.0 = no padding)."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_ratio": round(self.padding_ratio, 4),
            "seconds": round(self.seconds, 4),
            "pairs_per_second": round(self.pairs_per_second, 2),
            "batch_tokens": self.batch_tokens,
            "replans": self.replans,
        }


def _oom_errors() -> tuple[type[BaseException], ...]:
    import torch

    errors: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        error = getattr(owner, name, None)
        if isinstance(error, type) and error not in errors:
            errors.append(error)
    return tuple(errors)


class PreparedPairs:
    """A split's candidates tokenised once, ready to be scored by any compatible model.

    Build with :meth:`build`; call :meth:`score` once per ablation. Attributes:
    ``keys`` (``(qid, docid)`` per pair, input order), ``lengths`` (tokens per pair),
    ``batch_tokens`` (the current budget), ``last_stats`` (of the latest :meth:`score`).
    """

    def __init__(
        self,
        keys: Sequence[Key],
        features: Sequence[Mapping[str, Sequence[int]]],
        *,
        pad_token_id: int,
        batch_tokens: int,
        decoder: bool,
    ) -> None:
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys but {len(features)} encoded pairs")
        seen: set[Key] = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"candidate (qid, docid) = {key} appears twice")
            seen.add(key)
        empty = [k for k, f in zip(keys, features) if len(f["input_ids"]) == 0]
        if empty:
            raise ValueError(f"pair {empty[0]} encodes to no tokens")
        self.keys: tuple[Key, ...] = tuple(keys)
        self._features = [dict(f) for f in features]
        self.lengths: tuple[int, ...] = tuple(len(f["input_ids"]) for f in features)
        self.pad_token_id = pad_token_id
        self.decoder = decoder
        self.batch_tokens = int(batch_tokens)
        self.last_stats: ScoringStats | None = None
        self.plan_version = 0
        self._plan: list[list[int]] = []
        self._tensors: list[dict[str, torch.Tensor]] = []
        self._replan(self.batch_tokens)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        arch: ArchitectureRoles,
        queries: Mapping[str, str],
        candidates: Sequence[tuple[str, str, str]],
        *,
        max_length: int,
        batch_tokens: int,
        progress: bool = False,
    ) -> PreparedPairs:
        """Tokenise ``candidates`` (``(qid, docid, text)``) against ``queries`` once.

        The encoding is :func:`~lorascope.models.reranker.encode_pairs` (the one training
        uses), run in chunks and stripped of its padding.
        """
        from tqdm.auto import tqdm

        from lorascope.models.reranker import encode_pairs

        missing = sorted({qid for qid, _, _ in candidates if qid not in queries})
        if missing:
            raise ValueError(f"candidates of {len(missing)} queries without query text, "
                             f"e.g. {missing[:3]}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token (load it with load_reranker)")
        keys = [(qid, docid) for qid, docid, _ in candidates]
        features: list[dict[str, list[int]]] = []
        bar = tqdm(total=len(candidates), desc="tokenise", unit="pair", disable=not progress)
        for start in range(0, len(candidates), TOKENIZE_CHUNK):
            chunk = candidates[start : start + TOKENIZE_CHUNK]
            encoded = encode_pairs(
                tokenizer, arch, [queries[q] for q, _, _ in chunk], [t for _, _, t in chunk],
                max_length,
            )
            mask = encoded["attention_mask"].bool()
            names = [n for n in ("input_ids", "token_type_ids") if n in encoded]
            for row in range(mask.shape[0]):
                features.append({n: encoded[n][row][mask[row]].tolist() for n in names})
            bar.update(len(chunk))
        bar.close()
        prepared = cls(keys, features, pad_token_id=int(tokenizer.pad_token_id),
                       batch_tokens=batch_tokens, decoder=arch.decoder)
        log.info("tokenised %d pairs (%d tokens, max %d); %d batches of <= %d tokens, "
                 "padded/real %.3f", len(keys), prepared.real_tokens,
                 max(prepared.lengths, default=0), len(prepared._plan), batch_tokens,
                 prepared.padding_ratio)
        return prepared

    # ------------------------------------------------------------------ plan

    def _replan(self, batch_tokens: int) -> None:
        self.batch_tokens = batch_tokens
        self._plan = plan_batches(self.lengths, batch_tokens)
        self._tensors = [self._collate(batch) for batch in self._plan]
        self.plan_version += 1
        too_long = [b for b in self._plan if len(b) == 1 and self.lengths[b[0]] > batch_tokens]
        if too_long:
            log.warning("%d pairs are longer than the %d-token budget; each runs alone",
                        len(too_long), batch_tokens)

    def _collate(self, batch: Sequence[int]) -> dict[str, torch.Tensor]:
        """One right-padded batch (CPU tensors)."""
        import torch

        width = max(self.lengths[i] for i in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = None
        if "token_type_ids" in self._features[batch[0]]:
            types = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = self.lengths[i]
            ids[row, :n] = torch.tensor(self._features[i]["input_ids"])
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(self._features[i]["token_type_ids"])
        out = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            out["token_type_ids"] = types
        return out

    @property
    def batches(self) -> list[list[int]]:
        """The current plan: indices into :attr:`keys` per batch."""
        return [list(b) for b in self._plan]

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        """Tokens the current plan feeds to the model, padding included."""
        return sum(len(b) * max(self.lengths[i] for i in b) for b in self._plan)

    @property
    def padding_ratio(self) -> float:
        """Padded / real tokens of the current plan."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    def __len__(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        progress: bool = True,
        desc: str = "score",
        batches: Sequence[Sequence[int]] | None = None,
        first_batches: int | None = None,
    ) -> dict[Key, float]:
        """Score every pair with ``model`` (in eval mode, under ``torch.inference_mode``).

        Args:
            model: a sequence classifier with one output (a PeftModel or a plain model) whose
                ``config.pad_token_id`` is the tokenizer's pad token.
            device: where the model lives; batches are moved there.
            progress: show a tqdm bar.
            desc: the bar's label.
            batches: an explicit batch plan (indices into :attr:`keys`) instead of the
                length-sorted one - used by the benchmarks to compare batchers; no OOM
                re-planning then.
            first_batches: score only the first ``n`` batches of the current plan (the same
                tensors as a full pass, so their scores are bitwise those of a full pass);
                the result then holds only their pairs. Not combinable with ``batches``.

        Returns:
            ``{(qid, docid): score}`` in input order (of the pairs scored).
        """
        import torch
        from tqdm.auto import tqdm

        from lorascope.models.reranker import score_logits

        self._check_model(model)
        was_training = model.training
        model.eval()
        scores: list[float | None] = [None] * len(self.keys)
        if batches is not None and first_batches is not None:
            raise ValueError("score: pass batches or first_batches, not both")
        if batches is not None:
            pending = [(list(b), self._collate(b)) for b in batches]
        elif first_batches is not None:
            if first_batches < 1:
                raise ValueError(f"first_batches must be >= 1, got {first_batches}")
            pending = list(zip(self._plan[:first_batches], self._tensors[:first_batches]))
        else:
            pending = list(zip(self._plan, self._tensors))
        wanted = sorted(i for batch, _ in pending for i in batch)
        n_batches = real = padded = replans = 0
        bar = tqdm(total=len(wanted), desc=desc, unit="pair", disable=not progress,
                   leave=False)
        oom = _oom_errors()
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                while pending:
                    batch, tensors = pending[0]
                    try:
                        out = model(**{k: v.to(device, non_blocking=True)
                                       for k, v in tensors.items()})
                    except oom:
                        if batches is not None or len(batch) == 1:
                            raise
                        pending = self._after_oom(pending, scores, wanted)
                        replans += 1
                        continue
                    values = score_logits(out.logits).float().cpu().tolist()
                    for i, value in zip(batch, values):
                        scores[i] = value
                    pending.pop(0)
                    n_batches += 1
                    real += sum(self.lengths[i] for i in batch)
                    padded += tensors["input_ids"].numel()
                    bar.update(len(batch))
        finally:
            bar.close()
            model.train(was_training)
        seconds = time.perf_counter() - started
        self.last_stats = ScoringStats(len(wanted), n_batches, real, padded, seconds,
                                       self.batch_tokens, replans)
        log.debug("scored %d pairs in %.2fs (%.1f pairs/s, padded/real %.3f)", len(wanted),
                  seconds, self.last_stats.pairs_per_second, self.last_stats.padding_ratio)
        return {self.keys[i]: float(scores[i]) for i in wanted}  # type: ignore[arg-type]

    def _after_oom(
        self, pending: list[tuple[list[int], Any]], scores: Sequence[float | None],
        wanted: Sequence[int],
    ) -> list[tuple[list[int], Any]]:
        """Halve the budget after a CUDA OOM; re-plan the pairs of ``wanted`` not yet scored."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        old = self.batch_tokens
        new = max(1, old // 2)
        log.warning("out of GPU memory with a %d-token batch; halving the budget to %d",
                    old, new)
        self._replan(new)
        left = [i for i in wanted if scores[i] is None]
        sub = plan_batches([self.lengths[i] for i in left], new)
        return [([left[j] for j in b], self._collate([left[j] for j in b])) for b in sub]

    def _check_model(self, model: torch.nn.Module) -> None:
        config = getattr(model, "config", None)
        pad = getattr(config, "pad_token_id", None)
        if self.decoder and pad != self.pad_token_id:
            raise ValueError(
                f"model.config.pad_token_id is {pad} but the pairs are padded with "
                f"{self.pad_token_id}: a decoder reranker reads its score at the last non-pad "
                "token, so they must agree (load the model with load_reranker)"
            )


def score_candidates(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    arch: ArchitectureRoles,
    queries: Mapping[str, str],
    candidates: Sequence[tuple[str, str, str]],
    *,
    max_length: int,
    batch_tokens: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[Key, float]:
    """Tokenise and score candidates once: ``{(qid, docid): score}``.

    For several models or ablations over the same pairs, build a :class:`PreparedPairs` once
    and call its :meth:`~PreparedPairs.score` instead.
    """
    prepared = PreparedPairs.build(tokenizer, arch, queries, candidates,
                                   max_length=max_length, batch_tokens=batch_tokens,
                                   progress=progress)
    return prepared.score(model, device=device, progress=progress)

