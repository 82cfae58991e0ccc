"""The optional `nncodec` peer codec: NNCodec in its own venv, driven through a subprocess.

Tests that need NNCodec skip with the install hint when it is absent (scripts/install_nncodec.sh);
the "not installed" path and the settings checks run everywhere.
"""

from __future__ import annotations

import dataclasses
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from vaecompress.api import compress, decompress
from vaecompress.codecs import get_codec_class, make_codec
from vaecompress.codecs.base import CodecContext
from vaecompress.codecs.nncodec_peer import (
    ENV_PYTHON,
    KIND,
    NOT_INSTALLED,
    PAYLOAD,
    nncodec_available,
)
from vaecompress.coding.sparse import magnitude_masks
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, dumps, loads
from vaecompress.training.finetune import Finetuner


@pytest.fixture
def nnc() -> None:
    if not nncodec_available():
        pytest.skip(NOT_INSTALLED)


@pytest.fixture
def missing_nncodec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_PYTHON, str(tmp_path / "no-such-venv" / "bin" / "python"))


def small_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
        "conv.bias": torch.randn(8, generator=g) * 0.1,
        "fc.weight": torch.randn(16, 72, generator=g) * 0.05,
        "fc.bias": torch.randn(16, generator=g) * 0.05,
        "half.weight": (torch.randn(4, 8, generator=g) * 0.1).half(),
        "scale": torch.tensor(0.75),
        "empty": torch.zeros(0, 4),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def step(qp: int, qp_density: int = 2) -> float:
    return 2.0 ** (qp / 2**qp_density)


# ------------------------------------------------------------------ without NNCodec


def test_not_installed_is_one_line_user_error(missing_nncodec: None) -> None:
    assert not nncodec_available()
    with pytest.raises(UserError) as e:
        make_codec("nncodec")
    assert str(e.value) == NOT_INSTALLED
    assert "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        compress(small_state(), "nncodec", qp=-32)
    assert str(e.value) == NOT_INSTALLED


def test_decoding_without_nncodec_says_how_to_install(missing_nncodec: None) -> None:
    c = Container(codec={"name": "nncodec", "version": 1, "settings": {}},
                  tensors=[{"name": "w", "shape": [2, 2], "dtype": "float32"}])
    with pytest.raises(UserError) as e:
        decompress(dumps(c))
    assert str(e.value) == NOT_INSTALLED


@pytest.mark.parametrize("bad", [{"qp": 500}, {"qp": 1.5}, {"qp": True}, {"nonweight_qp": -999},
                                 {"approx_method": "lloyd"}, {"bitdepth": 1}, {"qp_density": 9},
                                 {"sparsity": 1.0}, {"sparsity": -0.1},
                                 {"struct_spars_factor": 2.0}, {"prune": 1.5},
                                 {"prune_epochs": -1.0}, {"prune_lr": 0.0}])
def test_bad_settings_are_user_errors(missing_nncodec: None, bad: dict) -> None:
    with pytest.raises(UserError) as e:
        make_codec("nncodec", **bad)
    assert next(iter(bad)) in str(e.value)


def test_unknown_setting(missing_nncodec: None) -> None:
    with pytest.raises(UserError, match="no setting 'qstep'"):
        make_codec("nncodec", qstep=0.1)


def test_full_sweep_goes_past_the_accuracy_line_and_every_point_is_valid() -> None:
    points = get_codec_class("nncodec").operating_points("full")
    assert len(points) == 41
    qps = {p["qp"] for p in points if set(p) == {"qp"}}
    # every step where the zoo goes from no loss to past a point, not a sample of them
    assert set(range(-26, -9)) | {-38, -32, -6, -2} == qps
    assert {p["sparsity"] for p in points if "sparsity" in p} == {0.7, 0.9}
    pruned = {(p["prune"], p["qp"]) for p in points if "prune" in p}
    assert pruned == {(pr, q) for pr in (0.9, 0.95) for q in (-26, -23, -20, -17, -14, -12, -10)}
    installed = nncodec_available()
    for point in points:
        if installed:
            assert make_codec("nncodec", **point).settings.use_dq is True
        else:  # the settings are checked before availability: only the install hint remains
            with pytest.raises(UserError) as e:
                make_codec("nncodec", **point)
            assert str(e.value) == NOT_INSTALLED, point


# ------------------------------------------------------------------ with NNCodec


