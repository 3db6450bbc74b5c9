"""SVD compression on the study side: the exports an ``svd`` sweep asks for, their rule's slice
and the report params.

DAG-build time only (no stage imports it)."""

from __future__ import annotations

from typing import Any

from lorascope.core.names import SVD
from lorascope.study.plan import adapter_of, stored_rank, sweep_applies, sweep_step
from lorascope.study.spec import Study


def jobs(study: Study) -> list[dict[str, object]]:
    """The wildcards (model, adapter, step, rank) of every SVD-truncated adapter the ``svd``
    sweeps evaluate (exported as plain peft adapters)."""
    out = []
    for sweep in study.sweeps.values():
        if sweep.generate != SVD:
            continue
        for m in study.models.values():
            for name in sweep_applies(sweep, m):
                stored = stored_rank(adapter_of(m, name))
                out += [(m.name, name, sweep_step(sweep, m, name), k) for k in sweep.ranks or ()
                        if k < stored]
    return [{"model": m, "adapter": a, "step": step, "rank": k}
            for m, a, step, k in sorted(set(out))]


def export_compressed(study: Study, model: str, adapter: str, step: int, rank: int
                      ) -> dict[str, Any]:
    """An SVD-truncated export: which checkpoint and which rank."""
    return {"model": model, "adapter": adapter, "step": step, "rank": rank}


SLICES = {"export_compressed": export_compressed}


def report_params(study: Study) -> dict[str, Any] | None:
    """The compression table's sweep (the first ``svd`` sweep)."""
    svd = next((s.name for s in study.sweeps.values() if s.generate == SVD), None)
    if svd is None:
        return None
    return {"sweep": svd, "measure": study.evaluation.convergence.measure}
