"""Hugging Face model folders in and out (issue 21): a sharded folder (index + shards, config
and tokenizer files) compresses to one file and decompresses to the same layout, byte for byte
with zstd and within the codec's bound with int8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vaecompress.cli import main

OTHER = {"config.json": b'{"model_type": "toy", "hidden_size": 16}\n',
         "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
         "generation_config.json": b'{"do_sample": false}\n'}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {"embed.weight": torch.randn(32, 16, generator=g)}
    for i in range(4):
        out[f"layers.{i}.q.weight"] = torch.randn(16, 16, generator=g)
        out[f"layers.{i}.norm.weight"] = torch.randn(16, generator=g).half()
    out["position_ids"] = torch.arange(8)
    return out


def _sharded(root: Path, shards: int = 3) -> dict[str, torch.Tensor]:
    """A folder as transformers' save_pretrained writes it: shards with {"format": "pt"}, the
    index (sorted keys, two-space indent), config and tokenizer files."""
    tensors = _tensors()
    root.mkdir()
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, root / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(
        json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name, data in OTHER.items():
        (root / name).write_bytes(data)
    return tensors


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _round_trip(src: Path, tmp_path: Path, codec: str) -> Path:
    packed, out = tmp_path / "m.vaec", tmp_path / "out"
    assert main(["compress", str(src), "-o", str(packed), "--codec", codec, "--quiet"]) == 0
    assert packed.is_file()
    assert main(["decompress", str(packed), "-o", str(out)]) == 0
    return out


def test_sharded_folder_round_trips_byte_for_byte_with_zstd(tmp_path: Path) -> None:
    _sharded(tmp_path / "hf")
    out = _round_trip(tmp_path / "hf", tmp_path, "zstd")
    assert _files(out) == _files(tmp_path / "hf")


def test_single_file_folder_round_trips_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    save_file(_tensors(), src / "model.safetensors", metadata={"format": "pt"})
    (src / "config.json").write_bytes(OTHER["config.json"])
    out = _round_trip(src, tmp_path, "zstd")
    assert _files(out) == _files(src)


def test_sharded_folder_with_a_lossy_codec_keeps_layout_and_bound(tmp_path: Path) -> None:
    tensors = _sharded(tmp_path / "hf")
    out = _round_trip(tmp_path / "hf", tmp_path, "int8")
    src = _files(tmp_path / "hf")
    got = _files(out)
    assert list(got) == list(src)
    for name in [*OTHER, "model.safetensors.index.json"]:
        assert got[name] == src[name]  # copied through untouched
    for name in src:
        if not name.endswith(".safetensors"):
            continue
        a, b = load_file(tmp_path / "hf" / name), load_file(out / name)
        assert list(a) == list(b)
        for k, t in a.items():
            assert b[k].dtype == t.dtype and b[k].shape == t.shape
            if not t.is_floating_point():
                assert torch.equal(b[k], t)
                continue
            # int8, affine per channel: an error of at most half a step of the row's range
            # over 255 levels (matrices); vectors are stored as float32 (float16 here: exact)
            x = t.float().reshape(t.shape[0], -1) if t.dim() >= 2 else t.float().reshape(1, -1)
            step = (x.max(1).values - x.min(1).values) / 255
            err = (b[k].float().reshape(x.shape) - x).abs()
            assert bool((err <= step[:, None] / 2 * 1.001 + 1e-7).all()), k
    assert set(tensors) == {k for n in src if n.endswith(".safetensors")
                            for k in load_file(tmp_path / "hf" / n)}


def test_folder_refusals_are_one_line_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes(b"{}")
    capsys.readouterr()
    assert main(["compress", str(empty), "-o", str(tmp_path / "x.vaec"), "--codec", "zstd"]) == 2
    err = capsys.readouterr().err
    # A folder without a model file is read as a run's checkpoints (family.commands), and
    # holds none either.
    assert "holds no weights file" in err and len(err.strip().splitlines()) == 1
    _sharded(tmp_path / "hf")
    packed = tmp_path / "m.vaec"
    assert main(["compress", str(tmp_path / "hf"), "-o", str(packed), "--codec", "zstd",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["decompress", str(packed), "-o", str(tmp_path / "hf")]) == 2  # exists
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_pytorch_bin_shards_with_their_index_round_trip(tmp_path: Path) -> None:
    """`pytorch_model.bin.index.json` and its `.bin` shards (read with weights_only): the
    same tensors, shards, index and files come back."""
    src = tmp_path / "hf"
    src.mkdir()
    tensors = _tensors()
    names = list(tensors)
    weight_map = {}
    for k in range(2):
        file = f"pytorch_model-{k + 1:05d}-of-00002.bin"
        part = {n: tensors[n] for n in names[k::2]}
        torch.save(part, src / file)
        weight_map |= {n: file for n in part}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (src / "config.json").write_bytes(OTHER["config.json"])
    out = _round_trip(src, tmp_path, "zstd")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert (out / "pytorch_model.bin.index.json").read_bytes() == \
        (src / "pytorch_model.bin.index.json").read_bytes()
    for k in range(2):
        file = f"pytorch_model-{k + 1:05d}-of-00002.bin"
        got = torch.load(out / file, weights_only=True)
        want = torch.load(src / file, weights_only=True)
        assert list(got) == list(want)
        for n in want:
            assert torch.equal(got[n], want[n]) and got[n].dtype == want[n].dtype


def test_a_bin_index_listing_other_files_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    save_file(_tensors(), src / "model.safetensors")
    (src / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"embed.weight": "model.safetensors"}}))
    assert main(["compress", str(src), "-o", str(tmp_path / "m.vaec"), "--codec", "zstd",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a .bin shard" in err[0]
