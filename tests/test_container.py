"""Tests for vaecompress.format.container, .header and .zdict: round trip, golden bytes of
versions 1 and 2, version 4's dictionary, determinism, every reader error, hostile headers, the
size caps, and atomic save."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest

from vaecompress import files
from vaecompress.errors import FormatError, UserError
from vaecompress.format import container as fc
from vaecompress.format.container import (
    MAGIC,
    MAX_DECODED_BYTES,
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
from vaecompress.format.zdict import (
    HEADER_ZDICT,
    HEADER_ZDICT_V4,
    HEADER_ZDICT_V4_SHA256,
    header_zdict,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"
GOLDEN_HEX_V1 = "56 41 45 43 4f 4d 50 00 01 00 00 00 41 01 00 00 fe 4f 93 55 7b 22 63 6f"
GOLDEN_HEX_V2 = "56 41 45 43 4f 4d 50 00 02 00 00 00 59 00 00 00 67 39 1e 03 36 01 00 00"
GOLDEN_FILE_V2 = (
    "564145434f4d5000020000005900000067391e0336010000bdd2b90dc0300c03c09504f9a1d631657905af1f"
    "a7c803040152a565451cf9d45993fd0c749de470b2b3f37c878ac8cd915cd91528b5d1142643b1d2067aee69"
    "08599b3321448cae08f78e2866fc0e3d6f68baab6d0000803f000000c0"
)


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


def deflate(text: bytes, version: int = fc.FORMAT_VERSION) -> bytes:
    """A stored header (version 2 or later) for a JSON text: u32 length, raw deflate with the
    version's preset dictionary."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                         header_zdict(version))
    return struct.pack("<I", len(text)) + z.compress(text) + z.flush()


def header_text(data: bytes) -> bytes:
    """The header JSON of a valid file of either version."""
    version, n = struct.unpack_from("<H", data, 8)[0], struct.unpack_from("<I", data, 12)[0]
    stored = data[PREAMBLE_SIZE : PREAMBLE_SIZE + n]
    if version == 1:
        return stored
    return zlib.decompressobj(-15, zdict=header_zdict(version)).decompress(stored[4:])


def header_of(data: bytes) -> dict:
    return json.loads(header_text(data))


def with_stored(data: bytes, stored: bytes, *, fix_crc: bool = True) -> bytes:
    """Replace the stored header of a valid file, keeping its version and payload section."""
    version, n = struct.unpack_from("<H", data, 8)[0], struct.unpack_from("<I", data, 12)[0]
    crc = zlib.crc32(stored) if fix_crc else struct.unpack_from("<I", data, 16)[0]
    pre = MAGIC + struct.pack("<HHII", version, 0, len(stored), crc)
    return pre + stored + data[PREAMBLE_SIZE + n :]


def with_header(data: bytes, header: dict | bytes, *, fix_crc: bool = True) -> bytes:
    """Replace the header JSON of a valid file (compressed again for version 2), CRC fixed."""
    new = header if isinstance(header, bytes) else json.dumps(header).encode()
    version = struct.unpack_from("<H", data, 8)[0]
    return with_stored(data, new if version == 1 else deflate(new), fix_crc=fix_crc)


# ---------------------------------------------------------------- round trip & golden


def test_round_trip_rich() -> None:
    c = rich()
    back = loads(dumps(c))
    assert back == c
    assert back.payload("decoder").data == b"\x01\x02" * 1000
    assert back.external("shared-vae").length == 2000


def test_golden_bytes_v1_match_doc() -> None:
    data = dumps(tiny(), version=1)
    assert " ".join(f"{b:02x}" for b in data[:24]) == GOLDEN_HEX_V1
    assert len(data) == 349
    assert data[-8:] == bytes.fromhex("0000803f000000c0")
    doc = DOC.read_text(encoding="utf-8")
    assert GOLDEN_HEX_V1 in doc, "docs/format.md no longer shows the golden bytes"
    header = data[PREAMBLE_SIZE:-8].decode("ascii")
    assert header in doc, "docs/format.md no longer shows the example header"
    assert loads(data) == tiny()


