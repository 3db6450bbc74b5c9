"""LoRA variants: their names, which combine, and what each means for peft.

A *variant* changes how a LoRA adapter is parameterised or initialised; peft implements each:

* ``lora``: plain LoRA (the default; combines with nothing, it *is* "no variant");
* ``dora``: weight-decomposed LoRA (``LoraConfig(use_dora=True)``);
* ``rslora``: rank-stabilised scaling ``alpha / sqrt(r)`` (``use_rslora=True``);
* ``pissa``: A, B start as the top-``r`` singular part of W, the base keeps the residual
  (``init_lora_weights="pissa"``, exact SVD);
* ``olora``: A, B start from a QR decomposition of W, the base keeps the residual
  (``init_lora_weights="olora"``);
* ``eva``: A starts as the top-``r`` right singular vectors of the layer's inputs on training
  batches (``init_lora_weights="eva"`` + ``initialize_lora_eva_weights``); the base is untouched.

``pissa``, ``olora`` and ``eva`` are initialisations: at most one per adapter. ``dora`` and
``rslora`` combine with each other and with any one initialisation. ``pissa`` and ``olora``
rewrite the base weights of the training model, so their adapters are converted at extraction
into a standard LoRA delta relative to the original base (rank ``2r``); see
:func:`lorascope.extraction.extract_adapter`.

Pure Python (no torch): the config parser uses it at DAG-build time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PLAIN = "lora"
MODIFIERS = ("dora", "rslora")
INITS = ("pissa", "olora", "eva")
VARIANTS = (PLAIN, *MODIFIERS, *INITS)
#: peft initialisations (``init_lora_weights``, matched by prefix: ``pissa_niter_4``) that move
#: part of W into A, B: the model then holds a residual base, so switching LoRA off does not give
#: back W, and peft re-runs them when it loads the adapter. lorascope trains ``pissa`` and
#: ``olora``; the others can come with adapters made elsewhere.
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
#: ``TrainSettings.init`` of plain LoRA (peft's ``init_lora_weights=True``).
DEFAULT_INIT = "default"


class VariantError(ValueError):
    """An unknown variant name or a combination that does not make sense."""


def canonical(variant: str | Iterable[str] | None) -> tuple[str, ...]:
    """Checked, sorted variant names; ``()`` for plain LoRA (``None``, ``"lora"``, ``["lora"]``).

    Raises:
        VariantError: an unknown or repeated name, ``lora`` combined with another variant,
            or two initialisations.
    """
    if variant is None:
        return ()
    names = [variant] if isinstance(variant, str) else list(variant)
    if not names:
        raise VariantError("an empty variant list (write 'lora' for plain LoRA)")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise VariantError(f"unknown variant {unknown[0]!r} (variants: {', '.join(VARIANTS)})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise VariantError(f"variant {repeated[0]!r} is listed twice")
    if PLAIN in names:
        if len(names) > 1:
            raise VariantError(
                f"'{PLAIN}' is plain LoRA and combines with no other variant (got {names})"
            )
        return ()
    inits = [n for n in names if n in INITS]
    if len(inits) > 1:
        raise VariantError(
            f"{' and '.join(inits)} are alternative initialisations of A and B; choose one "
            f"(each combines with {' and/or '.join(MODIFIERS)})"
        )
    return tuple(sorted(names))


def label(variant: Iterable[str]) -> str:
    """The adapter-name suffix of a canonical variant: ``dora_rslora``; ``""`` for plain."""
    return "_".join(variant)


def init_of(variant: Iterable[str]) -> str:
    """The initialisation of a canonical variant (``pissa``/``olora``/``eva``/``default``)."""
    return next((n for n in variant if n in INITS), DEFAULT_INIT)


def from_flags(*, dora: bool, rslora: bool, init: str = DEFAULT_INIT) -> tuple[str, ...]:
    """The canonical variant of peft-style flags (the study-wide ``training.lora`` booleans)."""
    names = [n for n, on in (("dora", dora), ("rslora", rslora)) if on]
    if init != DEFAULT_INIT:
        names.append(init)
    return canonical(names) if names else ()


def train_fields(variant: Iterable[str]) -> dict[str, Any]:
    """The :class:`lorascope.training.settings.TrainSettings` fields a canonical variant sets.

    ``init`` appears only when it is not the default, so that the training slice of a plain
    LoRA or DoRA/rsLoRA run (and with it Snakemake's params trigger) is what it was before
    initialisations existed.
    """
    variant = tuple(variant)
    out: dict[str, Any] = {"use_dora": "dora" in variant, "use_rslora": "rslora" in variant}
    init = init_of(variant)
    if init != DEFAULT_INIT:
        out["init"] = init
    return out


def peft_init(init: str) -> bool | str:
    """``LoraConfig.init_lora_weights`` of a ``TrainSettings.init`` value."""
    if init == DEFAULT_INIT:
        return True
    if init not in INITS:
        raise VariantError(
            f"unknown initialisation {init!r} (inits: {DEFAULT_INIT}, {', '.join(INITS)})"
        )
    return init


def base_rewriting_init(init: Any) -> str | None:
    """The name in :data:`BASE_REWRITING_INITS` of an initialisation (ours or peft's
    ``init_lora_weights``) that rewrites W, or None when it leaves W alone."""
    if not isinstance(init, str):
        return None  # True / False: peft's default / identity initialisation
    text = init.lower()
    return next((name for name in BASE_REWRITING_INITS if text.startswith(name)), None)


def rewrites_base(init: Any) -> bool:
    """Whether an initialisation (ours or peft's ``init_lora_weights``) rewrites W: the one
    definition lorascope uses (training, extraction, the lens, SVD compression)."""
    return base_rewriting_init(init) is not None
