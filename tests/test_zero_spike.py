"""`benchmarks/zero_spike.py`: each point codes with the spike as asked and puts the library's
default back, and the summary finds a larger file at a larger `lam`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import vaecompress.methods.rd.prior as prior_mod
from conftest import load_script

zs = load_script("benchmarks/zero_spike.py")


def test_a_point_codes_with_the_spike_asked_and_restores_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def fake_compress(state: Any, codec: str, **kw: Any) -> Any:
        seen.append(prior_mod.ZERO_SPIKE)
        if kw["lam"] < 0:
            raise RuntimeError("boom")
        return SimpleNamespace(rebuilt=state, accounting=SimpleNamespace(file_bytes=123))

    monkeypatch.setattr(zs, "compress", fake_compress)
    monkeypatch.setattr(zs, "make_finetuner", lambda *a, **k: None)
    monkeypatch.setattr(zs, "evaluate_state", lambda *a, **k: (97.0, None))
    state = {"w": torch.zeros(2)}
    p = zs.point("fnn", state, None, None, None, 98.0, 4.0, False, 0)
    assert seen == [False] and prior_mod.ZERO_SPIKE is True
    assert p["spike"] == "learned" and p["file_bytes"] == 123 and p["drop"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError):
        zs.point("fnn", state, None, None, None, 98.0, -1.0, False, 0)
    assert prior_mod.ZERO_SPIKE is True  # put back after a failure too
    zs.point("fnn", state, None, None, None, 98.0, 4.0, True, 0)
    assert seen[-1] is True


def _pt(lam: float, spike: str, size: int, drop: float) -> dict[str, Any]:
    return {"lam": lam, "spike": spike, "file_bytes": size, "drop": drop}


def test_summary_pairs_the_spikes_and_finds_a_file_growing_with_lam() -> None:
    rows = [{"model": "fnn", "member": "noisy", "how": "base",
             "points": [_pt(2, "learned", 1000, 0.1), _pt(2, "zero", 1000, 0.1),
                        _pt(4, "learned", 2000, 0.3), _pt(4, "zero", 500, 0.5)]}]
    s = zs.summary(rows)
    assert s["points"] == 2
    assert s["bytes_ratio_geomean"] == pytest.approx(0.5)
    assert s["bytes_ratio_min"] == pytest.approx(0.25) and s["bytes_ratio_max"] == 1.0
    assert s["drop_difference_mean"] == pytest.approx(0.1)
    assert s["larger_lam_larger_file"] == {"learned": ["fnn noisy (base)"], "zero": []}
    text = zs.render({"environment": {"git_revision": "x", "seed": 0}, "command": "c",
                      "rows": rows, "summary": s, "run_s": 1.0})
    assert "| fnn | noisy | base | 4 | 2,000 (+0.30) | 500 (+0.50) | 0.250 |" in text


def test_minilm_rows_stay_out_of_the_mnist_summary_and_get_their_own_table() -> None:
    mini = {"model": "all-MiniLM-L6-v2", "member": "the model", "how": "alone",
            "points": [{"snr": 14.0, "spike": s, "file_bytes": b, "compress_s": 700.0,
                        "cos_mean": 0.997, "nn_same": 0.9, "heldout_cos_mean": 0.9938,
                        "heldout_nn_same": 0.85} for s, b in (("learned", 100), ("zero", 90))]}
    assert zs.summary([mini])["points"] == 0
    mnist = {"model": "fnn", "member": "the model", "how": "alone",
             "points": [_pt(4, "learned", 1000, 0.1), _pt(4, "zero", 1100, 0.3)]}
    s = zs.summary([mnist, mini])
    assert s["points"] == 1 and s["bytes_ratio_geomean"] == pytest.approx(1.1)
    text = zs.render({"environment": {"git_revision": "x", "seed": 0}, "command": "c",
                      "rows": [mnist, mini], "summary": s, "run_s": 1.0})
    assert "| zero | 90 | 0.99700 / 90.0% | 0.99380 / 85.0% | 700 |" in text
    alone = zs.render({"environment": {"git_revision": "x", "seed": 0}, "command": "c",
                       "rows": [mini], "summary": zs.summary([mini]), "run_s": 1.0})
    assert "| learned | 100 |" in alone and "Over " not in alone
