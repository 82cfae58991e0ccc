"""Dependent (trellis-coded) quantization (`methods.rd.tcq`, `vae-rd-free --set rounding=tcq`):
the decoder's states are the state machine's, the encoder's levels are the best path, and a
file of it decodes to what the search measured, meets its target and says its version."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch

from conftest import load_script
from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext
from vaecompress.family.shared import share
from vaecompress.format import loads
from vaecompress.methods.rd import tcq
from vaecompress.methods.rd.allocate import allocate, relative_sensitivities
from vaecompress.methods.rd.latents import TCQ, TCQ_VERSION, decode_model, encode_model

CTX = CodecContext(progress=False)


def _states(levels: np.ndarray) -> np.ndarray:
    """Q1 or not for each level, by running the state machine element by element."""
    out = np.zeros(levels.shape, dtype=bool)
    for r in range(levels.shape[0]):
        s = 0
        for j in range(levels.shape[1]):
            out[r, j] = s >= 2
            s = int(tcq.TRANSITIONS[s][int(levels[r, j]) & 1])
    return out


@pytest.mark.parametrize("cols", [1, 2, 3, 8, 9])
def test_the_decoders_states_are_the_state_machines(cols: int) -> None:
    rng = np.random.default_rng(cols)
    levels = rng.integers(-5, 6, size=(7, cols))
    assert np.array_equal(tcq.uses_q1(levels), _states(levels))
    rec = tcq.reconstruct(levels)
    q1 = _states(levels)
    want = np.where(q1, 2 * levels - np.sign(levels), 2 * levels)
    assert rec.dtype == np.float32 and np.array_equal(rec, want.astype(np.float32))


def test_the_levels_are_the_least_error_path() -> None:
    """Against every sequence of levels in a window around the weights: no other path along a
    row reconstructs them with less squared error."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, size=(12, 4))
    z = tcq.quantize(x)
    assert z.dtype == np.int64 and z.shape == x.shape
    got = ((x - tcq.reconstruct(z)) ** 2).sum(axis=1)
    for r in range(x.shape[0]):
        best = np.inf
        for seq in itertools.product(range(-4, 5), repeat=x.shape[1]):
            lv = np.array([seq])
            best = min(best, float(((x[r] - tcq.reconstruct(lv)[0]) ** 2).sum()))
        assert got[r] <= best + 1e-9


def test_finer_than_the_coarse_quantizer_with_fewer_bits_than_the_fine_one() -> None:
    """The point of it: less error than rounding to the coarse step (2 d), with latents of
    about the coarse quantizer's entropy, far under the fine step's."""
    rng = np.random.default_rng(1)
    x = rng.laplace(0, 2.0, size=(64, 500))
    z = tcq.quantize(x)

    def bits(a: np.ndarray) -> float:
        _, c = np.unique(a, return_counts=True)
        p = c / c.sum()
        return float(-(p * np.log2(p)).sum())

    mse_tcq = float(((x - tcq.reconstruct(z)) ** 2).mean())
    mse_coarse = float(((x - 2 * np.rint(x / 2)) ** 2).mean())
    assert mse_tcq < 0.8 * mse_coarse
    assert bits(z) < bits(np.rint(x / 2)) + 0.25 < bits(np.rint(x)) - 0.5


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(48, 40, generator=g) * 0.1,
            "a.bias": torch.randn(48, generator=g) * 0.01,
            "conv": torch.randn(8, 3, 3, 3, generator=g) * 0.2,
            "steps": torch.tensor(3)}


@pytest.mark.parametrize("snr", [4.0, 12.0, 30.0])
def test_the_codec_meets_its_target_and_decodes_what_it_measured(snr: float) -> None:
    state = _state()
    res = compress(state, "vae-rd-free", ctx=CTX, snr=snr, rounding="tcq")
    c = loads(res.data)
    assert c.codec["version"] == TCQ_VERSION and c.codec["settings"]["rounding"] == "tcq"
    assert snr <= res.report["snr_db"] <= snr + 0.5
    # what the search measured is what the file decodes to (relative weighting: the same sum)
    assert res.fidelity["snr_db"] == pytest.approx(res.report["snr_db"], abs=1e-3)
    out = decompress(res.data)
    assert res.rebuilt is not None
    assert all(torch.equal(out[k], res.rebuilt[k]) for k in state)
    # the same search, the same bytes
    assert compress(state, "vae-rd-free", ctx=CTX, snr=snr, rounding="tcq").data == res.data


