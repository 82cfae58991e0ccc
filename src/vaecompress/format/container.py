"""The vaecompress file container (spec: docs/format.md).

Boundary: this module turns a `Container` (codec description, tensor manifest, codec state,
named byte payloads, external references, meta) into bytes and back, and writes/reads files
atomically. It never interprets payload bytes, knows no codec, and does not import torch;
compression ratios (accounting) are computed elsewhere from what it returns.

Every problem with a file being read is a `FormatError` with a one-line message. A
`Container` that cannot be written (bad role, duplicate names, non-JSON meta) is a bug in
the caller and raises `ValueError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaecompress.errors import FormatError, UserError

ROLE_CODE, ROLE_MODEL, ROLE_AUX = "code", "model", "aux"
ROLES = frozenset({ROLE_CODE, ROLE_MODEL, ROLE_AUX})
MAGIC = b"VAECOMP\x00"
FORMAT_VERSION = 1
KNOWN_FLAGS = 0  # version 1 defines no flag bits
MAX_HEADER_BYTES = 64 * 1024 * 1024

# magic, u16 version, u16 flags, u32 header_len, u32 header crc32; little-endian, no padding
_PREAMBLE = struct.Struct("<8sHHII")
PREAMBLE_SIZE = _PREAMBLE.size  # 20

_KIND_RE = re.compile(r"[a-z0-9._-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HEADER_KEYS = (
    "format_version",
    "codec",
    "tensors",
    "codec_state",
    "payloads",
    "externals",
    "meta",
)


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


def dumps(c: Container) -> bytes:
    """Serialize `c`; the same container always gives byte-identical output."""
    payload_entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for p in c.payloads:
        data = bytes(p.data)
        payload_entries.append(
            {
                "name": p.name,
                "kind": p.kind,
                "role": p.role,
                "offset": offset,
                "length": len(data),
                "sha256": file_sha256(data),
            }
        )
        blobs.append(data)
        offset += len(data)
    header = {
        "format_version": FORMAT_VERSION,
        "codec": c.codec,
        "tensors": c.tensors,
        "codec_state": c.codec_state,
        "payloads": payload_entries,
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
        _check_header(json.loads(text))
    except (FormatError, TypeError, ValueError) as e:
        raise ValueError(f"cannot write container: {e}") from e
    header_bytes = text.encode("ascii")  # json.dumps escapes non-ASCII by default
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(
            f"cannot write container: header is {len(header_bytes)} bytes, "
            f"more than {MAX_HEADER_BYTES}"
        )
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), zlib.crc32(header_bytes))
    return b"".join([preamble, header_bytes, *blobs])


def save(c: Container, path: str | os.PathLike[str]) -> int:
    """Write `c` to `path` atomically and return the number of bytes written.

    Readers see either the old file or the complete new one: the bytes go to a temporary
    file in the same directory (os.replace is only atomic within one filesystem), are
    fsynced, and then renamed over `path`. On any failure the temporary file is removed.
    """
    data = dumps(c)
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise UserError(f"no such directory: {parent}")
    while True:
        tmp = parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            # os.open with mode 0o666 lets the umask decide permissions, unlike mkstemp (0o600).
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)
    return len(data)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and the file is
    # already complete, so failure here is not an error.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading


def load(path: str | os.PathLike[str]) -> Container:
    """Read and fully verify the file at `path`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"not a file: {path}") from None
    except PermissionError:
        raise UserError(f"permission denied: {path}") from None
    try:
        return loads(data)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e


def loads(data: bytes) -> Container:
    """Parse and fully verify a file's bytes (magic, version, CRC, header, hashes)."""
    data = bytes(data)
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data) and data:
            raise FormatError("truncated file: it ends inside the preamble")
        raise FormatError("not a vaecompress file (bad magic)")
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError("not a vaecompress file (bad magic)")
    if len(data) >= len(MAGIC) + 2:
        (version,) = struct.unpack_from("<H", data, len(MAGIC))
        if version != FORMAT_VERSION:
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
    header_bytes = data[PREAMBLE_SIZE:header_end]
    if zlib.crc32(header_bytes) != crc:
        raise FormatError("corrupt header (CRC-32 mismatch)")
    header = _parse_json(header_bytes)
    _check_header(header)

    section = memoryview(data)[header_end:]
    entries = header["payloads"]
    needed = sum(p["length"] for p in entries)
    if len(section) < needed:
        raise FormatError(f"truncated file: payloads need {needed} bytes, {len(section)} present")
    if len(section) > needed:
        raise FormatError(f"trailing bytes: {len(section) - needed} bytes after the last payload")
    payloads = []
    for p in entries:
        blob = bytes(section[p["offset"] : p["offset"] + p["length"]])
        if file_sha256(blob) != p["sha256"]:
            raise FormatError(f"payload {_short(p['name'])} is corrupt (sha256 mismatch)")
        payloads.append(Payload(name=p["name"], kind=p["kind"], role=p["role"], data=blob))
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
    )