def test_golden_bytes_v2_match_doc() -> None:
    data = dumps(tiny(), version=2)
    assert data[8:10] == b"\x02\x00"
    text = header_text(data).decode("ascii")
    doc = DOC.read_text(encoding="utf-8")
    assert text in doc, "docs/format.md no longer shows the version 2 example header"
    assert len(text) == 310 and '"offset"' not in text
    assert data[-8:] == bytes.fromhex("0000803f000000c0")
    # Exact deflate output is a property of the zlib in use; zlib-ng (some Python builds)
    # compresses differently, and readers accept either.
    if "zlib-ng" not in zlib.ZLIB_RUNTIME_VERSION:
        assert data.hex() == GOLDEN_FILE_V2
        assert " ".join(f"{b:02x}" for b in data[:24]) == GOLDEN_HEX_V2
        assert GOLDEN_HEX_V2 in doc and len(data) == 117
    assert loads(bytes.fromhex(GOLDEN_FILE_V2)) == tiny()


GOLDEN_FILE_V4 = (
    "564145434f4d5000040000005c000000d5ecf68436010000ad99bb0d80400c43578a721f679d381756607d8e"
    "0aa4138282d69d9fecc65e333c4bf1efbf59dffecdb586768dbdcf9e33ab074a288702ad3b4d61b229a6ea60"
    "d4513621bb070b52c4188a8c18c866c6efccf61b343da91d0000803f000000c0"
)


def test_golden_file_v4_reads() -> None:
    """A version 4 file written today is read by every later reader: these bytes (the worked
    example, which shares little with the dictionary: 3 bytes more than version 2) must load."""
    assert loads(bytes.fromhex(GOLDEN_FILE_V4)) == tiny()
    if "zlib-ng" not in zlib.ZLIB_RUNTIME_VERSION:
        assert dumps(tiny()).hex() == GOLDEN_FILE_V4


def test_zdict_is_documented() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert HEADER_ZDICT.decode("ascii") in doc.replace("\n", "")


def test_v1_round_trip_and_v2_is_smaller() -> None:
    c = rich()
    v1, v2 = dumps(c, version=1), dumps(c, version=2)
    assert loads(v1) == loads(v2) == c
    assert len(v2) < len(v1)
    v3 = dumps(c, version=3)
    # version 3 has version 2's layout (a few bits more: the preset dictionary spells a 2)
    assert v3[8:10] == b"\x03\x00" and len(v2) <= len(v3) <= len(v2) + 8
    assert loads(v3) == c and loads(v3).format_version == 3 and loads(v2).format_version == 2
    v4 = dumps(c)  # the default: version 3's layout and header, another preset dictionary
    assert v4[8:10] == b"\x04\x00" and loads(v4) == c and loads(v4).format_version == 4
    assert header_text(v4) == header_text(v3).replace(b'"format_version":3',
                                                      b'"format_version":4')
    n3, n4 = (struct.unpack_from("<I", d, 12)[0] for d in (v3, v4))
    assert v4[PREAMBLE_SIZE + n4:] == v3[PREAMBLE_SIZE + n3:]  # the same payload section
    assert n4 < n3  # the dictionary holds more of what headers repeat
    with pytest.raises(ValueError, match="cannot write format version 5"):
        dumps(c, version=5)


def test_zdict_v4_is_fixed_and_documented() -> None:
    """Version 4's dictionary is part of the format: its bytes never change (a reader with
    other bytes cannot inflate a single header written with these)."""
    assert hashlib.sha256(HEADER_ZDICT_V4).hexdigest() == HEADER_ZDICT_V4_SHA256
    assert HEADER_ZDICT_V4_SHA256 == (
        "8b919fb3fa67cb47faa7653aa1ed7c0925a74e7673608499673098382bf35ad1")
    assert HEADER_ZDICT_V4.startswith(HEADER_ZDICT) and len(HEADER_ZDICT_V4) <= 32768
    HEADER_ZDICT_V4.decode("ascii")
    assert HEADER_ZDICT_V4_SHA256 in DOC.read_text(encoding="utf-8")
    assert header_zdict(2) == header_zdict(3) == HEADER_ZDICT
    assert header_zdict(4) == HEADER_ZDICT_V4


