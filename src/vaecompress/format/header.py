"""The header's schema: every field a reader uses, checked before use (spec: docs/format.md).

Boundary: this module takes the parsed header JSON of a file (any format version) and either
accepts it or raises `FormatError('bad header: ...')`; it also defines the limits (name
lengths, rank, the decoded-size cap) and the dtype allow-list with item sizes, so that callers
can size allocations from a manifest without trusting it. It knows no framing and no codec.
"""

from __future__ import annotations

import re
from typing import Any

from vaecompress.errors import FormatError, short

ROLE_CODE, ROLE_MODEL, ROLE_AUX = "code", "model", "aux"
ROLES = frozenset({ROLE_CODE, ROLE_MODEL, ROLE_AUX})

# The only dtype names a manifest may hold, with their item sizes in bytes. A name outside this
# table never reaches the codecs, so their torch dtype lookups only ever see these names.
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
MAX_NAME_CHARS = 1024  # tensor, payload and external names
MAX_RANK = 32  # dimensions of one tensor
# Cap on declared sizes: one dimension, one tensor's bytes, the whole manifest's decoded bytes,
# one external's length. 1 TiB is far beyond any model this tool compresses, and small enough
# that size arithmetic stays exact in int64 everywhere downstream.
MAX_DECODED_BYTES = 2**40
MAX_CODEC_VERSION = 2**31 - 1

_KIND_RE = re.compile(r"[a-z0-9._-]{1,64}")  # payload/external kinds and codec names
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
HEADER_KEYS = (
    "format_version",
    "codec",
    "tensors",
    "codec_state",
    "payloads",
    "externals",
    "meta",
)


def check_header(h: Any, version: int) -> None:
    """Check every key the reader relies on; raises FormatError('bad header: ...').

    Version 1 payload entries carry an `offset` (checked to be contiguous); version 2 entries
    have none, their offsets being implied by order."""
    _expect(isinstance(h, dict), "bad header JSON: not an object")
    for key in HEADER_KEYS:
        _expect(key in h, f"bad header: missing key {key!r}")
    if not _is_int(h["format_version"]) or h["format_version"] != version:
        raise FormatError(
            f"bad header: format_version {short(h['format_version'])} does not "
            f"match the preamble ({version})"
        )
    check_strings(h)

    codec = h["codec"]
    _expect(isinstance(codec, dict), "bad header: 'codec' must be an object")
    name = codec.get("name")
    _expect(
        isinstance(name, str) and _KIND_RE.fullmatch(name) is not None,
        f"bad header: codec name {short(name)} is not 1-64 of [a-z0-9._-]",
    )
    cv = codec.get("version")
    _expect(
        _is_int(cv) and 0 <= cv <= MAX_CODEC_VERSION,
        f"bad header: codec version must be an integer in 0..{MAX_CODEC_VERSION}",
    )
    _expect(isinstance(codec.get("settings"), dict), "bad header: codec settings must be an object")
    for key in ("codec_state", "meta"):
        _expect(isinstance(h[key], dict), f"bad header: {key!r} must be an object")

    decoded_bytes(h["tensors"])

    names: set[str] = set()
    _expect(isinstance(h["payloads"], list), "bad header: 'payloads' must be a list")
    offset = 0
    for p in h["payloads"]:
        label = _check_entry(p, "payload", names)
        if version == 1:
            _expect("offset" in p, "bad header: payload entry missing key 'offset'")
            _expect(
                _is_int(p["offset"]) and p["offset"] >= 0,
                f"bad header: {label} offset must be a non-negative integer",
            )
            if p["offset"] != offset:
                raise FormatError(
                    f"bad header: {label} offset {p['offset']} should be {offset} "
                    "(payloads are contiguous)"
                )
        offset += p["length"]
    _expect(isinstance(h["externals"], list), "bad header: 'externals' must be a list")
    for e in h["externals"]:
        label = _check_entry(e, "external", names)
        _expect(
            e["length"] <= MAX_DECODED_BYTES,
            f"bad header: {label} length {e['length']} exceeds the cap of {MAX_DECODED_BYTES}",
        )


