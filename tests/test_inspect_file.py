"""`inspect` of a file read in place (`inspection.inspect_file`, `format.read_index`): the same
summary as from the file's bytes, in the memory of its headers, and every payload still checked
against its sha256 (a sharded file's members too)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import torch

from test_sharded import _folder  # the sharded test folder
from vaecompress import api
from vaecompress.cli import main
from vaecompress.codecs import make_codec
from vaecompress.errors import FormatError
from vaecompress.format import container, loads, read_index
from vaecompress.inspection import inspect, inspect_file
from vaecompress.sharded import stream


def _quiet() -> api.CodecContext:
    return api.CodecContext(progress=False)


def _file(path: Path, n: int = 2**20, codec: str = "zstd") -> Path:
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(n, generator=g), "b": torch.randn(16, generator=g)}
    path.write_bytes(api.compress(state, codec, ctx=_quiet()).data)
    return path


def test_in_place_is_the_summary_of_the_bytes(tmp_path: Path) -> None:
    for codec in ("zstd", "vae-rd-free", "int8"):
        path = _file(tmp_path / f"{codec}.vrd", 4096, codec)
        assert inspect_file(path) == inspect(path.read_bytes())


def test_inspect_names_the_format_version(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A file written before format 4 reads as its own version (an older reader refuses a newer
    file: the version says why)."""
    path = _file(tmp_path / "m.vrd", 4096)
    old = tmp_path / "old.vrd"
    old.write_bytes(container.dumps(loads(path.read_bytes()), version=3))
    for p, version in ((path, container.FORMAT_VERSION), (old, 3)):
        assert inspect_file(p)["format_version"] == version
        assert main(["inspect", str(p)]) == 0
        assert f" B (format {version})\n" in capsys.readouterr().out


def test_a_sharded_file_in_place_is_the_summary_of_its_bytes(tmp_path: Path) -> None:
    _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    stream.compress_folder(tmp_path / "hf", packed, make_codec("zstd"), ctx=_quiet())
    info = inspect_file(packed)
    assert info == inspect(packed.read_bytes())
    assert info["shards"]["members"] == 4


def test_in_place_holds_a_chunk_not_the_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path / "big.vrd")  # about 4 MB of payload
    assert path.stat().st_size > 3_000_000
    monkeypatch.setattr(container, "_HASH_CHUNK", 64 * 1024)
    tracemalloc.start()
    try:
        inspect_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_a_damaged_payload_is_refused_in_place(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path / "m.vrd", 4096)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.vrd"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="sha256 mismatch"):
        read_index(bad)
    with pytest.raises(FormatError, match="truncated"):
        short = tmp_path / "short.vrd"
        short.write_bytes(path.read_bytes()[:-5])
        read_index(short)
    capsys.readouterr()
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0]


def test_a_damaged_member_of_a_sharded_file_is_refused_in_place(tmp_path: Path) -> None:
    """The outer file's hashes recomputed over a member whose own payload was changed: only
    the member's own sha256 can tell."""
    _folder(tmp_path / "hf")
    packed = tmp_path / "m.vrd"
    stream.compress_folder(tmp_path / "hf", packed, make_codec("zstd"), ctx=_quiet())
    c = loads(packed.read_bytes())
    member = bytearray(c.payloads[1].data)
    member[-3] ^= 0xFF
    c.payloads[1] = container.Payload(c.payloads[1].name, c.payloads[1].kind,
                                      c.payloads[1].role, bytes(member))
    bad = tmp_path / "bad.vrd"
    bad.write_bytes(container.dumps(c, version=c.format_version))
    with pytest.raises(FormatError, match="sha256 mismatch"):
        inspect_file(bad)
    with pytest.raises(FormatError, match="sha256 mismatch"):
        inspect(bad.read_bytes())


def test_load_payloads_reads_only_what_it_is_asked(tmp_path: Path) -> None:
    path = _file(tmp_path / "m.vrd", 4096)
    whole = loads(path.read_bytes())
    names = [p.name for p in whole.payloads]
    part = container.load_payloads(path, names[:1])
    assert [p.name for p in part.payloads] == names[:1]
    assert part.payloads[0] == whole.payloads[0]
    with pytest.raises(FormatError, match="no payload"):
        container.load_payloads(path, ["nothing"])