def test_typical_header_is_compact() -> None:
    """Issue 9: the container's fixed cost at high ratios (numbers in docs/format.md)."""
    names = ["batch_size", "chunk_size", "epochs", "external_decoder", "hidden", "latent", "lr"]
    names += ["n_variants", "noise_fraction", "noise_kind", "noise_scale", "normalize"]
    names += ["patience", "sigma_x", "val_fraction"]
    values = [64, 2048, 8, True, [64], 64, 3e-4, 10, 0.5, "gaussian", 0.05, "tensor", 30]
    values += [0.05, 0.2]
    c = Container(
        codec={"name": "vae-rd", "version": 1, "settings": dict(zip(names, values, strict=True))},
        tensors=[
            {"name": f"net.{i}.weight", "shape": [128, 128], "dtype": "float32"}
            if j == 0
            else {"name": f"net.{i}.bias", "shape": [128], "dtype": "float32"}
            for i in range(5)
            for j in range(2)
        ],
        codec_state={"chunking": {"chunk_size": 2048, "n_chunks": 27, "numel": 54538, "pad": 758}},
        payloads=[Payload("latents", "ans", ROLE_CODE, bytes(range(256)) * 20)],
        meta={"vaecompress.model": "fnn", "test_accuracy": "97.12"},
    )
    h1 = struct.unpack_from("<I", dumps(c, version=1), 12)[0]
    h2 = struct.unpack_from("<I", dumps(c, version=2), 12)[0]
    h4 = struct.unpack_from("<I", dumps(c), 12)[0]
    assert h1 == 1228
    assert h2 < 400, h2  # 353 with CPython's zlib 1.2.13
    assert h4 < h2, (h4, h2)


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
    h = header_of(dumps(rich(), version=1))
    offs = [(p["offset"], p["length"]) for p in h["payloads"]]
    assert offs == [(0, 768), (768, 0), (768, 2000), (2768, 17)]
    h = header_of(dumps(rich()))
    assert all("offset" not in p for p in h["payloads"])


def test_decoded_bytes() -> None:
    # fc.weight 12 * 4 + fc.bias 4 * 2 (bfloat16) + a scalar int64 8
    assert rich().decoded_bytes == loads(dumps(rich())).decoded_bytes == 64
    assert tiny().decoded_bytes == 8
    c = Container(codec={}, tensors=[{"name": "x", "shape": [3, 0, 2**40], "dtype": "int8"}])
    assert c.decoded_bytes == 0
    c.tensors[0]["dtype"] = "complex64"
    with pytest.raises(FormatError, match="dtype 'complex64' is not one of"):
        c.decoded_bytes  # noqa: B018


# ---------------------------------------------------------------- reader errors


def test_bad_magic() -> None:
    data = dumps(tiny())
    for bad in (b"", b"PK\x03\x04" + data[4:], b"hello", b"\x89PNG\r\n\x1a\n" + data[8:]):
        with pytest.raises(FormatError, match="not a vaecompress file"):
            loads(bad)


@pytest.mark.parametrize("version", [0, 5, 65535])
def test_other_version(version: int) -> None:
    data = bytearray(dumps(tiny()))
    struct.pack_into("<H", data, 8, version)
    with pytest.raises(FormatError) as e:
        loads(bytes(data))
    assert str(e.value) == (
        f"format version {version} is not supported by this vaecompress "
        "(reads 1, 2, 3, 4); upgrade vaecompress"
    )


def test_version_swapped_in_preamble() -> None:
    # A version-2 file relabelled 1 (or the reverse) fails cleanly, never misparses.
    for data, other in ((dumps(rich()), 1), (dumps(rich(), version=1), 2)):
        bad = bytearray(data)
        struct.pack_into("<H", bad, 8, other)
        with pytest.raises(FormatError, match="bad header"):
            loads(bytes(bad))


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
    h["format_version"] = 1
    with pytest.raises(FormatError, match=r"format_version 1 does not match the preamble \(4\)"):
        loads(with_header(data, h))


def mutate(path: str, value: object, version: int = fc.FORMAT_VERSION) -> dict:
    """Header of rich() with one payload/external/tensor/codec field replaced."""
    h = header_of(dumps(rich(), version=version))
    *keys, last = path.split(".")
    obj = h
    for k in keys:
        obj = obj[int(k)] if isinstance(obj, list) else obj[k]
    obj[last] = value
    return h


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("payloads.0.offset", -1, "offset must be a non-negative integer"),
        ("payloads.1.offset", 2**64, "offset 18446744073709551616 should be 768"),
        ("payloads.0.offset", 1.0, "offset must be a non-negative integer"),
        ("payloads.0.length", 767, "offset 768 should be 767"),
    ],
)
def test_hostile_v1_offsets(path: str, value: object, fragment: str) -> None:
    data = dumps(rich(), version=1)
    with pytest.raises(FormatError, match=re.escape(fragment)):
        loads(with_header(data, mutate(path, value, version=1)))


