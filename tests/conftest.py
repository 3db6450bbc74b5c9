"""Shared fixtures: offline by default, paths to the repository and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
