"""What a compressed file holds, read from its header alone: no decoding, and no torch.

`vaecompress inspect` runs on this, so it starts in the time of the format and accounting
modules (numpy at most), not in the seconds that importing torch takes; `vaecompress.inspect`
is the same function on bytes. `inspect_file` reads a file in place: its header, then each
payload a chunk at a time against its sha256 (and a sharded file's members' headers where they
lie), so a file of many gigabytes is inspected in the memory of its headers.
"""

from __future__ import annotations

import os
from typing import Any

from vaecompress.accounting import account
from vaecompress.family import SERIES_CODEC
from vaecompress.format import Container, Entry, loads, read_index
from vaecompress.sharded import SHARDS_CODEC

# (name, kind, role, bytes) of each payload
Sizes = list[tuple[str, str, str, int]]


def inspect(data: bytes) -> dict[str, Any]:
    """Header summary and accounting of a file's bytes, without decoding it."""
    c = loads(data)
    members = None
    if c.codec.get("name") == SHARDS_CODEC:
        parts = [(loads(p.data), len(p.data)) for p in c.payloads]
        members = [(m, _sizes_of(m), n) for m, n in parts]
    return _summary(c, _sizes_of(c), len(data), members)


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`inspect` of the file at `path`, read in place (module docstring)."""
    c, entries, size = read_index(path)
    members = None
    if c.codec.get("name") == SHARDS_CODEC:
        members = []
        for e in entries:
            m, m_entries, n = read_index(path, within=e)
            members.append((m, _sizes(m_entries), n))
    return _summary(c, _sizes(entries), size, members)


def _sizes_of(c: Container) -> Sizes:
    return [(p.name, p.kind, p.role, len(p.data)) for p in c.payloads]


def _sizes(entries: list[Entry]) -> Sizes:
    return [(e.name, e.kind, e.role, e.length) for e in entries]


def _summary(c: Container, sizes: Sizes, file_bytes: int,
             members: list[tuple[Container, Sizes, int]] | None) -> dict[str, Any]:
    acc = account(c, file_bytes, [(role, n) for _, _, role, n in sizes])
    info: dict[str, Any] = {
        "format_version": c.format_version,
        "codec": c.codec,
        # what the codec chose and stored beside its settings (e.g. the SNR reached, the
        # weighting, the scale of vae-rd-free): informational, shown, never trusted
        "codec_state": c.codec_state,
        "tensors": len(c.tensors),
        "payloads": [{"name": name, "kind": kind, "role": role, "bytes": n}
                     for name, kind, role, n in sizes],
        "externals": [
            {"name": e.name, "kind": e.kind, "role": e.role, "sha256": e.sha256, "bytes": e.length}
            for e in c.externals
        ],
        "meta": c.meta,
        "accounting": acc.to_json(),
    }
    if members is not None:
        # Each payload is a shard's own file: the code the paper counts is the members' code.
        code = sum(account(m, n, [(role, k) for _, _, role, k in ms]).payload_bytes
                   for m, ms, n in members)
        info["accounting"]["payload_bytes"] = code
        info["accounting"]["ratio_paper"] = acc.orig_bytes / code if code else float("inf")
        info["shards"] = {"members": len(members),
                          "codecs": sorted({str(m.codec.get("name")) for m, _, _ in members})}
    count = c.codec_state.get("members")
    if c.codec.get("name") == SERIES_CODEC and isinstance(count, int) and count > 0:
        # The accounting above is of one member's manifest; a series rebuilds `count` models.
        info["series"] = {"members": count, "orig_bytes": count * acc.orig_bytes,
                          "ratio": count * acc.orig_bytes / file_bytes}
    return info
