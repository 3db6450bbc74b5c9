"""The ``evaluate_zero_shot`` stage: the base model's own ranking, before any LoRA, where the
model has one.

A LoRA reranker starts from a pretrained model with a freshly initialised score head; what it
ranks at step 0 says nothing about what the pretrained model already knows. Some base models
rank on their own: a sentence-embedding model such as all-MiniLM-L6-v2 was trained so that the
cosine of its (mean-pooled, normalised) embeddings of a query and a relevant passage is high.
That zero-shot ranking of the same candidates is the honest reference for "what did LoRA
add?", and the report shows it as a row beside BM25 and the random floor.

Methods (``models.<name>.zero_shot``):

* ``bi_encoder``: query and passage embedded separately by the base model's encoder
  (``AutoModel``), pooled (``mean`` over non-pad tokens, or ``cls``), L2-normalised; the score
  is their cosine. Passages are cut at ``max_length`` tokens (sentence-transformers' default
  for all-MiniLM-L6-v2 is 256).

Writes per-query metrics (METRICS contract, ablation ``zero_shot``), a summary JSON and the
TREC run of the cosines (``zero_shot.run`` beside the metrics unless named, tagged
``<model>.zero_shot.<split>``): trec_eval on it gives the reported metrics exactly
(:mod:`lorascope.core.trec`).

``params`` (the rule's config slice)::

    model, split: identifying fields
    zero_shot: {method: bi_encoder, pooling: mean, max_length: 256}
    metrics:   ["nDCG@10", "RR(rel=2)", "AP(rel=2)"]
    scoring:   {batch_tokens: 16384, precision: auto}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorascope.core import fileio, metrics, provenance, trec
from lorascope.core.contracts import METRICS, write_table
from lorascope.core.names import ZERO_SHOT
from lorascope.core.precision import describe, resolve
from lorascope.data.splits import read_split

log = logging.getLogger(__name__)

STAGE = "evaluate_zero_shot"
METHODS = ("bi_encoder",)
POOLINGS = ("mean", "cls")


def _check(spec: Mapping[str, Any]) -> tuple[str, int]:
    if spec.get("method") not in METHODS:
        raise ValueError(f"zero_shot.method must be one of {', '.join(METHODS)}, "
                         f"got {spec.get('method')!r}")
    pooling = spec.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"zero_shot.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    max_length = int(spec.get("max_length", 256))
    if max_length < 1:
        raise ValueError(f"zero_shot.max_length must be positive, got {max_length}")
    return pooling, max_length


def embed(model: Any, tokenizer: Any, texts: Sequence[str], *, pooling: str, max_length: int,
          batch_tokens: int, device: str, desc: str = "embed", progress: bool = True) -> Any:
    """L2-normalised embeddings ``(len(texts), hidden)`` (float32), in length-sorted batches."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from lorascope.core.batches import plan_batches

    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    batches = plan_batches([len(x) for x in ids], batch_tokens)
    out = torch.empty((len(texts), model.config.hidden_size), dtype=torch.float32)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        enc = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state.float()
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[batch] = F.normalize(pooled, dim=-1).cpu()
    return out


def evaluate_zero_shot(
    params: Mapping[str, Any],
    base_dir: str | Path,
    split_dir: str | Path,
    out_metrics: str | Path,
    out_summary: str | Path,
    out_run: str | Path | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank a split's candidates with the base model alone; write metrics, a summary and the
    TREC run (``out_run``, by default ``zero_shot.run`` beside ``out_metrics``)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lorascope.models.reranker import default_device

    spec = dict(params.get("zero_shot") or {})
    pooling, max_length = _check(spec)
    missing = [k for k in ("model", "split") if params.get(k) is None]
    if missing:
        raise ValueError(f"evaluate_zero_shot params: {missing} missing; they name the TREC run")
    tag = trec.run_tag(params["model"], ZERO_SHOT, params["split"])
    run_path = (Path(out_metrics).with_name(f"{ZERO_SHOT}{trec.RUN_SUFFIX}") if out_run is None
                else Path(out_run))
    measures = list(params["metrics"])
    scoring = dict(params.get("scoring") or {})
    device = default_device()
    precision = resolve(scoring.get("precision", "fp32"), device)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir, dtype=getattr(torch, precision.dtype))
    model.to(device).eval()
    queries, candidates, qrels = read_split(split_dir)
    texts = sorted({text for _, _, text in candidates})
    index = {text: i for i, text in enumerate(texts)}
    qids = sorted(queries)
    batch_tokens = int(scoring.get("batch_tokens", 16384))
    kwargs = {"pooling": pooling, "max_length": max_length, "batch_tokens": batch_tokens,
              "device": device, "progress": progress}
    q_emb = embed(model, tokenizer, [queries[q] for q in qids], desc="queries", **kwargs)
    p_emb = embed(model, tokenizer, texts, desc="passages", **kwargs)
    q_row = {q: i for i, q in enumerate(qids)}
    run = [(qid, docid, float(q_emb[q_row[qid]] @ p_emb[index[text]]))
           for qid, docid, text in candidates]
    per_query = metrics.per_query(qrels, run, measures)
    record = provenance.record(STAGE, params, base_dir=str(base_dir), split_dir=str(split_dir),
                               device=device, precision=describe(precision))
    write_table(out_metrics, metrics.to_rows(per_query, ZERO_SHOT), METRICS, record)
    trec.write_run(run_path, {(qid, docid): score for qid, docid, score in run}, tag)
    means = metrics.aggregate(per_query)
    summary = {
        "model": params.get("model"),
        "split": params.get("split"),
        "method": {"method": spec["method"], "pooling": pooling, "max_length": max_length},
        "queries": len(next(iter(per_query.values()))),
        "pairs": len(run),
        "metrics": means,
        "seconds_total": round(time.perf_counter() - started, 2),
        "provenance": record,
    }
    fileio.write_json(out_summary, summary)
    log.info("zero-shot %s on %s (%d queries, %d pairs): %s", spec["method"],
             params.get("split"), summary["queries"], len(run),
             {m: round(v, 4) for m, v in means.items()})
    return summary
