"""Shared test settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on 2 shared cores, more threads spin and wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def local_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-data caches of the tests go to a temporary folder, never the user's ~/.cache:
    a reopened run (eval, embed) uses this machine's default cache, not its recorded one."""
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path_factory.getbasetemp() / "simclr-cache"))


# The device of the CLI tests' runs: cpu here and in CI; benchmarks/gpu.sh sets
# SIMCLR_TEST_DEVICE=cuda to run the same end-to-end tests on a GPU.
TEST_DEVICE = f"device={os.environ.get('SIMCLR_TEST_DEVICE', 'cpu')}"
