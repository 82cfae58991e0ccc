"""The vaecompress file container (spec: docs/format.md).

Boundary: this module turns a `Container` (codec description, tensor manifest, codec state,
named byte payloads, external references, meta) into bytes and back (format versions 1-4;
the header's field checks live in `header.py`), and reads and writes files (atomically, through
`files.py`). It never
interprets payload bytes, knows no codec, and does not import torch; compression ratios
(accounting) are computed elsewhere from what it returns.

Every problem with a file being read is a `FormatError` with a one-line message. A
`Container` that cannot be written (bad role, duplicate names, non-JSON meta) is a bug in
the caller and raises `ValueError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vaecompress.errors import FormatError, UserError, short
from vaecompress.files import atomic_write_bytes, check_regular, read_file
from vaecompress.format.header import DTYPE_ITEMSIZE as DTYPE_ITEMSIZE
from vaecompress.format.header import MAX_DECODED_BYTES as MAX_DECODED_BYTES
from vaecompress.format.header import ROLE_AUX as ROLE_AUX
from vaecompress.format.header import ROLE_CODE as ROLE_CODE
from vaecompress.format.header import ROLE_MODEL as ROLE_MODEL
from vaecompress.format.header import ROLES as ROLES
from vaecompress.format.header import check_header, decoded_bytes
from vaecompress.format.zdict import HEADER_ZDICT as HEADER_ZDICT
from vaecompress.format.zdict import header_zdict

MAGIC = b"VAECOMP\x00"
# Version 3 has version 2's layout; a version 3 file must carry the checksum that binds each
# rebuilt tensor's name, dtype, shape and order to its bytes (`vaecompress.checksum`). Version 4
# is version 3 with another preset dictionary for the stored header (`zdict.HEADER_ZDICT_V4`).
FORMAT_VERSION = 4  # what dumps writes by default
READ_VERSIONS = (1, 2, 3, 4)
KNOWN_FLAGS = 0  # versions 1-4 define no flag bits
MAX_HEADER_BYTES = 64 * 1024 * 1024  # the header JSON, and in version 2 also its stored form

# magic, u16 version, u16 flags, u32 header_len, u32 header crc32; little-endian, no padding
_PREAMBLE = struct.Struct("<8sHHII")
PREAMBLE_SIZE = _PREAMBLE.size  # 20
_U32 = struct.Struct("<I")

@dataclass(frozen=True)
class Payload:
    """A named byte string stored inside the file."""

    name: str
    kind: str
    role: str
    data: bytes


@dataclass(frozen=True)
class External:
    """Bytes the decoder needs that live outside the file, identified by sha256 and length."""

    name: str
    kind: str
    role: str
    sha256: str
    length: int


@dataclass
class Container:
    """Everything one compressed file holds, decoded from bytes but not interpreted."""

    codec: dict[str, Any]
    tensors: list[dict[str, Any]]
    codec_state: dict[str, Any] = field(default_factory=dict)
    payloads: list[Payload] = field(default_factory=list)
    externals: list[External] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # The version of the file it was read from (what a new one is written as); not part of
    # what the container holds, so two containers read from versions 2 and 3 compare equal.
    format_version: int = field(default=FORMAT_VERSION, compare=False)

    @property
    def decoded_bytes(self) -> int:
        """Total declared decoded size of the manifest in bytes (sum of numel * itemsize),
        at most MAX_DECODED_BYTES; a reader can bound its allocations by it before decoding.
        Raises FormatError if the manifest is invalid (a loaded container never is)."""
        return decoded_bytes(self.tensors)

    def payload(self, name: str, *, kinds: Iterable[str] | None = None) -> Payload:
        """The payload called `name`; with `kinds`, also insist that its kind is one of them,
        so a codec meeting a kind from a newer writer fails with a clear message."""
        for p in self.payloads:
            if p.name == name:
                if kinds is not None:
                    known = sorted(kinds)
                    if p.kind not in known:
                        raise FormatError(
                            f"payload {name!r} has kind {p.kind!r}, which this vaecompress "
                            f"cannot decode (knows: {', '.join(known)}); upgrade vaecompress"
                        )
                return p
        have = ", ".join(p.name for p in self.payloads) or "none"
        raise FormatError(f"file has no payload {name!r} (has: {have})")

    def external(self, name: str) -> External:
        """The external reference called `name`."""
        for e in self.externals:
            if e.name == name:
                return e
        have = ", ".join(e.name for e in self.externals) or "none"
        raise FormatError(f"file has no external {name!r} (has: {have})")


def file_sha256(data: bytes) -> str:
    """Lowercase hex SHA-256, the form used in headers for payloads and externals."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- writing


