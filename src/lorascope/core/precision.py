"""Numeric precision: which one a job runs in, chosen from the hardware, and recorded.

A study asks for ``fp32``, ``bf16`` or ``auto`` (``training.precision``,
``evaluation.precision``); every job resolves that on the machine it runs on:

* ``auto`` on a CUDA device: ``bf16`` where the GPU supports it, else ``fp32``;
* ``auto`` on a CPU: ``bf16`` where the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16:
  bf16 matrix products then run several times faster than fp32, see ../shared/FACTS.md), else
  ``fp32`` (emulated bf16 is slower than fp32);
* ``fp32`` / ``bf16``: forced, whatever the hardware.

What ``bf16`` means, per use:

* training: the frozen base weights are stored in bf16, the trainable LoRA factors and the
  score head stay fp32 (the optimizer updates fp32 master weights), and the forward runs under
  ``torch.autocast(bf16)``; on a CPU attention is ``eager``, because PyTorch's CPU SDPA
  backward in bf16 is pathologically slow (measured: half of a MiniLM step);
* scoring: the base model is loaded in bf16 (peft keeps the adapter's LoRA factors in fp32).

The resolved precision and why it was chosen go into every artifact's provenance
(:func:`describe`), so each number in a report says what computed it.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

PRECISIONS = ("fp32", "bf16", "auto")
#: CPU flags (as /proc/cpuinfo names them) that mean native bf16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: The torch dtype name of each resolved precision.
DTYPE = {"fp32": "float32", "bf16": "bfloat16"}

Resolved = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Choice:
    """A resolved precision and why.

    Attributes:
        requested: what the study asked for (``fp32``, ``bf16``, ``auto``).
        resolved: what the job runs in (``fp32`` or ``bf16``).
        reason: in words, e.g. ``auto: CPU has native bf16 (avx512_bf16)``.
        device: the device it was resolved for.
    """

    requested: str
    resolved: Resolved
    reason: str
    device: str

    @property
    def bf16(self) -> bool:
        return self.resolved == "bf16"

    @property
    def dtype(self) -> str:
        """The torch dtype name of the weights (``float32`` / ``bfloat16``)."""
        return DTYPE[self.resolved]

    @property
    def attention(self) -> str | None:
        """The attention implementation to ask transformers for: ``eager`` for bf16 on a CPU
        (SDPA's bf16 backward is slow there, and in MiniLM scoring eager was 1.1-1.3x faster
        too), else the library's default."""
        return "eager" if self.bf16 and not self.device.startswith("cuda") else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU's model name and its bf16-related flags (Linux: /proc/cpuinfo; elsewhere the
    flags torch itself detects)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    else:  # pragma: no cover - not Linux
        import torch

        if torch.cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        if torch.cpu._is_amx_tile_supported():
            flags.add("amx_bf16")
    return {"model": model, "bf16_flags": sorted(f for f in BF16_CPU_FLAGS if f in flags)}


def cpu_has_native_bf16() -> bool:
    return bool(cpu_info()["bf16_flags"])


def resolve(requested: str, device: str = "cpu") -> Choice:
    """The precision a job runs in on ``device`` (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return Choice(requested, requested, f"{requested}: as configured", device)  # type: ignore[arg-type]
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Choice("auto", "bf16", "auto: the GPU supports bf16", device)
        return Choice("auto", "fp32", "auto: the GPU does not support bf16", device)
    flags = cpu_info()["bf16_flags"]
    if flags:
        return Choice("auto", "bf16", f"auto: CPU has native bf16 ({', '.join(flags)})", device)
    return Choice("auto", "fp32", "auto: CPU has no native bf16 (no amx_bf16, avx512_bf16)",
                  device)


def describe(choice: Choice) -> dict[str, Any]:
    """The provenance block of a precision choice (with the CPU that made it)."""
    return {**choice.to_dict(), "cpu": cpu_info()}