def test_round_trip(nnc: None) -> None:
    state = small_state()
    qp = -32
    res = compress(state, "nncodec", qp=qp)
    c = loads(res.data)
    assert c.codec["name"] == "nncodec"
    code = [p for p in c.payloads if p.role == ROLE_CODE]
    assert [(p.name, p.kind) for p in code] == [(PAYLOAD, KIND)]
    assert res.accounting.ratio_honest > 1.0
    assert res.report["coded_tensors"] == 6  # the floats with elements

    back = decompress(res.data)
    assert list(back) == list(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
    for name in ("steps", "mask", "empty"):
        assert torch.equal(back[name], state[name])
    # Weights (2+ dims) within the dependent quantizer's reach of its step; the rest
    # (biases, scalars) at the much finer nonweight_qp (-75: step 2.4e-6).
    for name in ("conv.weight", "fc.weight"):
        err = (back[name] - state[name]).abs().max().item()
        assert err <= 2 * step(qp), (name, err)
    half_err = (back["half.weight"].float() - state["half.weight"].float()).abs().max().item()
    assert half_err <= 2 * step(qp) + 1e-3
    for name in ("conv.bias", "fc.bias", "scale"):
        assert torch.allclose(back[name], state[name], atol=1e-5), name


def test_ratio_grows_as_qp_gets_coarser(nnc: None) -> None:
    g = torch.Generator().manual_seed(1)
    state = {"a.weight": torch.randn(128, 96, generator=g) * 0.05,
             "a.bias": torch.randn(128, generator=g) * 0.05,
             "b.weight": torch.randn(10, 128, generator=g) * 0.1}
    qps = [-40, -28, -16]
    ratios, errors = [], []
    for qp in qps:
        res = compress(state, "nncodec", qp=qp)
        back = decompress(res.data)
        ratios.append(res.accounting.ratio_honest)
        errors.append((back["a.weight"] - state["a.weight"]).abs().max().item())
    assert all(a < b for a, b in pairwise(ratios)), ratios
    assert all(a < b for a, b in pairwise(errors)), errors


def test_settings_are_recorded_and_decode_needs_none(nnc: None) -> None:
    res = compress(small_state(), "nncodec", qp=-28, use_dq=False, nonweight_qp=None)
    c = loads(res.data)
    assert c.codec["settings"]["qp"] == -28
    assert c.codec["settings"]["use_dq"] is False
    back = decompress(res.data)  # the bitstream carries every decoding parameter
    err = (back["fc.weight"] - small_state()["fc.weight"]).abs().max().item()
    assert err <= step(-28)  # scalar quantization without DQ: at most about half a step


def test_corrupt_bitstream_is_a_format_error(nnc: None) -> None:
    c = loads(compress(small_state(), "nncodec").data)
    bad = [dataclasses.replace(p, data=p.data[:7]) if p.name == PAYLOAD else p
           for p in c.payloads]
    c.payloads = bad
    with pytest.raises(FormatError, match="NNC bitstream"):
        decompress(dumps(c))


def fnn_like_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"l1.weight": torch.randn(64, 96, generator=g) * 0.05,
            "l1.bias": torch.randn(64, generator=g) * 0.05,
            "l2.weight": torch.randn(10, 64, generator=g) * 0.1,
            "l2.bias": torch.randn(10, generator=g) * 0.05}


def toy_finetuner() -> Finetuner:
    """Pull the weights of l1 towards 0.1 * sign: any step moves the survivors."""
    def loss(state, batch):
        return ((state["l1.weight"] - 0.1 * batch).pow(2)).mean() + state["l2.weight"].pow(2).mean()

    def batches():
        g = torch.Generator().manual_seed(3)
        while True:
            yield torch.sign(torch.randn(64, 96, generator=g))

    return Finetuner(loss=loss, batches=batches, steps_per_epoch=3)


def pruned_positions(state: dict[str, torch.Tensor], prune: float) -> dict[str, torch.Tensor]:
    weights = {k: v for k, v in state.items() if v.dim() >= 2}
    return {k: ~m for k, m in magnitude_masks(weights, prune, scope="global").items()}


def test_prune_gives_exact_zeros_without_dq_and_fine_tunes(nnc: None) -> None:
    state = fnn_like_state()
    codec = make_codec("nncodec", qp=-20, prune=0.9, prune_epochs=1.0, use_dq=False)
    enc = codec.encode(state, CodecContext(progress=False, finetune=toy_finetuner()))
    assert enc.report["pruned_fraction"] == pytest.approx(0.9, abs=1e-3)
    assert len(enc.report["finetune_loss"]) > 0 and "note" not in enc.report
    back = codec.decode(enc.container, {})
    for k, zero in pruned_positions(state, 0.9).items():
        assert torch.equal(back[k][zero], torch.zeros(int(zero.sum()))), k
    assert not torch.equal(back["l1.weight"], state["l1.weight"])


def test_prune_with_dq_leaves_pruned_weights_within_one_step(nnc: None) -> None:
    # The trellis of dependent quantization may put a pruned zero on +-1 step to reach a
    # cheaper state for its neighbours; almost all stay zero.
    state, qp = fnn_like_state(), -20
    res = compress(state, "nncodec", qp=qp, prune=0.9)
    assert res.report["note"].startswith("no finetuner")
    back = decompress(res.data)
    for k, zero in pruned_positions(state, 0.9).items():
        vals = back[k][zero]
        assert vals.abs().max().item() <= step(qp) + 1e-7, k
        assert (vals == 0).float().mean().item() >= 0.9, k


def test_sparsity_option_and_times_inside_the_worker(nnc: None) -> None:
    state = fnn_like_state()
    codec = make_codec("nncodec", qp=-32, sparsity=0.8)
    assert codec.last_decode_s is None
    t0 = time.perf_counter()
    enc = codec.encode(state, CodecContext(progress=False))
    encode_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = codec.decode(enc.container, {})
    decode_wall = time.perf_counter() - t0
    coded = [back[k].reshape(-1) for k in back]
    zeros = float((torch.cat(coded) == 0).float().mean())
    assert zeros >= 0.75  # NNCodec's target counts all coded values, biases included
    r = enc.report
    assert 0 < r["encode_s_inside_worker"] < r["encode_s_worker_process"] <= encode_wall
    assert 0 < codec.last_decode_s < codec.last_decode_worker_s <= decode_wall