def payload_entry(name: str, kind: str, role: str, data: bytes) -> dict[str, Any]:
    """The header's record of one payload (its bytes stored after the header, in order)."""
    return {"name": name, "kind": kind, "role": role, "length": len(data),
            "sha256": file_sha256(data)}


def dumps(c: Container, *, version: int = FORMAT_VERSION) -> bytes:
    """Serialize `c`; the same container always gives byte-identical output.

    `version` 4 (the default), 3 and 2 store the header compressed (4 with the larger preset
    dictionary); 1 writes the old, plain layout for readers that predate version 2."""
    blobs = [bytes(p.data) for p in c.payloads]
    entries = [payload_entry(p.name, p.kind, p.role, b) for p, b in zip(c.payloads, blobs,
                                                                        strict=True)]
    return b"".join([dumps_head(c, entries, version=version), *blobs])


def dumps_head(c: Container, entries: list[dict[str, Any]], *,
               version: int = FORMAT_VERSION) -> bytes:
    """The preamble and stored header of a file whose payloads `entries` describe
    (`payload_entry`, in file order): the payloads' bytes follow it in that order. A writer
    that makes its payloads one at a time (`sharded`) spools them and writes this first; the
    payloads of `c` itself are ignored."""
    if version not in READ_VERSIONS:
        raise ValueError(f"cannot write format version {version} "
                         f"(writes {', '.join(map(str, READ_VERSIONS))})")
    entries = [dict(e) for e in entries]
    if version == 1:
        offset = 0
        for e in entries:
            e["offset"] = offset
            offset += e["length"]
    header = {
        "format_version": version,
        "codec": c.codec,
        "tensors": c.tensors,
        "codec_state": c.codec_state,
        "payloads": entries,
        "externals": [
            {"name": e.name, "kind": e.kind, "role": e.role, "sha256": e.sha256, "length": e.length}
            for e in c.externals
        ],
        "meta": c.meta,
    }
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
        # Validate what a reader will see (tuples became lists) with the reader's own rules,
        # so that every file we write is one we can read.
        check_header(_parse_json(text.encode("ascii")), version)
    except (FormatError, TypeError, ValueError) as e:
        raise ValueError(f"cannot write container: {e}") from e
    header_bytes = text.encode("ascii")  # json.dumps escapes non-ASCII by default
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(
            f"cannot write container: header is {len(header_bytes)} bytes, "
            f"more than {MAX_HEADER_BYTES}"
        )
    stored = header_bytes if version == 1 else _deflate_header(header_bytes, version)
    return _PREAMBLE.pack(MAGIC, version, 0, len(stored), zlib.crc32(stored)) + stored


def as_read(c: Container) -> Container:
    """`c` as a reader of its file sees it (`loads(dumps(c))`: the header written, then parsed
    and checked by the reader's rules), its payloads the same bytes objects rather than copies
    of them, so that a writer that decodes what it wrote holds its payloads once."""
    entries = [payload_entry(p.name, p.kind, p.role, bytes(p.data)) for p in c.payloads]
    header, _ = _head(dumps_head(c, entries))
    return _container(header, [Payload(e["name"], e["kind"], e["role"], bytes(p.data))
                               for e, p in zip(header["payloads"], c.payloads, strict=True)])


def _deflate_header(header_bytes: bytes, version: int) -> bytes:
    # Fixed parameters (level 9, 32 KiB window, memLevel 9, default strategy) keep the output
    # a function of the header alone for a given zlib.
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                         header_zdict(version))
    return _U32.pack(len(header_bytes)) + z.compress(header_bytes) + z.flush()


def save(c: Container, path: str | os.PathLike[str]) -> int:
    """Write `c` to `path` atomically (`files.atomic_write`: readers see the old file or the
    complete new one, never a part) and return the number of bytes written."""
    return atomic_write_bytes(path, dumps(c))


# ---------------------------------------------------------------------------- reading


def load(path: str | os.PathLike[str]) -> Container:
    """Read and fully verify the file at `path`."""
    data = read_file(path)
    try:
        return loads(data)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e


def loads(data: bytes) -> Container:
    """Parse and fully verify a file's bytes (magic, version, CRC, header, hashes)."""
    data = bytes(data)
    header, header_end = _head(data)
    section = memoryview(data)[header_end:]
    entries = header["payloads"]
    _check_section_length(entries, len(section))
    payloads = []
    offset = 0  # version 1's stored offsets were checked to equal these
    for p in entries:
        blob = bytes(section[offset : offset + p["length"]])
        offset += p["length"]
        payloads.append(_payload(p, blob))
    return _container(header, payloads)


