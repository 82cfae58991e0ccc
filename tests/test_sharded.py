"""A model folder coded one shard at a time (issue 21, `sharded`): the file rebuilds what the
whole-model file of a per-tensor codec rebuilds, the default keeps its fidelity target over the
shards together, only one shard is alive at a time in either direction, and a file whose
members or layout were tampered with is refused in one line."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vaecompress import api
from vaecompress.cli import main
from vaecompress.codecs import make_codec
from vaecompress.codecs.base import get_codec_class
from vaecompress.errors import FormatError
from vaecompress.fidelity import combined, nsr_of_db, weights_fidelity
from vaecompress.folders import read_folder
from vaecompress.format import Container, Payload, dumps, load, loads
from vaecompress.sharded import stream

SHARDS = 4


def _folder(root: Path, shards: int = SHARDS) -> dict[str, torch.Tensor]:
    """A sharded Hugging Face folder whose shards differ in size and whose layers differ in
    scale (a layer 100x smaller than another), with an integer buffer and a float16 norm."""
    g = torch.Generator().manual_seed(7)
    root.mkdir()
    weight_map: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"layers.{k}.{j}.weight": torch.randn(32 * (k + 1), 48, generator=g)
                * (0.01 if j == 1 else 1.0) for j in range(2)}
        part[f"layers.{k}.norm.weight"] = (1 + 0.1 * torch.randn(48, generator=g)).half()
        part[f"layers.{k}.bias"] = torch.randn(48, generator=g) * 0.05
        if k == 0:
            part["position_ids"] = torch.arange(16)
        save_file(part, root / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
        state |= part
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
    (root / "config.json").write_text('{"model_type": "toy"}\n')
    return state


def _folder_state(root: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for p in sorted(root.glob("*.safetensors")):
        out |= load_file(p)
    return out


def _quiet() -> api.CodecContext:
    return api.CodecContext(progress=False)


def _streaming_codecs() -> list[str]:
    names = ["zstd", "int8", "int4", "kmeans", "hqq", "zipnn"]
    return [n for n in names if get_codec_class(n).available() is None]


@pytest.mark.parametrize("name", _streaming_codecs())
def test_a_per_tensor_codec_rebuilds_the_same_tensors_shard_by_shard(tmp_path: Path,
                                                                      name: str) -> None:
    """For a codec whose coding of a tensor depends on that tensor alone, coding the shards
    one at a time changes the file's framing, never a rebuilt weight."""
    _folder(tmp_path / "hf")
    state, _ = read_folder(tmp_path / "hf")  # in the shards' stored order
    codec = make_codec(name)
    assert codec.streams()
    out = tmp_path / "m.vrd"
    res = stream.compress_folder(tmp_path / "hf", out, codec, ctx=_quiet())
    whole = api.compress(state, codec, ctx=_quiet())
    got = api.decompress_file(out)
    assert list(got) == list(state)
    for k, t in whole.rebuilt.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    # The fidelity reported from the shards' is the whole model's.
    direct = weights_fidelity(state, got)
    assert res.fidelity["exact"] == direct["exact"]
    if not direct["exact"]:
        assert res.fidelity["snr_db"] == pytest.approx(direct["snr_db"], abs=1e-6)
        assert res.fidelity["worst_tensor"] == direct["worst_tensor"]
    assert res.accounting.file_bytes == out.stat().st_size
    assert res.accounting.orig_bytes == whole.accounting.orig_bytes


def test_the_default_keeps_its_target_over_the_shards_together(tmp_path: Path) -> None:
    """vae-rd-free gives each shard its share of the model's error budget (`for_part`): the
    rebuilt folder meets the target the user asked for, at about the size the whole model's
    file has."""
    state = _folder(tmp_path / "hf")
    for snr in (30.0, 12.0):
        codec = make_codec("vae-rd-free", snr=snr)
        out = tmp_path / f"m{snr:g}.vrd"
        res = stream.compress_folder(tmp_path / "hf", out, codec, ctx=_quiet())
        got = api.decompress_file(out)
        measured = weights_fidelity(state, got)["snr_db"]
        whole = api.compress(state, codec, ctx=_quiet())
        # The codec's NSR is of the float32 weights it decodes; storing the float16 norms
        # back in float16 costs both files a thousandth of a dB more.
        assert measured >= snr - 0.01
        assert measured >= whole.fidelity["snr_db"] - 0.01
        assert measured < snr + 1.0  # not bought by coding finer than asked
        assert res.fidelity["snr_db"] == pytest.approx(measured, abs=1e-6)
        assert abs(res.accounting.payload_bytes / whole.accounting.payload_bytes - 1) < 0.1