def _version_message(version: int) -> str:
    return (
        f"format version {version} is not supported by this vaecompress "
        f"(reads {FORMAT_VERSION}); upgrade vaecompress"
    )


def _parse_json(header_bytes: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("duplicate key")
        return obj

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        text = header_bytes.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: a hostile header nested thousands deep must not crash the reader.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"bad header JSON: {msg}") from None


# --------------------------------------------------------------- header validation


def _check_header(h: Any) -> None:
    """Check every key the reader relies on; raises FormatError('bad header: ...')."""
    _expect(isinstance(h, dict), "bad header JSON: not an object")
    for key in _HEADER_KEYS:
        _expect(key in h, f"bad header: missing key {key!r}")
    if not _is_int(h["format_version"]) or h["format_version"] != FORMAT_VERSION:
        raise FormatError(
            f"bad header: format_version {_short(h['format_version'])} does not "
            f"match the preamble ({FORMAT_VERSION})"
        )

    codec = h["codec"]
    _expect(isinstance(codec, dict), "bad header: 'codec' must be an object")
    _expect(_is_name(codec.get("name")), "bad header: codec name must be a non-empty string")
    _expect(_is_int(codec.get("version")), "bad header: codec version must be an integer")
    _expect(isinstance(codec.get("settings"), dict), "bad header: codec settings must be an object")
    for key in ("codec_state", "meta"):
        _expect(isinstance(h[key], dict), f"bad header: {key!r} must be an object")

    _check_tensors(h["tensors"])

    names: set[str] = set()
    _expect(isinstance(h["payloads"], list), "bad header: 'payloads' must be a list")
    offset = 0
    for p in h["payloads"]:
        label = _check_entry(p, "payload", ("offset",), names)
        if p["offset"] != offset:
            raise FormatError(
                f"bad header: {label} offset {p['offset']} should be {offset} "
                "(payloads are contiguous)"
            )
        offset += p["length"]
    _expect(isinstance(h["externals"], list), "bad header: 'externals' must be a list")
    for e in h["externals"]:
        _check_entry(e, "external", (), names)


def _check_tensors(tensors: Any) -> None:
    _expect(isinstance(tensors, list), "bad header: 'tensors' must be a list")
    seen: set[str] = set()
    for t in tensors:
        _expect(
            isinstance(t, dict) and all(k in t for k in ("name", "shape", "dtype")),
            "bad header: tensor entries need name, shape and dtype",
        )
        name = t["name"]
        _expect(isinstance(name, str), "bad header: tensor name must be a string")
        label = f"bad header: tensor {_short(name)}"
        _expect(name not in seen, f"{label} is listed twice")
        seen.add(name)
        shape = t["shape"]
        _expect(
            isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape),
            f"{label} shape must be a list of non-negative integers",
        )
        _expect(_is_name(t["dtype"]), f"{label} dtype must be a non-empty string")


def _check_entry(e: Any, what: str, extra_ints: tuple[str, ...], names: set[str]) -> str:
    """Check a payload or external entry; returns its label for further messages."""
    _expect(isinstance(e, dict), f"bad header: {what} entries must be objects")
    for key in ("name", "kind", "role", "sha256", "length", *extra_ints):
        _expect(key in e, f"bad header: {what} entry missing key {key!r}")
    name = e["name"]
    _expect(_is_name(name), f"bad header: {what} name must be a non-empty string")
    label = f"{what} {_short(name)}"
    _expect(name not in names, f"bad header: name {_short(name)} is used twice")
    names.add(name)
    kind, role = e["kind"], e["role"]
    if not (isinstance(kind, str) and _KIND_RE.fullmatch(kind)):
        raise FormatError(f"bad header: {label} kind {_short(kind)} is not 1-64 of [a-z0-9._-]")
    if not (isinstance(role, str) and role in ROLES):
        raise FormatError(
            f"bad header: {label} role {_short(role)} is not one of {', '.join(sorted(ROLES))}"
        )
    for key in ("length", *extra_ints):
        _expect(
            _is_int(e[key]) and e[key] >= 0,
            f"bad header: {label} {key} must be a non-negative integer",
        )
    sha = e["sha256"]
    _expect(
        isinstance(sha, str) and _SHA256_RE.fullmatch(sha) is not None,
        f"bad header: {label} sha256 must be 64 lowercase hex digits",
    )
    return label


def _is_int(x: Any) -> bool:
    # bool is an int subclass in Python, but `true` is not a length.
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x: Any) -> str:
    # Hostile headers can hold megabyte-long names; error messages stay one short line.
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and x != ""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise FormatError(message)