@dataclass(frozen=True)
class Entry:
    """A payload as the header lists it, and where its bytes lie in the file read."""

    name: str
    kind: str
    role: str
    sha256: str
    length: int
    offset: int


_HASH_CHUNK = 4 * 1024 * 1024  # bytes hashed at a time when a payload is checked in place


def _open(path: str | os.PathLike[str]) -> Any:
    try:
        check_regular(path)  # a FIFO would block the open below
        return open(path, "rb")  # the callers close it
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"not a file: {path}") from None
    except PermissionError:
        raise UserError(f"permission denied: {path}") from None
    except (OSError, ValueError) as e:  # a name too long, a NUL byte in it
        raise UserError(f"cannot read {short(str(path))}: "
                        f"{getattr(e, 'strerror', None) or e}") from None


def _index(f: Any, start: int, size: int) -> tuple[Container, list[Entry]]:
    """The checked header of the file of `size` bytes that starts at `start` in the open file
    `f`, as a container without payloads, and its payloads' entries (offsets in `f`). Reads
    the preamble and the header only; the payload section's length is checked as `loads`
    checks it."""
    f.seek(start)
    prefix = f.read(min(PREAMBLE_SIZE, size))
    if len(prefix) == PREAMBLE_SIZE:
        (header_len,) = _U32.unpack_from(prefix, 12)
        prefix += f.read(min(header_len, MAX_HEADER_BYTES + 1, size - PREAMBLE_SIZE))
    header, header_end = _head(prefix)
    entries = header["payloads"]
    _check_section_length(entries, size - header_end)
    out, offset = [], start + header_end
    for p in entries:
        out.append(Entry(p["name"], p["kind"], p["role"], p["sha256"], p["length"], offset))
        offset += p["length"]
    return _container(header, []), out


def _check_in_place(f: Any, e: Entry) -> None:
    """The payload `e` against its sha256, read a chunk at a time."""
    f.seek(e.offset)
    h, left = hashlib.sha256(), e.length
    while left:
        chunk = f.read(min(_HASH_CHUNK, left))
        if not chunk:
            raise FormatError(f"payload {short(e.name)} is truncated")
        h.update(chunk)
        left -= len(chunk)
    if h.hexdigest() != e.sha256:
        raise FormatError(f"payload {short(e.name)} is corrupt (sha256 mismatch)")