def test_shares_of_the_target_add_up_to_it() -> None:
    codec = make_codec("vae-rd-free", snr=30.0)
    parts = [1, 10, 100, 889]
    total = sum(parts)
    assert sum(nsr_of_db(codec.for_part(p, total).settings.snr) for p in parts) \
        == pytest.approx(nsr_of_db(30.0), rel=1e-9)
    assert codec.for_part(total, total) is codec
    assert not make_codec("vae-rd-free", size=10_000).streams()
    assert not make_codec("vae-rd-free", weighting="fisher").streams()
    assert not make_codec("kmeans", scope="global").streams()


def test_combined_fidelity_is_that_of_the_whole() -> None:
    g = torch.Generator().manual_seed(0)
    a = {f"t{i}": torch.randn(20, 10, generator=g) for i in range(6)}
    b = {k: v + 0.01 * (i + 1) * torch.randn(v.shape, generator=g)
         for i, (k, v) in enumerate(a.items())}
    a["t2"] = a["t2"] * 1e-3  # a small tensor, lost: counted apart
    b["t2"] = torch.zeros_like(a["t2"])
    keys = list(a)
    parts = [weights_fidelity({k: a[k] for k in ks}, {k: b[k] for k in ks})
             for ks in (keys[:1], keys[1:4], keys[4:])]
    whole = weights_fidelity(a, b)
    got = combined(parts)
    assert got["snr_db"] == pytest.approx(whole["snr_db"], abs=1e-9)
    assert got["worst_tensor"] == whole["worst_tensor"] == "t2"
    assert got["exact"] is False
    assert got["lost_tensors"] == whole["lost_tensors"] == 1
    for key in ("lost_energy", "others_snr_db", "energy"):
        assert got[key] == pytest.approx(whole[key], rel=1e-9)


def _alive(refs: list[weakref.ref]) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


