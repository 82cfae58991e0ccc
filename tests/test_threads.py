"""The library picks torch's thread count itself (issue 12), overridable."""

from __future__ import annotations

import os

import pytest
import torch

from vaecompress.errors import UserError
from vaecompress.runinfo import auto_threads


@pytest.fixture(autouse=True)
def _restore_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAECOMPRESS_THREADS", "1")
    assert auto_threads(force=True) == 1 and torch.get_num_threads() == 1


def test_bad_override_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAECOMPRESS_THREADS", "many")
    with pytest.raises(UserError, match="VAECOMPRESS_THREADS"):
        auto_threads(force=True)


def test_default_leaves_a_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAECOMPRESS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert auto_threads(force=True) == max(1, min(8, cores - 1))


def test_omp_num_threads_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAECOMPRESS_THREADS", raising=False)
    # torch read OMP_NUM_THREADS itself; auto_threads must leave its count alone (2 here,
    # where the default rule would pick cores - 1).
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert auto_threads(force=True) == 2 and torch.get_num_threads() == 2
