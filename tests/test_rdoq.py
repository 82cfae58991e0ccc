"""RDOQ (`methods.rd.rdoq`, `vae-rd-free --set rounding=rdoq`): the rounding it promises, the
target it meets, the same decisions every time, files the unchanged reader decodes, and fewer
bytes than rounding to nearest at the same SNR at low rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext
from vaecompress.errors import UserError
from vaecompress.fidelity import weights_fidelity
from vaecompress.format import loads
from vaecompress.methods.rd.allocate import allocate, relative_sensitivities
from vaecompress.methods.rd.latents import decode_model, encode_model
from vaecompress.methods.rd.rdoq import LAMBDA, code_lengths, envelope, rdoq

CTX = CodecContext(progress=False)


def _laplace(n: int, scale: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).laplace(size=n) * scale).astype(np.float32)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    with torch.no_grad():  # a trained-looking spread, heavier-tailed than init's uniform box
        for p in net.parameters():
            g = torch.distributions.Laplace(0.0, 0.2 / math.sqrt(p.shape[-1]))
            p.copy_(g.sample(p.shape))
    return net.state_dict()


def test_lambda_is_the_slope_of_rounding_at_high_rate() -> None:
    """-dD/dR of rounding to nearest, measured on fine steps, is LAMBDA squared steps a bit."""
    x = _laplace(400_000, 1.0, seed=1).astype(np.float64)

    def rate_distortion(d: float) -> tuple[float, float]:
        z = np.rint(x / d)
        _, counts = np.unique(z, return_counts=True)
        p = counts / z.size
        return float(-(p * np.log2(p)).sum()), float(np.square(z * d - x).mean())

    d = 0.05
    r1, d1 = rate_distortion(d)
    r2, d2 = rate_distortion(d * 1.05)
    assert -(d2 - d1) / (r2 - r1) / (d * d * 1.05) == pytest.approx(LAMBDA, rel=0.05)


def test_without_a_price_it_is_rounding_to_nearest() -> None:
    x = _laplace(5000, 3.0)
    np.testing.assert_array_equal(rdoq(x, lam=0.0), np.rint(x))
    np.testing.assert_array_equal(rdoq(x, passes=0), np.rint(x))
    keep, bounds = envelope(np.zeros(6))
    np.testing.assert_array_equal(keep, np.arange(6))
    np.testing.assert_allclose(bounds, np.arange(5) + 0.5)


def test_it_moves_latents_only_toward_cheaper_symbols_and_lowers_the_cost() -> None:
    x = _laplace(20000, 1.2)
    z, near = rdoq(x), np.rint(x)
    assert np.abs(z - near).max() <= 1  # never more than one step from the nearest
    assert (np.abs(z) <= np.abs(near)).all()  # a peaked table: only toward zero
    assert 0 < (z != near).mean() < 0.2

    def cost(q: np.ndarray) -> float:
        sym, counts = np.unique(q, return_counts=True)
        bits = code_lengths(counts)[np.searchsorted(sym, q)]
        return float(np.square(q - x.astype(np.float64)).sum() + LAMBDA * bits.sum())

    assert cost(z) < cost(near)


def test_a_rare_symbol_between_two_common_ones_is_never_chosen() -> None:
    keep, bounds = envelope(np.array([0.0, 5.0, 0.0]))
    np.testing.assert_array_equal(keep, [0, 2])
    assert bounds[0] == pytest.approx(1.0)


def test_decisions_are_the_same_every_time() -> None:
    x = _laplace(50000, 2.0, seed=3)
    np.testing.assert_array_equal(rdoq(x), rdoq(x.copy()))
    state = _state()
    a = compress(state, "vae-rd-free", ctx=CTX, snr=8.0, rounding="rdoq")
    b = compress(state, "vae-rd-free", ctx=CTX, snr=8.0, rounding="rdoq")
    assert a.data == b.data


@pytest.mark.parametrize("snr", [4.0, 8.0, 16.0, 30.0])
def test_rdoq_meets_its_target(snr: float) -> None:
    state = _state()
    res = compress(state, "vae-rd-free", ctx=CTX, snr=snr, rounding="rdoq")
    got = weights_fidelity(state, decompress(res.data))["snr_db"]
    assert snr <= got <= snr + 0.05
    assert loads(res.data).codec_state["snr_db"] == pytest.approx(got, abs=1e-3)
    assert loads(res.data).codec["settings"]["rounding"] == "rdoq"


def test_an_rdoq_file_decodes_with_the_reader_of_nearest_rounding() -> None:
    """Only the integers change: the latent stream's reader (`decode_model`, unchanged) rebuilds
    exactly `step * latent` of what the allocation chose."""
    arrays = [v.numpy() for v in _state().values()]
    a = allocate(arrays, relative_sensitivities(arrays), snr=8.0, rounding="rdoq")
    data = encode_model(a.ints, a.steps)
    specs = [{"name": str(i), "shape": list(w.shape)} for i, w in enumerate(arrays)]
    out = decode_model(data, specs)
    for i, (z, d) in enumerate(zip(a.ints, a.steps, strict=True)):
        np.testing.assert_array_equal(out[str(i)], z.astype(np.float32) * d[0])


@pytest.mark.parametrize("snr", [4.0, 6.0, 8.0, 12.0])
def test_rdoq_is_smaller_than_nearest_at_the_same_snr_at_low_rate(snr: float) -> None:
    """Where latents are few and a table's symbols differ in price (below about 3 bits a
    weight). At high rate the two differ by a few bytes either way (the tables' own cost)."""
    state = _state()
    near = compress(state, "vae-rd-free", ctx=CTX, snr=snr, weighting="relative")
    rd = compress(state, "vae-rd-free", ctx=CTX, snr=snr, weighting="relative",
                  rounding="rdoq")
    assert len(rd.data) < len(near.data)


def test_the_derived_price_beats_half_and_twice_it() -> None:
    arrays = [v.numpy() for v in _state().values()]
    sens = relative_sensitivities(arrays)

    def size(lam: float) -> int:
        a = allocate(arrays, sens, snr=6.0, rounding="rdoq", lam=lam)
        return len(encode_model(a.ints, a.steps))

    assert size(LAMBDA) <= min(size(0.5 * LAMBDA), size(2.0 * LAMBDA))


def test_a_size_budget_is_met_with_rdoq() -> None:
    state = _state()
    near = compress(state, "vae-rd-free", ctx=CTX, snr=6.0, weighting="relative")
    budget = len(near.data)
    rd = compress(state, "vae-rd-free", ctx=CTX, size=budget, weighting="relative",
                  rounding="rdoq")
    assert len(rd.data) <= budget
    got = weights_fidelity(state, decompress(rd.data))["snr_db"]
    assert got >= 6.0 - 0.2  # the same bytes buy about the same SNR or more


def test_a_bad_rounding_is_one_line() -> None:
    with pytest.raises(UserError, match="rounding must be one of nearest, rdoq"):
        compress(_state(), "vae-rd-free", ctx=CTX, rounding="floor")
    with pytest.raises(UserError, match="need solver=closed"):
        compress(_state(), "vae-rd-free", ctx=CTX, rounding="rdoq", solver="adam")


def test_records_from_before_the_setting_still_count_as_the_default() -> None:
    """The committed bench records predate `rounding`: they were measured with nearest rounding,
    the default, so the report still finds the default's point among them."""
    from vaecompress.codecs import DEFAULT_CODEC, make_codec
    from vaecompress.experiments.bench_report import default_records

    now = make_codec(DEFAULT_CODEC).settings_json()
    old = {k: v for k, v in now.items() if k != "rounding"}
    recs = [{"model": "a", "codec": DEFAULT_CODEC, "codec_settings": old},
            {"model": "b", "codec": DEFAULT_CODEC, "codec_settings": now | {"rounding": "rdoq"}},
            {"model": "c", "codec": DEFAULT_CODEC, "codec_settings": now | {"snr": 20.0}}]
    assert set(default_records({"records": recs})) == {"a"}