def test_compress_holds_one_shard_at_a_time(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """When a shard is read, no tensor of the shards before it (nor their rebuilt copies) is
    alive: memory follows the largest shard, not the model."""
    _folder(tmp_path / "hf")
    refs: list[weakref.ref] = []
    alive_at_read: list[int] = []
    read, compress = stream.read_shard, stream.compress

    def watched_read(folder: Path, file: str):  # type: ignore[no-untyped-def]
        alive_at_read.append(_alive(refs))
        part, meta = read(folder, file)
        refs.extend(weakref.ref(t) for t in part.values())
        return part, meta

    def watched_compress(part, *a, **kw):  # type: ignore[no-untyped-def]
        res = compress(part, *a, **kw)
        refs.extend(weakref.ref(t) for t in res.rebuilt.values())
        return res

    monkeypatch.setattr(stream, "read_shard", watched_read)
    monkeypatch.setattr(stream, "compress", watched_compress)
    stream.compress_folder(tmp_path / "hf", tmp_path / "m.vrd", make_codec("int8"),
                           ctx=_quiet())
    assert alive_at_read == [0] * SHARDS


def test_decompress_holds_one_shard_at_a_time(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    stream.compress_folder(tmp_path / "hf", packed, make_codec("int8"), ctx=_quiet())
    refs: list[weakref.ref] = []
    alive_at_decode: list[int] = []
    decode, load = stream.decompress_container, stream.load_payloads
    reads: list[tuple[object, object]] = []

    def watched(member):  # type: ignore[no-untyped-def]
        alive_at_decode.append(_alive(refs))
        part = decode(member)
        refs.extend(weakref.ref(t) for t in part.values())
        return part

    def loading(path, names, *, within=None):  # type: ignore[no-untyped-def]
        reads.append((names, within))
        return load(path, names, within=within)

    monkeypatch.setattr(stream, "decompress_container", watched)
    monkeypatch.setattr(stream, "load_payloads", loading)
    stream.decompress_folder(packed, tmp_path / "out")
    assert alive_at_decode == [0] * SHARDS
    assert sorted(_folder_state(tmp_path / "out")) == sorted(state)
    # each member's payloads read where they lie, never the member's bytes as one string
    assert len(reads) == SHARDS and all(names is None and within is not None
                                        for names, within in reads)


def _tampered(path: Path, out: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """The file rewritten after `edit(container)`, every integrity field recomputed."""
    c = load(path)
    edit(c)
    out.write_bytes(dumps(c))
    return out


def _swap_members(c: Container) -> None:
    p = c.payloads
    p[0], p[1] = (Payload(p[0].name, p[0].kind, p[0].role, p[1].data),
                  Payload(p[1].name, p[1].kind, p[1].role, p[0].data))


def _drop_member(c: Container) -> None:
    c.payloads.pop()


def _swap_layout(c: Container) -> None:
    shards = c.meta["vaecompress.folder"]["shards"]
    shards[0]["tensors"], shards[1]["tensors"] = shards[1]["tensors"], shards[0]["tensors"]


def _rename_in_manifest(c: Container) -> None:
    c.tensors[0]["name"] = "renamed.weight"
    c.meta["vaecompress.folder"]["shards"][0]["tensors"][0] = "renamed.weight"


@pytest.mark.parametrize("edit", [_swap_members, _drop_member, _swap_layout,
                                  _rename_in_manifest])
def test_a_tampered_sharded_file_is_refused_in_one_line(tmp_path: Path, edit,  # type: ignore
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    stream.compress_folder(tmp_path / "hf", packed, make_codec("int8"), ctx=_quiet())
    bad = _tampered(packed, tmp_path / "bad.vrd", edit)
    with pytest.raises(FormatError):
        api.decompress(bad.read_bytes())
    capsys.readouterr()
    assert main(["decompress", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_the_command_line_streams_a_sharded_folder_and_inspect_reads_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    capsys.readouterr()
    assert main(["compress", str(tmp_path / "hf"), "-o", str(packed)]) == 0
    captured = capsys.readouterr()
    assert f"{SHARDS} shards coded one at a time" in captured.err
    assert "vae-rd-free: weights SNR 30.0 dB" in captured.out
    assert loads(packed.read_bytes()).codec["name"] == "shards"
    assert main(["inspect", str(packed)]) == 0
    assert f"{SHARDS} shards, each its own file (vae-rd-free)" in capsys.readouterr().out
    assert main(["decompress", str(packed), "-o", str(tmp_path / "out")]) == 0
    got = _folder_state(tmp_path / "out")
    assert weights_fidelity(state, got)["snr_db"] >= 30.0 - 0.01
    assert (tmp_path / "out" / "config.json").read_bytes() == \
        (tmp_path / "hf" / "config.json").read_bytes()
    # A base, or a codec that needs the whole model, takes the whole-model path.
    whole = tmp_path / "whole.vrd"
    assert main(["compress", str(tmp_path / "hf"), "-o", str(whole), "--codec", "kmeans",
                 "--set", "scope=global", "--quiet"]) == 0
    assert loads(whole.read_bytes()).codec["name"] == "kmeans"


def test_a_damaged_member_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A byte of a member changed (the outer sha256 not recomputed): refused in one line, and
    nothing of the folder is left. (The outer hash and the member's own both cover every byte
    of a member; either refuses it.)"""
    _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    stream.compress_folder(tmp_path / "hf", packed, make_codec("zstd"), ctx=_quiet())
    data = bytearray(packed.read_bytes())
    data[-100] ^= 0x01  # inside the last member
    bad = tmp_path / "bad.vrd"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="sha256 mismatch"):
        stream.decompress_folder(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
