"""The optional peer codecs `hqq` (HQQ quantization) and `zipnn` (ZipNN lossless).

The codec contract and golden digests of both run in `test_codec_contract.py` (skipped there,
with the install hint, when a peer is absent). Here: the "not installed" path (everywhere), and,
with the packages (`scripts/setup.sh hqq zipnn`), zipnn's exact round trip and its guard in
front of ZipNN's C decoder, hqq's error bound derived from bits and group size, its agreement
with the package's own dequantization, and that its byte count is what the file stores.
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from vaecompress.api import compress, decompress
from vaecompress.codecs import REGISTRY, CodecContext, hqq_peer, make_codec, zipnn_peer
from vaecompress.codecs.base import PASSTHROUGH
from vaecompress.coding.floats import tensor_bytes
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload, dumps, loads
from vaecompress.io import state_from_bytes, state_to_bytes


@pytest.fixture
def hqq() -> None:
    if not hqq_peer.hqq_available():
        pytest.skip(hqq_peer.NOT_INSTALLED)


@pytest.fixture
def zipnn() -> None:
    if not zipnn_peer.zipnn_available():
        pytest.skip(zipnn_peer.NOT_INSTALLED)


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.2,  # 216: not a multiple of 64
        "conv.bias": torch.randn(8, generator=g) * 0.1,
        "fc.weight": torch.randn(16, 128, generator=g) * 0.05,
        "fc.bias": torch.randn(16, generator=g) * 0.05,
        "tiny.weight": torch.randn(3, 5, generator=g),  # smaller than a group: kept
        "half.weight": (torch.randn(4, 32, generator=g) * 0.1).half(),
        "scale": torch.tensor(0.75),
        "empty": torch.zeros(0, 4),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


# --------------------------------------------------------------- without the packages


@pytest.mark.parametrize(("codec", "module", "cache"), [
    ("hqq", hqq_peer, "_HQQ"), ("zipnn", zipnn_peer, "_ZIPNN")])
def test_missing_peer_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch, codec: str,
                                                 module: object, cache: str) -> None:
    monkeypatch.setattr(module, cache, {"why": f"ModuleNotFoundError: No module named '{codec}'"})
    hint = REGISTRY[codec].available()
    assert hint == module.NOT_INSTALLED  # type: ignore[attr-defined]
    assert "\n" not in hint and f"scripts/setup.sh {codec}" in hint
    with pytest.raises(UserError) as e:
        make_codec(codec)
    assert str(e.value) == hint
    with pytest.raises(UserError) as e:
        compress(model_state(), codec)
    assert str(e.value) == hint
    # Another failure of the import (a broken build) is named after the hint.
    monkeypatch.setattr(module, cache, {"why": "ImportError: undefined symbol: foo"})
    assert REGISTRY[codec].available() == f"{hint} [ImportError: undefined symbol: foo]"


def test_settings_are_checked_when_the_codec_is_made(hqq: None) -> None:
    for bad in ({"bits": 7}, {"bits": 1.58}, {"group_size": 1}, {"axis": 2},
                {"scale_dtype": "bfloat16"}, {"keep_dtype": "float64"}, {"round_zero": "yes"}):
        with pytest.raises(UserError):
            make_codec("hqq", **bad)


def test_hqq_full_preset_is_a_dense_sweep() -> None:
    points = REGISTRY["hqq"].operating_points("full")
    assert {(p["bits"], p["group_size"]) for p in points} == {
        (b, g) for b in (2, 3, 4, 5, 6, 8) for g in (16, 32, 64, 128, 256)}
    assert REGISTRY["hqq"].operating_points("quick") == [{"bits": 4, "group_size": 64}]


# --------------------------------------------------------------------------- zipnn


def test_zipnn_round_trip_is_exact(zipnn: None) -> None:
    state = model_state()
    state["fc.weight"][0, :4] = torch.tensor([math.nan, math.inf, -math.inf, -0.0])
    state["double"] = torch.randn(5, 7, dtype=torch.float64)
    state["brain"] = torch.randn(33, dtype=torch.bfloat16)
    res = compress(state, "zipnn")
    out = decompress(res.data, res.externals)
    assert list(out) == list(state)
    for k, v in state.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert tensor_bytes(out[k]) == tensor_bytes(v)  # bit for bit, NaN and -0.0 included
    c = loads(res.data)
    code = [p for p in c.payloads if p.role == ROLE_CODE]
    assert sorted(p.name for p in code) == ["bfloat16.0", "float16.0", "float32.0", "float64.0"]
    assert res.accounting.payload_bytes == sum(len(p.data) for p in code)
    assert res.accounting.file_bytes == len(res.data)
    stats: dict = {}
    decompress(res.data, stats=stats)
    assert stats["decode_s_inside"] >= 0  # ZipNN's own time, inside its worker


def test_zipnn_segments_a_large_dtype(zipnn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zipnn_peer, "SEGMENT_BYTES", zipnn_peer.CHUNK)
    g = torch.Generator().manual_seed(1)
    state = {"a": torch.randn(100_000, generator=g) * 0.02,  # 400 kB
             "b": torch.randn(90_000, generator=g) * 0.02}  # 360 kB: 760 kB = 3 segments
    res = compress(state, "zipnn")
    names = sorted(p.name for p in loads(res.data).payloads)
    assert names == ["float32.0", "float32.1", "float32.2"]
    out = decompress(res.data)
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_zipnn_compresses_trained_like_weights(zipnn: None) -> None:
    """The exponent byte of Gaussian weights is skewed: ZipNN saves well over 10 %."""
    g = torch.Generator().manual_seed(2)
    state = {"w": torch.randn(512, 512, generator=g) * 0.03}
    enc = make_codec("zipnn").encode(state, CodecContext(progress=False))
    assert enc.report["raw_bytes"] == 512 * 512 * 4
    assert enc.report["zipnn_bytes"] < 0.9 * enc.report["raw_bytes"]
    assert enc.report["zipnn_bytes"] == sum(len(p.data) for p in enc.container.payloads)


def _stream() -> tuple[bytes, int]:
    raw = (np.random.default_rng(3).standard_normal(150_000) * 0.05).astype(np.float32)
    return zipnn_peer.compress_words(raw.tobytes(), "float32"), raw.nbytes


def _set_u64(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + value.to_bytes(8, "little") + data[pos + 8:]


def test_zipnn_guard_refuses_damaged_streams(zipnn: None) -> None:
    """Every damage that would send ZipNN's C decoder out of bounds is a FormatError first."""
    stream, raw_len = _stream()
    zipnn_peer.check_stream(stream, "float32", raw_len)  # the intact stream passes
    chunks = -(-raw_len // zipnn_peer.CHUNK)
    types, table = zipnn_peer.HEADER, zipnn_peer.HEADER + 4 * chunks
    coded = next(i for i in range(4 * chunks) if stream[types + i] == zipnn_peer.CHUNK_HUFFMAN)
    damaged = {
        "truncated": stream[:-1],
        "too long": stream + b"\0",
        "header only": stream[:zipnn_peer.HEADER],
        "magic": b"XX" + stream[2:],
        "version": stream[:2] + b"\x09" + stream[3:],
        "byte grouping": stream[:5] + b"\x0a" + stream[6:],
        "chunk size": stream[:14] + b"\x10" + stream[15:],
        "original length": _set_u64(stream, 16, raw_len + 4),
        "stored length": _set_u64(stream, 24, len(stream) + 1),
        "chunk type": stream[:types] + b"\x07" + stream[types + 1:],
        "coded chunk marked raw": stream[:types + coded] + b"\x00" + stream[types + coded + 1:],
        "cumulative size": _set_u64(stream, table, 2**40),
        "shrinking cumulative": _set_u64(stream, table + 8, 0),
    }
    for what, data in damaged.items():
        with pytest.raises(FormatError):  # by the guard: ZipNN's decoder never sees it
            zipnn_peer.check_stream(data, "float32", raw_len)
            pytest.fail(f"{what}: accepted")
        with pytest.raises(FormatError):
            zipnn_peer.decompress_words(data, "float32", raw_len)
    with pytest.raises(FormatError):
        zipnn_peer.check_stream(stream, "float32", raw_len - 4)  # manifest disagrees
    with pytest.raises(FormatError):
        zipnn_peer.check_stream(stream, "float16", raw_len)


def test_zipnn_damaged_huffman_data_never_crashes_this_process(
        zipnn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage inside Huffman-coded bytes passes the guard (only decoding can tell): ZipNN's
    decoder may then free a buffer twice and abort, which it does in its worker process."""
    stream, raw_len = _stream()
    chunks = -(-raw_len // zipnn_peer.CHUNK)
    data_start = zipnn_peer.HEADER + 4 * chunks * 9
    rng = np.random.default_rng(5)
    for _ in range(12):
        pos = int(rng.integers(data_start, len(stream)))
        damaged = stream[:pos] + bytes([stream[pos] ^ 0xFF]) + stream[pos + 1:]
        zipnn_peer.check_stream(damaged, "float32", raw_len)  # the guard cannot see it
        # Garbage of the right length or a FormatError; a crash would end the test run.
        with contextlib.suppress(FormatError):
            assert len(zipnn_peer.decompress_words(damaged, "float32", raw_len)) == raw_len
    monkeypatch.setattr(zipnn_peer, "WORKER_SOURCE", "import os; os.abort()")
    with pytest.raises(FormatError, match="corrupt"):
        zipnn_peer.decompress_words(stream, "float32", raw_len)


def test_zipnn_file_with_wrong_payloads_is_a_format_error(zipnn: None) -> None:
    res = compress(model_state(), "zipnn")
    c = loads(res.data)
    for change in ("drop", "rename"):
        c2 = loads(res.data)
        p = next(p for p in c2.payloads if p.name == "float32.0")
        if change == "drop":
            c2.payloads.remove(p)
        else:
            c2.payloads[c2.payloads.index(p)] = Payload("float32.1", p.kind, p.role, p.data)
        with pytest.raises(FormatError):
            decompress(dumps(c2))
    assert c.payload("float32.0").kind == zipnn_peer.KIND


# ----------------------------------------------------------------------------- hqq


def _group_index(n: int, group_size: int, axis: int) -> np.ndarray:
    """The group of each flat position of a tensor of n elements under HQQ's layout."""
    groups = -(-n // group_size)
    p = np.arange(n)
    return p // group_size if axis == 1 else p % groups


def _half_step_bound(w: torch.Tensor, bits: int, group_size: int, axis: int) -> np.ndarray:
    """Per element: half the min-max step of its group, (max - min) / (2**bits - 1) / 2; HQQ
    floors the step at 1 / 2e4 (its inverse is clamped for float16 meta)."""
    x = w.reshape(-1).double().numpy()
    g = _group_index(x.size, group_size, axis)
    ng = int(g.max()) + 1
    lo = np.full(ng, np.inf)
    hi = np.full(ng, -np.inf)
    np.minimum.at(lo, g, x)
    np.maximum.at(hi, g, x)
    assert (hi - lo > 1e-4).all()  # HQQ's degenerate-group rule (step 1) does not arise here
    step = np.maximum((hi - lo) / (2**bits - 1), 1 / hqq_peer.INV_STEP_MAX)
    return (step / 2)[g]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_hqq_min_max_error_is_at_most_half_a_step_per_group(
        hqq: None, bits: int, group_size: int, axis: int) -> None:
    g = torch.Generator().manual_seed(bits * 1000 + group_size + axis)
    state = {"fc": torch.randn(24, 80, generator=g) * 0.05,  # 1920: pads at group 128
             "conv": torch.randn(6, 5, 3, 3, generator=g) * 0.2,  # 270: pads everywhere
             "skew": torch.rand(10, 64, generator=g) + 2.0}  # far from zero
    res = compress(state, "hqq", bits=bits, group_size=group_size, axis=axis,
                   optimize=False, round_zero=False, scale_dtype="float32")
    out = decompress(res.data)
    for k, w in state.items():
        err = (out[k] - w).abs().reshape(-1).double().numpy()
        bound = _half_step_bound(w, bits, group_size, axis)
        assert (err <= bound * (1 + 1e-6) + 1e-7).all(), k
        assert err.max() > 0.25 * bound.max()  # a real quantizer, not a lossless copy


def _arrays(data: bytes) -> dict[str, torch.Tensor]:
    return state_from_bytes(loads(data).payload(hqq_peer.PAYLOAD).data)


def test_hqq_optimized_grid_holds_every_weight_within_half_a_stored_step(hqq: None) -> None:
    """With the solver (HQQ's default) the zero-point moves: a weight inside the shifted grid
    is within half a step of its value, one outside decodes to the grid's end."""
    state = model_state()
    res = compress(state, "hqq")  # 4 bits, group 64, axis 1, optimize, float16 step/zero
    out, arrays = decompress(res.data), _arrays(res.data)
    names = list(state)
    for k in ("conv.weight", "fc.weight", "half.weight"):
        i = names.index(k)
        step = arrays[f"{i}.step"].double().numpy()
        zero = arrays[f"{i}.zero"].double().numpy()
        x = state[k].reshape(-1).double().numpy()
        grp = _group_index(x.size, 64, 1)
        lo, hi = (0 - zero[grp]) * step[grp], (15 - zero[grp]) * step[grp]
        y = out[k].reshape(-1).double().numpy()
        tol = 1e-6 if state[k].dtype == torch.float32 else 2e-3 * np.abs(x).max()
        inside = (x >= lo) & (x <= hi)
        assert (np.abs(y - x)[inside] <= step[grp][inside] / 2 + tol).all()
        assert np.allclose(y[~inside], np.clip(x, lo, hi)[~inside], atol=tol)


def test_hqq_matches_the_packages_own_dequantization(hqq: None) -> None:
    from hqq.core.quantize import Quantizer

    g = torch.Generator().manual_seed(4)
    w = torch.randn(32, 128, generator=g) * 0.05
    res = compress({"w": w}, "hqq", bits=3, group_size=64, scale_dtype="float32")
    ours = decompress(res.data)["w"]
    w_q, meta = Quantizer.quantize(w, nbits=3, group_size=64, axis=1, optimize=True,
                                   round_zero=False, bitpack=False, device="cpu")
    meta["compute_dtype"] = torch.float32
    theirs = Quantizer.dequantize(w_q, meta)
    step = float(meta["scale"].max())
    same = (ours - theirs).abs() <= 1e-6
    assert same.float().mean() > 0.999  # codes differ only at rounding ties, if ever
    assert float((ours - theirs).abs().max()) <= step * 1.0001


def test_hqq_byte_count_is_what_the_file_stores(hqq: None) -> None:
    state = model_state()
    bits, gs = 3, 64
    codec = make_codec("hqq", bits=bits, group_size=gs)
    enc = codec.encode(state, CodecContext(progress=False))
    payload = enc.container.payload(hqq_peer.PAYLOAD).data
    arrays = state_from_bytes(payload)
    names = list(state)
    expected: dict[str, tuple[torch.dtype, int]] = {}
    for k in ("conv.weight", "fc.weight", "half.weight"):  # quantized: padded codes, per group
        n = state[k].numel()
        groups = -(-n // gs)
        i = names.index(k)
        expected[f"{i}.q"] = (torch.uint8, (groups * gs * bits + 7) // 8)
        expected[f"{i}.step"] = expected[f"{i}.zero"] = (torch.float16, groups)
    for k in ("conv.bias", "fc.bias", "tiny.weight", "scale"):  # kept exactly, float32
        expected[f"{names.index(k)}.keep"] = (torch.float32, state[k].numel())
    assert {k: (v.dtype, v.numel()) for k, v in arrays.items()} == expected
    nbytes = sum(v.numel() * v.element_size() for v in arrays.values())
    header = 8 + int.from_bytes(payload[:8], "little")
    assert len(payload) == header + nbytes  # the arrays and safetensors' header, nothing else
    meta = json.loads(payload[8:header])
    assert set(meta) - {"__metadata__"} == set(expected)  # the header names only these arrays
    r = enc.report
    assert r["kept_tensors"] == 4 and r["quantized_tensors"] == 3
    assert r["code_bytes"] + r["scale_bytes"] + r["kept_bytes"] == nbytes
    assert r["padding_codes"] == sum(-(-state[k].numel() // gs) * gs - state[k].numel()
                                     for k in ("conv.weight", "fc.weight", "half.weight"))
    res = compress(state, "hqq", bits=bits, group_size=gs)
    c = loads(res.data)
    assert res.accounting.payload_bytes == len(payload)  # the one code payload
    assert [p.name for p in c.payloads] == [hqq_peer.PAYLOAD, PASSTHROUGH]
    assert c.payload(hqq_peer.PAYLOAD).data == payload
    out = decompress(res.data)
    for k in ("conv.bias", "fc.bias", "tiny.weight", "scale"):
        assert torch.equal(out[k], state[k])  # kept tensors are exact


def test_hqq_decodes_from_its_payload_alone(hqq: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding uses no hqq code: it works with the quantizer made unreachable."""
    res = compress(model_state(), "hqq")
    before = decompress(res.data)
    monkeypatch.setattr(hqq_peer, "_quantizer", lambda: None)
    monkeypatch.setattr(hqq_peer.HQQCodec, "available", classmethod(lambda cls: None))
    after = decompress(res.data)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _with_arrays(data: bytes, change: dict[str, torch.Tensor | None]) -> bytes:
    c = loads(data)
    arrays = dict(state_from_bytes(c.payload(hqq_peer.PAYLOAD).data))
    for k, v in change.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    p = c.payload(hqq_peer.PAYLOAD)
    c.payloads[c.payloads.index(p)] = Payload(p.name, p.kind, p.role, state_to_bytes(arrays))
    return dumps(c)


def test_hqq_malformed_payload_is_a_format_error(hqq: None) -> None:
    state = model_state()
    res = compress(state, "hqq")
    i = list(state).index("fc.weight")
    step = _arrays(res.data)[f"{i}.step"]
    for change in ({f"{i}.step": step.float()},  # wrong dtype
                   {f"{i}.step": step[:-1]},  # too few groups
                   {f"{i}.q": None},  # missing codes
                   {"99.keep": torch.zeros(3)},  # an array with no place
                   {f"{i}.step": torch.full_like(step, 6e4)}):  # rebuilds Inf
        with pytest.raises(FormatError):
            decompress(_with_arrays(res.data, change))
    c = loads(res.data)
    for bad in ({"bits": 7}, {"group_size": 0}, {"axis": "1"}, {"scale": "int8"}, {},
                {"scale": [0]}, {"keep": {"a": 1}}):  # unhashable: found by the fuzz test
        c2 = Container(codec=c.codec, tensors=c.tensors, payloads=c.payloads,
                       codec_state={**c.codec_state, **bad} if bad else {})
        with pytest.raises(FormatError):
            decompress(dumps(c2))


def test_hqq_float16_meta_out_of_range_is_a_user_error(hqq: None) -> None:
    w = torch.linspace(1e5, 1e5 + 1, 128).reshape(2, 64)  # zero-point -1e5 * 15 overflows fp16
    with pytest.raises(UserError, match="scale_dtype=float32"):
        compress({"w": w}, "hqq", round_zero=False)
    out = decompress(compress({"w": w}, "hqq", scale_dtype="float32").data)
    assert torch.isfinite(out["w"]).all()


def test_hqq_installation_check_passes(hqq: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert hqq_peer.main() == 0
    assert "round trip ok" in capsys.readouterr().out
