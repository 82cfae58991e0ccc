"""Edge cases every codec must meet (issue 11): empty and scalar tensors, non-finite weights,
the checksum of the rebuilt tensors, hostile normalization statistics, and the same bytes from
the same input whatever its file format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_codec_contract import TINY_SETTINGS, TinyTask, _all_codecs
from vaecompress.api import DECODED_KEY, compress, decompress
from vaecompress.checksum import detectable_fraction
from vaecompress.codecs import REGISTRY, CodecContext
from vaecompress.errors import FormatError, UserError
from vaecompress.format import FORMAT_VERSION, dumps, loads
from vaecompress.io import load_weights_file, save_weights_file


def _run(codec: str, state: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, bytes]]:
    task = TinyTask() if REGISTRY[codec].uses_task else None
    ctx = task.ctx() if task else CodecContext(progress=False)
    res = compress(state, codec, ctx=ctx, **TINY_SETTINGS.get(codec, {}))
    return res.data, res.externals


@pytest.mark.parametrize("codec", _all_codecs())
def test_empty_and_scalar_tensors_round_trip(codec: str) -> None:
    state = dict(TinyTask().state)
    state |= {"empty2d": torch.zeros(0, 3), "empty1d": torch.zeros(0),
              "empty16": torch.zeros(2, 0, dtype=torch.float16), "scalar": torch.tensor(0.5)}
    data, externals = _run(codec, state)
    out = decompress(data, externals)
    assert list(out) == list(state)
    for k, v in state.items():
        assert out[k].shape == v.shape and out[k].dtype == v.dtype, k
    assert torch.isfinite(out["scalar"])
    if REGISTRY[codec].lossless:
        assert all(torch.equal(out[k], v) for k, v in state.items())


@pytest.mark.parametrize("codec", _all_codecs())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights(codec: str, bad: float) -> None:
    """A lossy codec refuses them naming the tensor; a lossless one keeps them exactly."""
    state = dict(TinyTask().state)
    w = state["0.weight"].clone()
    w[0, 1] = bad
    state["0.weight"] = w
    if REGISTRY[codec].lossless:
        out = decompress(*_run(codec, state))
        assert torch.equal(out["0.weight"].isnan(), w.isnan())
        assert torch.equal(torch.nan_to_num(out["0.weight"]), torch.nan_to_num(w))
        return
    with pytest.raises(UserError, match=r"'0\.weight' holds NaN or Inf"):
        _run(codec, state)


def _with_meta(data: bytes, version: int = FORMAT_VERSION, **meta: object) -> bytes:
    c = loads(data)
    c.meta.update(meta)
    return dumps(c, version=version)


def test_checksum_recorded_and_checked() -> None:
    state = TinyTask().state
    data, _ = _run("int8", state)
    record = loads(data).meta[DECODED_KEY]
    assert set(record) == {"sha256"} and len(record["sha256"]) == 64
    decompress(data)
    # A decoder that rebuilds other tensors (here: a recorded checksum that is not theirs).
    bad = _with_meta(data, **{DECODED_KEY: {"sha256": "0" * 64}})
    with pytest.raises(FormatError, match="checksum"):
        decompress(bad)
    with pytest.raises(FormatError, match="malformed"):
        decompress(_with_meta(data, **{DECODED_KEY: "x"}))


def test_a_wrong_decoder_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _run("int8", TinyTask().state)
    cls = REGISTRY["int8"]
    real = cls.decode

    def off_by_a_bit(self, c, externals):  # type: ignore[no-untyped-def]
        out = real(self, c, externals)
        out["0.weight"] = out["0.weight"] * 1.0001
        return out

    monkeypatch.setattr(cls, "decode", off_by_a_bit)
    with pytest.raises(FormatError, match="checksum"):
        decompress(data)


def test_lossy_decoding_to_non_finite_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _run("kmeans", TinyTask().state)
    data = _with_meta(data, 2, **{DECODED_KEY: None})  # as a file written before the checksum
    cls = REGISTRY["kmeans"]
    real = cls.decode

    def to_nan(self, c, externals):  # type: ignore[no-untyped-def]
        out = real(self, c, externals)
        out["2.weight"] = out["2.weight"] * math.nan
        return out

    monkeypatch.setattr(cls, "decode", to_nan)
    with pytest.raises(FormatError, match=r"'2\.weight' decodes to NaN"):
        decompress(data)


VAE_FAST = TINY_SETTINGS["vae-paper"]


@pytest.fixture(scope="module")
def vae_file() -> bytes:
    res = compress(TinyTask().state, "vae-paper", ctx=CodecContext(progress=False), **VAE_FAST)
    return res.data


@pytest.mark.parametrize("mean,std", [(0.0, 1e38), (1e300, 1.0), (0.0, 0.0), (0.0, -1.0),
                                      (0.0, "x"), (None, 1.0)])
def test_vae_paper_hostile_normalization_is_format_error(vae_file: bytes, mean: object,
                                                         std: object) -> None:
    c = loads(vae_file)
    stats = c.codec_state["normalization"]
    stats["mean"][0], stats["std"][0] = mean, std
    with pytest.raises(FormatError):
        decompress(dumps(c))
    c.codec_state["normalization"] = {"mode": "global", "mean": 0.0, "std": 1e38}
    with pytest.raises(FormatError):
        decompress(dumps(c))


def test_vae_paper_checksum_is_tolerant(vae_file: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A float decoder may differ by a few ulps elsewhere: the layout digest and the block
    check decide (`vaecompress.checksum`); an error of the detectable fraction is refused."""
    record = loads(vae_file).meta[DECODED_KEY]
    assert set(record) == {"sha256", "layout", "blocks"}
    ref = decompress(vae_file)
    cls = REGISTRY["vae-paper"]
    real = cls.decode

    def decode_with(change):  # type: ignore[no-untyped-def]
        def decode(self, c, externals):  # type: ignore[no-untyped-def]
            out = real(self, c, externals)
            out["0.weight"] = change(out["0.weight"].clone())
            return out
        monkeypatch.setattr(cls, "decode", decode)

    decode_with(lambda w: w * (1 + 2.0**-21))  # a few ulps on every weight: another CPU
    assert not torch.equal(decompress(vae_file)["0.weight"], ref["0.weight"])
    scale = float(ref["0.weight"].abs().max())
    bound = detectable_fraction("float32") * scale

    def bump(w: torch.Tensor) -> torch.Tensor:
        w.view(-1)[5] += bound
        return w

    decode_with(bump)
    with pytest.raises(FormatError, match="checksum"):
        decompress(vae_file)


