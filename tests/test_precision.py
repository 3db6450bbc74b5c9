"""Precision: ``auto`` resolved from the hardware (CPU flags, GPU support), forced values kept,
the choice recorded; bf16 training keeps fp32 master weights and resumes bitwise."""

from __future__ import annotations

import pytest

from lorascope.core import precision
from lorascope.core.precision import describe, resolve


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU has the given bf16 flags."""

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_info",
                            lambda: {"model": "Test CPU", "bf16_flags": sorted(flags)})

    return set_flags


@pytest.mark.parametrize(("flags", "expected"), [
    ((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16"),
    (("amx_bf16", "avx512_bf16"), "bf16"),
])
def test_auto_follows_the_cpu_flags(cpu, flags, expected) -> None:
    cpu(*flags)
    choice = resolve("auto", "cpu")
    assert choice.resolved == expected and choice.requested == "auto"
    assert all(f in choice.reason for f in flags)
    assert choice.dtype == {"fp32": "float32", "bf16": "bfloat16"}[expected]
    assert describe(choice)["cpu"] == {"model": "Test CPU", "bf16_flags": sorted(flags)}


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_explicit_precision_wins(cpu, forced) -> None:
    for flags in ((), ("amx_bf16",)):
        cpu(*flags)
        choice = resolve(forced, "cpu")
        assert choice.resolved == forced and "as configured" in choice.reason


def test_bad_precision_is_an_error() -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        resolve("fp16", "cpu")


def test_the_real_cpu_is_read() -> None:
    info = precision.cpu_info()
    assert info["model"] and set(info["bf16_flags"]) <= set(precision.BF16_CPU_FLAGS)
    assert resolve("auto", "cpu").bf16 == bool(info["bf16_flags"])


def test_scoring_settings_take_a_precision() -> None:
    from lorascope.core.results import ScoringSettings

    settings = ScoringSettings.from_params({"precision": "bf16"}, "evaluate")
    assert settings.resolve("cpu").dtype == "bfloat16"
    assert ScoringSettings.from_params(None, "evaluate").precision == "fp32"
    with pytest.raises(ValueError, match="scoring.precision must be one of fp32, bf16, auto"):
        ScoringSettings.from_params({"precision": "float16"}, "evaluate")
    with pytest.raises(ValueError, match=r"unknown keys \['scoring.dtype'\]"):
        ScoringSettings.from_params({"dtype": "float32"}, "evaluate")
