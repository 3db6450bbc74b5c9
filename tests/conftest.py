"""Shared fixtures: offline by default, paths to the repository and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import build_base

REPO = Path(__file__).resolve().parents[1]
SHARED_TREC_DL = REPO.parent / "shared" / "data" / "trec-dl"

# Nothing in the suite may reach a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Idle OpenMP threads sleep rather than spin (see lorascope.cli): tests share 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_trec_dl() -> Path:
    if not SHARED_TREC_DL.is_dir():
        pytest.skip(f"the shared TREC DL files are not at {SHARED_TREC_DL}")
    return SHARED_TREC_DL


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine OpenMP threads that
    wait for a busy core turn a 5 ms forward pass into a second. A module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Random tiny base models (3 layers, width 32) of each architecture family, built once
    per module."""
    root = tmp_path_factory.mktemp("bases")
    return {t: build_base(root / t, t) for t in ("llama", "gpt_neox", "bert")}