def test_vae_paper_decoder_larger_than_its_bytes_is_refused(vae_file: bytes) -> None:
    c = loads(vae_file)
    c.codec_state["vae"]["hidden"] = [10**6]
    with pytest.raises(FormatError, match="declares"):
        decompress(dumps(c))


def test_declared_size_above_the_cap_is_refused() -> None:
    data, _ = _run("zstd", TinyTask().state)
    with pytest.raises(FormatError, match="limit"):
        decompress(data, max_bytes=100)


FAST_CODECS = ["zstd", "int8", "int4", "prune", "kmeans", "deep-compression"]

_DIGESTS = """
import hashlib, sys
from vaecompress.api import compress
from vaecompress.codecs import CodecContext
from vaecompress.io import load_weights_file
state, _ = load_weights_file(sys.argv[1])
for codec in sys.argv[2:]:
    data = compress(state, codec, ctx=CodecContext(progress=False, seed=0)).data
    print(codec, hashlib.sha256(data).hexdigest())
"""


def test_same_bytes_in_every_process_whatever_the_input_format(tmp_path: Path) -> None:
    """Each input format gives one file for the same weights, settings and seed, in every
    process; a .pt holding the tensors in the .safetensors file's stored order gives the very
    same bytes (the manifest order is the input's stored order)."""
    state = TinyTask().state
    st_path, pt_path = tmp_path / "m.safetensors", tmp_path / "m.pt"
    save_weights_file(st_path, state)
    stored, _ = load_weights_file(st_path)
    torch.save(dict(stored), pt_path)
    runs = {}
    for path in (st_path, pt_path):
        outs = {subprocess.run([sys.executable, "-c", _DIGESTS, str(path), *FAST_CODECS],
                               capture_output=True, text=True, check=True,
                               env=os.environ | {"OMP_NUM_THREADS": "1"}).stdout
                for _ in range(2)}
        assert len(outs) == 1, path
        runs[path.suffix] = outs.pop()
    assert runs[".safetensors"] == runs[".pt"]
    assert len(runs[".pt"].splitlines()) == len(FAST_CODECS)


def test_meta_is_json(vae_file: bytes) -> None:
    json.dumps(loads(vae_file).meta, allow_nan=False)