def test_v1_needs_offsets() -> None:
    h = header_of(dumps(rich(), version=1))
    del h["payloads"][0]["offset"]
    with pytest.raises(FormatError, match="payload entry missing key 'offset'"):
        loads(with_header(dumps(rich(), version=1), h))


LONG = "x" * 1025


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("payloads.3.length", 2**63, "truncated"),
        ("payloads.0.length", -5, "length must be a non-negative integer"),
        ("payloads.0.length", True, "length must be a non-negative integer"),
        ("payloads.0.length", 767, "trailing bytes"),
        ("payloads.2.role", "weights", "role 'weights' is not one of"),
        ("payloads.2.kind", "Bad Kind", "kind 'Bad Kind' is not"),
        ("payloads.2.sha256", "00", "sha256 must be 64 lowercase hex"),
        ("payloads.1.name", "latents", "name 'latents' is used twice"),
        ("payloads.1.name", "", "payload name must be a string of 1 to 1024 characters"),
        ("payloads.1.name", LONG, "payload name must be a string of 1 to 1024 characters"),
        ("externals.0.length", -1, "length must be a non-negative integer"),
        ("externals.0.length", 2**41, "length 2199023255552 exceeds the cap"),
        ("externals.0.name", "decoder", "name 'decoder' is used twice"),
        ("externals.0.name", LONG, "external name must be a string of 1 to 1024 characters"),
        ("tensors.0.shape", [4, -3], "shape must be a list of non-negative integers"),
        ("tensors.0.shape", "4x3", "shape must be a list of non-negative integers"),
        ("tensors.0.shape", [1] * 33, "has rank 33, more than 32"),
        ("tensors.0.shape", [2**64], "dimension 18446744073709551616 exceeds"),
        ("tensors.0.shape", [2**20, 2**20, 2**20], "declares more than the cap of"),
        ("tensors.0.shape", [2**38, 4], "declares more than the cap of"),  # float32: 2**42
        ("tensors.1.name", "fc.weight", "listed twice"),
        ("tensors.1.name", "", "tensor name must be a string of 1 to 1024 characters"),
        ("tensors.1.name", LONG, "tensor name must be a string of 1 to 1024 characters"),
        ("tensors.1.name", 7, "tensor name must be a string of 1 to 1024 characters"),
        ("tensors.0.dtype", "complex64", "dtype 'complex64' is not one of"),
        ("tensors.0.dtype", "Tensor", "dtype 'Tensor' is not one of"),  # getattr(torch, ...)
        ("tensors.0.dtype", "__class__", "dtype '__class__' is not one of"),
        ("tensors.0.dtype", ["float32"], "dtype ['float32'] is not one of"),
        ("codec.name", "Bad Name", "codec name 'Bad Name' is not 1-64 of"),
        ("codec.name", "", "codec name '' is not 1-64 of"),
        ("codec.version", -1, "codec version must be an integer in 0..2147483647"),
        ("codec.version", 2**31, "codec version must be an integer in 0..2147483647"),
        ("meta.note", "\ud800", "is not valid Unicode"),
        ("codec_state.chunking.\udfff", 1, "is not valid Unicode"),
    ],
)
def test_hostile_header_values(path: str, value: object, fragment: str) -> None:
    data = dumps(rich())
    with pytest.raises(FormatError, match=re.escape(fragment)):
        loads(with_header(data, mutate(path, value)))


def test_total_decoded_bytes_cap() -> None:
    # Each tensor is exactly at the cap (2**38 float32 = 2**40 bytes); together they exceed it.
    data = dumps(rich())
    h = header_of(data)
    h["tensors"] = [
        {"name": "a", "shape": [2**38], "dtype": "float32"},
        {"name": "b", "shape": [1], "dtype": "bool"},
    ]
    with pytest.raises(FormatError, match=r"more than 1099511627776 decoded bytes in total"):
        loads(with_header(data, h))
    h["tensors"] = h["tensors"][:1]
    assert loads(with_header(data, h)).decoded_bytes == MAX_DECODED_BYTES


