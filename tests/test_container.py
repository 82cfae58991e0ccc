"""Tests for vaecompress.format.container: round trip, golden bytes, determinism, every
reader error, hostile headers, and atomic save."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest

from vaecompress.errors import FormatError, UserError
from vaecompress.format import container as fc
from vaecompress.format.container import (
    MAGIC,
    PREAMBLE_SIZE,
    ROLE_AUX,
    ROLE_CODE,
    ROLE_MODEL,
    Container,
    External,
    Payload,
    dumps,
    file_sha256,
    load,
    loads,
    save,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"
GOLDEN_HEX = "56 41 45 43 4f 4d 50 00 01 00 00 00 41 01 00 00 fe 4f 93 55 7b 22 63 6f"


def tiny() -> Container:
    """The worked example of docs/format.md."""
    return Container(
        codec={"name": "raw", "version": 1, "settings": {}},
        tensors=[{"name": "w", "shape": [2], "dtype": "float32"}],
        payloads=[Payload("w", "raw-f32", ROLE_CODE, struct.pack("<2f", 1.0, -2.0))],
    )


def rich() -> Container:
    decoder = b"\x01\x02" * 1000
    return Container(
        codec={"name": "vae", "version": 3, "settings": {"latent": 64, "beta": 0.5}},
        tensors=[
            {"name": "fc.weight", "shape": [4, 3], "dtype": "float32"},
            {"name": "fc.bias", "shape": [4], "dtype": "bfloat16"},
            {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"},
        ],
        codec_state={
            "chunking": {"chunk_size": 2048, "n_chunks": 1, "pad": 2032, "numel": 16},
            "mean": [0.1, -0.2],
        },
        payloads=[
            Payload("latents", "raw-f16", ROLE_CODE, bytes(range(256)) * 3),
            Payload("empty", "bytes", ROLE_AUX, b""),
            Payload("decoder", "safetensors", ROLE_MODEL, decoder),
            Payload("raw", "zstd", ROLE_AUX, b"\x00" * 17),
        ],
        externals=[
            External("shared-vae", "safetensors", ROLE_MODEL, file_sha256(decoder), len(decoder))
        ],
        meta={"model": "mnist-mlp", "accuracy": 0.981, "note": "ünïcode ✓"},
    )


def header_of(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data, 12)
    return json.loads(data[PREAMBLE_SIZE : PREAMBLE_SIZE + n])


def with_header(data: bytes, header: dict | bytes, *, fix_crc: bool = True) -> bytes:
    """Replace the header of a valid file, keeping its payload section."""
    (n,) = struct.unpack_from("<I", data, 12)
    new = header if isinstance(header, bytes) else json.dumps(header).encode()
    crc = zlib.crc32(new) if fix_crc else struct.unpack_from("<I", data, 16)[0]
    pre = MAGIC + struct.pack("<HHII", 1, 0, len(new), crc)
    return pre + new + data[PREAMBLE_SIZE + n :]


# ---------------------------------------------------------------- round trip & golden


def test_round_trip_rich() -> None:
    c = rich()
    back = loads(dumps(c))
    assert back == c
    assert back.payload("decoder").data == b"\x01\x02" * 1000
    assert back.external("shared-vae").length == 2000


def test_golden_bytes_match_doc() -> None:
    data = dumps(tiny())
    assert " ".join(f"{b:02x}" for b in data[:24]) == GOLDEN_HEX
    assert len(data) == 349
    assert data[-8:] == bytes.fromhex("0000803f000000c0")
    doc = DOC.read_text(encoding="utf-8")
    assert GOLDEN_HEX in doc, "docs/format.md no longer shows the golden bytes"
    header = data[PREAMBLE_SIZE:-8].decode("ascii")
    assert header in doc, "docs/format.md no longer shows the example header"


def test_deterministic() -> None:
    a, b = dumps(rich()), dumps(rich())
    assert a == b
    # Key order of the caller's dicts must not matter.
    c = rich()
    c.codec = {"settings": {"beta": 0.5, "latent": 64}, "version": 3, "name": "vae"}
    assert dumps(c) == a


def test_payload_lookup_errors() -> None:
    c = rich()
    with pytest.raises(FormatError, match="no payload 'nope'"):
        c.payload("nope")
    with pytest.raises(FormatError, match=r"kind 'zstd'.*cannot decode"):
        c.payload("raw", kinds=["bytes", "raw-f32"])
    assert c.payload("raw", kinds={"zstd"}).kind == "zstd"
    with pytest.raises(FormatError, match="no external"):
        c.external("nope")


def test_header_offsets_are_contiguous() -> None:
    h = header_of(dumps(rich()))
    offs = [(p["offset"], p["length"]) for p in h["payloads"]]
    assert offs == [(0, 768), (768, 0), (768, 2000), (2768, 17)]


# ---------------------------------------------------------------- reader errors


def test_bad_magic() -> None:
    data = dumps(tiny())
    for bad in (b"", b"PK\x03\x04" + data[4:], b"hello", b"\x89PNG\r\n\x1a\n" + data[8:]):
        with pytest.raises(FormatError, match="not a vaecompress file"):
            loads(bad)


@pytest.mark.parametrize("version", [0, 2, 65535])
def test_other_version(version: int) -> None:
    data = bytearray(dumps(tiny()))
    struct.pack_into("<H", data, 8, version)
    with pytest.raises(FormatError) as e:
        loads(bytes(data))
    assert str(e.value) == (
        f"format version {version} is not supported by this vaecompress "
        "(reads 1); upgrade vaecompress"
    )


def test_unknown_flags() -> None:
    data = bytearray(dumps(tiny()))
    struct.pack_into("<H", data, 10, 4)
    with pytest.raises(FormatError, match="unknown flags 0x0004"):
        loads(bytes(data))


def test_truncated_everywhere() -> None:
    data = dumps(rich())
    (n,) = struct.unpack_from("<I", data, 12)
    cuts = [
        1,
        7,
        9,
        12,
        19,
        20,
        21,
        PREAMBLE_SIZE + n - 1,
        PREAMBLE_SIZE + n,
        PREAMBLE_SIZE + n + 100,
        len(data) - 1,
    ]
    for cut in cuts:
        with pytest.raises(FormatError, match="truncated"):
            loads(data[:cut])


def test_trailing_bytes() -> None:
    with pytest.raises(FormatError, match="trailing bytes"):
        loads(dumps(tiny()) + b"\x00")


def test_header_byte_flip_is_corrupt_header() -> None:
    data = dumps(rich())
    (n,) = struct.unpack_from("<I", data, 12)
    for pos in (PREAMBLE_SIZE, PREAMBLE_SIZE + n // 2, PREAMBLE_SIZE + n - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(FormatError, match="corrupt header"):
            loads(bytes(bad))
    bad = bytearray(data)
    bad[17] ^= 0xFF  # the stored CRC itself
    with pytest.raises(FormatError, match="corrupt header"):
        loads(bytes(bad))


def test_payload_byte_flip() -> None:
    data = dumps(rich())
    # Payload order: latents (768), empty, decoder (2000), raw (17); hit "decoder".
    pos = len(data) - 17 - 1000
    bad = bytearray(data)
    bad[pos] ^= 0x80
    with pytest.raises(FormatError, match="payload 'decoder' is corrupt"):
        loads(bytes(bad))


def test_bad_json() -> None:
    data = dumps(tiny())
    for raw in (
        b"{not json",
        b"\xff\xfe{}",
        b"[1,2]",
        b'{"a":1,"a":2}',
        b'{"x":NaN}',
        b"[" * 100_000 + b"]" * 100_000,
    ):
        with pytest.raises(FormatError, match="bad header JSON"):
            loads(with_header(data, raw))


@pytest.mark.parametrize(
    "key", ["format_version", "codec", "tensors", "codec_state", "payloads", "externals", "meta"]
)
def test_missing_key(key: str) -> None:
    data = dumps(rich())
    h = header_of(data)
    del h[key]
    with pytest.raises(FormatError, match=f"missing key '{key}'"):
        loads(with_header(data, h))


def test_header_version_must_match_preamble() -> None:
    data = dumps(tiny())
    h = header_of(data)
    h["format_version"] = 2
    with pytest.raises(FormatError, match="format_version 2 does not match"):
        loads(with_header(data, h))


def mutate(path: str, value: object) -> dict:
    """Header of rich() with one payload/external/tensor field replaced."""
    h = header_of(dumps(rich()))
    section, index, key = path.split(".")
    h[section][int(index)][key] = value
    return h


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("payloads.0.offset", -1, "offset must be a non-negative integer"),
        ("payloads.1.offset", 2**64, "offset 18446744073709551616 should be 768"),
        ("payloads.0.offset", 1.0, "offset must be a non-negative integer"),
        ("payloads.3.length", 2**63, "truncated"),
        ("payloads.0.length", -5, "length must be a non-negative integer"),
        ("payloads.0.length", True, "length must be a non-negative integer"),
        ("payloads.0.length", 767, "offset 768 should be 767"),
        ("payloads.2.role", "weights", "role 'weights' is not one of"),
        ("payloads.2.kind", "Bad Kind", "kind 'Bad Kind' is not"),
        ("payloads.2.sha256", "00", "sha256 must be 64 lowercase hex"),
        ("payloads.1.name", "latents", "name 'latents' is used twice"),
        ("payloads.1.name", "", "name must be a non-empty string"),
        ("externals.0.length", -1, "length must be a non-negative integer"),
        ("externals.0.name", "decoder", "name 'decoder' is used twice"),
        ("tensors.0.shape", [4, -3], "shape must be a list of non-negative integers"),
        ("tensors.0.shape", "4x3", "shape must be a list of non-negative integers"),
        ("tensors.1.name", "fc.weight", "listed twice"),
    ],
)
def test_hostile_header_values(path: str, value: object, fragment: str) -> None:
    data = dumps(rich())
    with pytest.raises(FormatError, match=re.escape(fragment)):
        loads(with_header(data, mutate(path, value)))


def test_hostile_preamble_header_len() -> None:
    for n in (2**32 - 1, fc.MAX_HEADER_BYTES + 1):
        data = MAGIC + struct.pack("<HHII", 1, 0, n, 0) + b"{}"
        with pytest.raises(FormatError, match="exceeds the limit"):
            loads(data)
    data = MAGIC + struct.pack("<HHII", 1, 0, 1000, 0) + b"{}"
    with pytest.raises(FormatError, match="truncated"):
        loads(data)


def test_huge_name_gives_short_message() -> None:
    data = dumps(rich())
    with pytest.raises(FormatError) as e:
        loads(with_header(data, mutate("payloads.2.role", "x" * 1_000_000)))
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_payload_data_is_bytes() -> None:
    c = loads(dumps(rich()))
    assert all(type(p.data) is bytes for p in c.payloads)


# ---------------------------------------------------------------- writer errors


def test_dumps_rejects_invalid_container() -> None:
    bad = [
        Container(codec={"name": "x"}, tensors=[]),
        Container(
            codec={"name": "x", "version": 1, "settings": {}},
            tensors=[],
            payloads=[Payload("a", "bytes", "weights", b"")],
        ),
        Container(
            codec={"name": "x", "version": 1, "settings": {}},
            tensors=[],
            payloads=[Payload("a", "bytes", "aux", b""), Payload("a", "bytes", "aux", b"")],
        ),
        Container(
            codec={"name": "x", "version": 1, "settings": {}},
            tensors=[],
            meta={"nan": float("nan")},
        ),
        Container(
            codec={"name": "x", "version": 1, "settings": {}}, tensors=[], meta={"obj": object()}
        ),
    ]
    for c in bad:
        with pytest.raises(ValueError, match="cannot write container"):
            dumps(c)


# ---------------------------------------------------------------- files


def test_save_load(tmp_path: Path) -> None:
    target = tmp_path / "m.vaec"
    n = save(rich(), target)
    assert n == target.stat().st_size == len(dumps(rich()))
    assert load(target) == rich()
    assert [p.name for p in tmp_path.iterdir()] == ["m.vaec"]
    # Overwrite in place.
    save(tiny(), target)
    assert load(target) == tiny()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load(tmp_path / "missing.vaec")
    bad = tmp_path / "bad.vaec"
    bad.write_bytes(b"not a model")
    with pytest.raises(FormatError, match=r"bad\.vaec: not a vaecompress file"):
        load(bad)
    with pytest.raises(UserError, match="no such directory"):
        save(tiny(), tmp_path / "nodir" / "x.vaec")


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    target = tmp_path / "m.vaec"

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if fail_at == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, f: object) -> None:
                self.f = f

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])  # a partial write, then failure
                raise OSError("disk full")

        monkeypatch.setattr(fc.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    elif fail_at == "fsync":
        monkeypatch.setattr(fc.os, "fsync", boom)
    else:
        monkeypatch.setattr(fc.os, "replace", boom)

    with pytest.raises(OSError, match="disk full"):
        save(rich(), target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.vaec"
    save(tiny(), target)

    def boom(*args: object) -> None:
        raise OSError("no space left")

    monkeypatch.setattr(fc.os, "replace", boom)
    with pytest.raises(OSError):
        save(rich(), target)
    assert load(target) == tiny()
    assert [p.name for p in tmp_path.iterdir()] == ["m.vaec"]