def read_index(path: str | os.PathLike[str], *, within: Entry | None = None,
               verify: bool = True) -> tuple[Container, list[Entry], int]:
    """The header of the file at `path` (a container without payloads), its payloads'
    entries and the file's size; with `verify`, every payload checked against its sha256 a
    chunk at a time: what `loads` verifies, in memory of the header's size. `within`: the file
    stored whole as that payload of the file at `path` (a sharded file's member), read in
    place (its entries' offsets are in the outer file)."""
    with _open(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size if within is None else within.length
            c, entries = _index(f, 0 if within is None else within.offset, size)
            for e in entries if verify else ():
                _check_in_place(f, e)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from e
    return c, entries, size


def check_payload(path: str | os.PathLike[str], entry: Entry) -> None:
    """The payload `entry` of the file at `path` against its sha256, read a chunk at a time."""
    with _open(path) as f:
        try:
            _check_in_place(f, entry)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from e


def load_payloads(path: str | os.PathLike[str], names: Iterable[str] | None, *,
                  within: Entry | None = None) -> Container:
    """Read the header of the file at `path` and only the payloads called `names` (None: all;
    each verified against its sha256), seeking past the others: a reader that needs a few
    payloads of a large file. The file's length is checked as `loads` checks it; the returned
    container holds only the payloads asked for, in file order. `within`: as `read_index`."""
    with _open(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size if within is None else within.length
            c, entries = _index(f, 0 if within is None else within.offset, size)
            wanted = {e.name for e in entries} if names is None else set(names)
            missing = wanted - {e.name for e in entries}
            if missing:
                raise FormatError(f"file has no payload {short(sorted(missing)[0])}")
            for e in entries:
                if e.name in wanted:
                    f.seek(e.offset)
                    c.payloads.append(_payload(
                        {"name": e.name, "kind": e.kind, "role": e.role, "sha256": e.sha256},
                        f.read(e.length)))
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from e
    return c


def _head(data: bytes) -> tuple[dict[str, Any], int]:
    """The checked header of a file whose first bytes are `data` (at least the preamble and
    the stored header, when the file has them), and where its payload section starts."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data) and data:
            raise FormatError("truncated file: it ends inside the preamble")
        raise FormatError("not a vaecompress file (bad magic)")
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError("not a vaecompress file (bad magic)")
    if len(data) >= len(MAGIC) + 2:
        (version,) = struct.unpack_from("<H", data, len(MAGIC))
        if version not in READ_VERSIONS:
            raise FormatError(_version_message(version))
    if len(data) < PREAMBLE_SIZE:
        raise FormatError("truncated file: it ends inside the preamble")
    _, version, flags, header_len, crc = _PREAMBLE.unpack_from(data, 0)
    if flags & ~KNOWN_FLAGS:
        raise FormatError(
            f"unknown flags 0x{flags & ~KNOWN_FLAGS:04x} are set; upgrade vaecompress"
        )
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(
            f"bad header: header_len {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes"
        )
    header_end = PREAMBLE_SIZE + header_len
    if len(data) < header_end:
        raise FormatError(
            f"truncated file: header needs {header_len} bytes, {len(data) - PREAMBLE_SIZE} present"
        )
    stored = data[PREAMBLE_SIZE:header_end]
    if zlib.crc32(stored) != crc:
        raise FormatError("corrupt header (CRC-32 mismatch)")
    header_bytes = stored if version == 1 else _inflate_header(stored, version)
    header = _parse_json(header_bytes)
    check_header(header, version)
    return header, header_end


def _check_section_length(entries: list[dict[str, Any]], present: int) -> None:
    needed = sum(p["length"] for p in entries)
    if present < needed:
        raise FormatError(f"truncated file: payloads need {needed} bytes, {present} present")
    if present > needed:
        raise FormatError(f"trailing bytes: {present - needed} bytes after the last payload")


def _payload(entry: dict[str, Any], blob: bytes) -> Payload:
    if file_sha256(blob) != entry["sha256"]:
        raise FormatError(f"payload {short(entry['name'])} is corrupt (sha256 mismatch)")
    return Payload(name=entry["name"], kind=entry["kind"], role=entry["role"], data=blob)


def _container(header: dict[str, Any], payloads: list[Payload]) -> Container:
    return Container(
        codec=header["codec"],
        tensors=header["tensors"],
        codec_state=header["codec_state"],
        payloads=payloads,
        externals=[
            External(
                name=e["name"],
                kind=e["kind"],
                role=e["role"],
                sha256=e["sha256"],
                length=e["length"],
            )
            for e in header["externals"]
        ],
        meta=header["meta"],
        format_version=int(header["format_version"]),
    )


def _inflate_header(stored: bytes, version: int) -> bytes:
    """The stored header of version 2 and later: u32 json_len, then raw deflate (with the
    version's preset dictionary) of exactly json_len bytes. json_len is checked against the
    limit before inflating, and inflating stops there, so a decompression bomb costs at most
    MAX_HEADER_BYTES of memory."""
    if len(stored) < _U32.size:
        raise FormatError("bad header: stored header is shorter than its 4-byte length")
    (json_len,) = _U32.unpack_from(stored, 0)
    if json_len > MAX_HEADER_BYTES:
        raise FormatError(
            f"bad header: header JSON length {json_len} exceeds the limit of "
            f"{MAX_HEADER_BYTES} bytes"
        )
    z = zlib.decompressobj(-15, zdict=header_zdict(version))
    try:
        # max_length json_len + 1: one byte too many is enough to see a lying length.
        out = z.decompress(stored[_U32.size :], json_len + 1)
    except zlib.error as e:
        raise FormatError(f"bad header: compressed header is corrupt ({e})") from None
    if len(out) != json_len or not z.eof or z.unused_data or z.unconsumed_tail:
        raise FormatError(
            "bad header: compressed header does not inflate to exactly its declared "
            f"{json_len} bytes"
        )
    return out


def _version_message(version: int) -> str:
    return (
        f"format version {version} is not supported by this vaecompress "
        f"(reads {', '.join(map(str, READ_VERSIONS))}); upgrade vaecompress"
    )


def _parse_json(header_bytes: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("duplicate key")
        return obj

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    def finite_float(text: str) -> float:
        # 1e999 parses to inf: the same as the Infinity that no_constants refuses.
        x = float(text)
        if not math.isfinite(x):
            raise ValueError(f"number {short(text)} is not finite")
        return x

    try:
        text = header_bytes.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=no_duplicates,
            parse_constant=no_constants,
            parse_float=finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: a hostile header nested thousands deep must not crash the reader.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"bad header JSON: {msg}") from None