def test_records_flag_it_and_decode_with_masks() -> None:
    """A tensor with all-zero columns and rows (masked out of the stream) still runs each row's
    chain over all its columns."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1.0, size=(6, 10))
    w[:, 3] = 0.0
    w[2] = 0.0
    z = tcq.quantize(w / 0.25)
    data = encode_model([z], [np.array([0.25], dtype=np.float32)], trellis=True)
    assert data[0] & TCQ
    out = decode_model(data, [{"name": "w", "shape": [6, 10]}])["w"]
    assert np.array_equal(out, (tcq.reconstruct(z) * np.float32(0.25)).astype(np.float32))


def test_a_size_budget_and_a_shared_prior() -> None:
    state = _state()
    near = compress(state, "vae-rd-free", ctx=CTX, size=3000)
    res = compress(state, "vae-rd-free", ctx=CTX, size=3000, rounding="tcq")
    assert len(res.data) <= 3000 and loads(res.data).codec["version"] == TCQ_VERSION
    assert res.report["snr_db"] > 0 and near.report["snr_db"] > 0
    members = [{k: v + 0.01 * torch.randn(v.shape) if v.is_floating_point() else v
                for k, v in state.items()} for _ in range(3)]
    own = [compress(m, "vae-rd-free", ctx=CTX, snr=20.0, rounding="tcq") for m in members]
    fam = share([r.data for r in own])
    for r, m in zip(own, fam.members, strict=True):
        assert loads(m).codec["version"] == TCQ_VERSION  # under the prior, still TCQ's
        out = decompress(m, {"prior": fam.prior} if loads(m).externals else None)
        assert all(torch.equal(out[k], r.rebuilt[k]) for k in out)


def test_allocation_against_nearest_at_one_scale() -> None:
    """TCQ's points are some of the nearest rounding's grid: at a given target its scale is no
    coarser, and its error is at least nearest's at the same scale."""
    rng = np.random.default_rng(3)
    arrays = [rng.normal(0, 0.1, size=(32, 30)).astype(np.float32),
              rng.normal(0, 0.5, size=(64,)).astype(np.float32)]
    sens = relative_sensitivities(arrays)
    near = allocate(arrays, sens, snr=10.0)
    trel = allocate(arrays, sens, snr=10.0, rounding="tcq")
    assert trel.scale <= near.scale and trel.snr_db >= 10.0


def test_golden_bytes() -> None:
    """The stored form of TCQ, pinned (regenerate only with a codec version bump)."""
    res = compress(_state(), "vae-rd-free", ctx=CTX, snr=16.0, rounding="tcq")
    digest = hashlib.sha256(loads(res.data).payloads[0].data).hexdigest()
    assert digest == GOLDEN_TCQ


GOLDEN_TCQ = "f8bcb5e43571d887188c82c318a73ecd61e50c045dbb2afe4545fa2704c992bc"


def test_the_level_of_a_reconstruction_needs_no_state() -> None:
    """`benchmarks/nncodec_dq.py` reads NNCodec's rebuilt weights as trellis levels without
    its state machine: an odd multiple is Q1's `2k - sgn k`, an even one Q0's `2k`. Whatever
    the states, the levels so read are the ones that rebuilt them."""
    dq = load_script("benchmarks/nncodec_dq.py")
    rng = np.random.default_rng(3)
    levels = rng.integers(-6, 7, size=(9, 40))
    rebuilt = tcq.reconstruct(levels).astype(np.int64)
    assert np.array_equal(dq.trellis_levels(rebuilt), levels)
    size, share = dq.trellis_stream([rebuilt], [np.array([0.5], np.float32)], [(9, 40)])
    assert share == 1.0 and size > 0  # our own machine rebuilds its own levels
    other = rebuilt.copy()
    other[:, 1] = np.where(other[:, 1] % 2 == 0, other[:, 1] + 1, other[:, 1])  # Q1 where Q0 was
    assert dq.trellis_stream([other], [np.array([0.5], np.float32)], [(9, 40)])[1] < 1.0