def decoded_bytes(tensors: Any) -> int:
    """Check a tensor manifest and return its total declared decoded size in bytes
    (sum of numel * itemsize), which is at most MAX_DECODED_BYTES."""
    _expect(isinstance(tensors, list), "bad header: 'tensors' must be a list")
    seen: set[str] = set()
    total = 0
    for t in tensors:
        _expect(
            isinstance(t, dict) and all(k in t for k in ("name", "shape", "dtype")),
            "bad header: tensor entries need name, shape and dtype",
        )
        name = t["name"]
        _expect(
            _is_name(name),
            f"bad header: tensor name must be a string of 1 to {MAX_NAME_CHARS} characters",
        )
        label = f"bad header: tensor {short(name)}"
        _expect(name not in seen, f"{label} is listed twice")
        seen.add(name)
        dtype = t["dtype"]
        if not (isinstance(dtype, str) and dtype in DTYPE_ITEMSIZE):
            raise FormatError(
                f"{label} dtype {short(dtype)} is not one of {', '.join(DTYPE_ITEMSIZE)}"
            )
        nbytes = _tensor_bytes(t["shape"], DTYPE_ITEMSIZE[dtype], label)
        total += nbytes
        _expect(
            total <= MAX_DECODED_BYTES,
            f"bad header: the tensors declare more than {MAX_DECODED_BYTES} decoded bytes in total",
        )
    return total


def _tensor_bytes(shape: Any, itemsize: int, label: str) -> int:
    _expect(
        isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape),
        f"{label} shape must be a list of non-negative integers",
    )
    _expect(len(shape) <= MAX_RANK, f"{label} has rank {len(shape)}, more than {MAX_RANK}")
    for d in shape:
        _expect(d <= MAX_DECODED_BYTES, f"{label} dimension {d} exceeds {MAX_DECODED_BYTES}")
    if 0 in shape:
        return 0
    nbytes = itemsize
    for d in shape:
        nbytes *= d  # both factors <= 2**40, so this never grows past 2**80 before the check
        _expect(
            nbytes <= MAX_DECODED_BYTES,
            f"{label} declares more than the cap of {MAX_DECODED_BYTES} bytes",
        )
    return nbytes


def _check_entry(e: Any, what: str, names: set[str]) -> str:
    """Check a payload or external entry; returns its label for further messages."""
    _expect(isinstance(e, dict), f"bad header: {what} entries must be objects")
    for key in ("name", "kind", "role", "sha256", "length"):
        _expect(key in e, f"bad header: {what} entry missing key {key!r}")
    name = e["name"]
    _expect(
        _is_name(name),
        f"bad header: {what} name must be a string of 1 to {MAX_NAME_CHARS} characters",
    )
    label = f"{what} {short(name)}"
    _expect(name not in names, f"bad header: name {short(name)} is used twice")
    names.add(name)
    kind, role = e["kind"], e["role"]
    if not (isinstance(kind, str) and _KIND_RE.fullmatch(kind)):
        raise FormatError(f"bad header: {label} kind {short(kind)} is not 1-64 of [a-z0-9._-]")
    if not (isinstance(role, str) and role in ROLES):
        raise FormatError(
            f"bad header: {label} role {short(role)} is not one of {', '.join(sorted(ROLES))}"
        )
    _expect(
        _is_int(e["length"]) and e["length"] >= 0,
        f"bad header: {label} length must be a non-negative integer",
    )
    sha = e["sha256"]
    _expect(
        isinstance(sha, str) and _SHA256_RE.fullmatch(sha) is not None,
        f"bad header: {label} sha256 must be 64 lowercase hex digits",
    )
    return label


def check_strings(h: Any) -> None:
    """Every string in the header (keys and values) must be valid Unicode: JSON escapes can
    spell lone surrogates, which no UTF-8 file name, terminal or safetensors key accepts."""
    stack = [h]
    while stack:  # iterative: the parser already bounds depth, this must not recurse
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise FormatError(
                    f"bad header: string {short(x)} is not valid Unicode (lone surrogate)"
                ) from None


def _is_int(x: Any) -> bool:
    # bool is an int subclass in Python, but `true` is not a length.
    return isinstance(x, int) and not isinstance(x, bool)


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_NAME_CHARS


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise FormatError(message)
