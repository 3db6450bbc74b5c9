"""The shared core: what several stages use.

Architecture roles (:mod:`.roles`), ablation specs (:mod:`.ablation`) and the names shared
between stages (:mod:`.names`); in-place LoRA switching (:mod:`.switching`) and the LoRA-factor
maths (:mod:`.lora_factors`); LoRA variants (:mod:`.variants`); adapter manifests
(:mod:`.adapters`); the Parquet contracts (:mod:`.contracts`); length-sorted scoring
(:mod:`.scoring`) and the scored-sweep outputs (:mod:`.results`); metrics and statistics
(:mod:`.metrics`, :mod:`.stats`); provenance, atomic writes, installed packages and GPU claims
(:mod:`.provenance`, :mod:`.fileio`, :mod:`.packages`, :mod:`.devices`).
"""