def test_non_finite_number_in_header() -> None:
    data = dumps(rich())
    text = header_text(data).replace(b'"accuracy":0.981', b'"accuracy":1e999')
    with pytest.raises(FormatError, match="bad header JSON: number '1e999' is not finite"):
        loads(with_header(data, text))
    text = header_text(data).replace(b'"accuracy":0.981', b'"accuracy":-1E400')
    with pytest.raises(FormatError, match="is not finite"):
        loads(with_header(data, text))


# ---------------------------------------------------------------- version 2 stored header


def test_v2_short_stored_header() -> None:
    data = dumps(tiny())
    for stored in (b"", b"\x01\x00"):
        with pytest.raises(FormatError, match="shorter than its 4-byte length"):
            loads(with_stored(data, stored))


def test_v2_json_len_over_limit_is_refused_before_inflating() -> None:
    data = dumps(tiny())
    stored = deflate(header_text(data))
    bad = struct.pack("<I", fc.MAX_HEADER_BYTES + 1) + stored[4:]
    with pytest.raises(FormatError, match="header JSON length 67108865 exceeds the limit"):
        loads(with_stored(data, bad))


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_v2_json_len_must_match(delta: int) -> None:
    data = dumps(tiny())
    text = header_text(data)
    bad = struct.pack("<I", len(text) + delta) + deflate(text)[4:]
    with pytest.raises(FormatError, match="does not inflate to exactly its declared"):
        loads(with_stored(data, bad))


def test_v2_decompression_bomb() -> None:
    # 64 MiB of zeros deflate to ~64 KB; a declared length of 100 bytes stops inflating there.
    bomb = deflate(b"\x00" * fc.MAX_HEADER_BYTES)
    assert len(bomb) < 100_000
    data = dumps(tiny())
    with pytest.raises(FormatError, match="does not inflate to exactly its declared 100 bytes"):
        loads(with_stored(data, struct.pack("<I", 100) + bomb[4:]))
    # Declared at the limit, the zeros inflate fully and fail as JSON, not as a crash.
    with pytest.raises(FormatError, match="bad header JSON"):
        loads(with_stored(data, bomb))


def test_v2_corrupt_or_trailing_deflate() -> None:
    data = dumps(tiny())
    stored = deflate(header_text(data))
    with pytest.raises(FormatError, match="compressed header is corrupt"):
        loads(with_stored(data, stored[:4] + b"\xff" * (len(stored) - 4)))
    with pytest.raises(FormatError, match="does not inflate to exactly"):
        loads(with_stored(data, stored + b"\x00"))  # bytes after the deflate stream
    with pytest.raises(FormatError, match="does not inflate to exactly"):
        loads(with_stored(data, stored[:-3]))  # stream cut short


@pytest.mark.parametrize("version", [1, 2, 3])
def test_hostile_preamble_header_len(version: int) -> None:
    for n in (2**32 - 1, fc.MAX_HEADER_BYTES + 1):
        data = MAGIC + struct.pack("<HHII", version, 0, n, 0) + b"{}"
        with pytest.raises(FormatError, match="exceeds the limit"):
            loads(data)
    data = MAGIC + struct.pack("<HHII", version, 0, 1000, 0) + b"{}"
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


def test_format_package_never_touches_torch() -> None:
    # Manifest dtypes are checked against DTYPE_ITEMSIZE, and format/ itself never turns a
    # header string into a torch attribute.
    for path in Path(fc.__file__).parent.glob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert "getattr(torch" not in src, path.name
        assert not re.search(r"^\s*(import|from) torch", src, re.MULTILINE), path.name


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
    with pytest.raises(UserError, match="output folder does not exist"):
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

        monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    elif fail_at == "fsync":
        monkeypatch.setattr(files.os, "fsync", boom)
    else:
        monkeypatch.setattr(files.os, "replace", boom)

    with pytest.raises(OSError, match="disk full"):
        save(rich(), target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.vaec"
    save(tiny(), target)

    def boom(*args: object) -> None:
        raise OSError("no space left")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        save(rich(), target)
    assert load(target) == tiny()
    assert [p.name for p in tmp_path.iterdir()] == ["m.vaec"]
