"""What a compressed file holds, read from its header alone: no decoding, and no torch.

`vaecompress inspect` runs on this, so it starts in the time of the format and accounting
modules (numpy at most), not in the seconds that importing torch takes; `vaecompress.inspect`
is the same function.
"""

from __future__ import annotations

from typing import Any

from vaecompress.accounting import account
from vaecompress.family import SERIES_CODEC
from vaecompress.format import loads
from vaecompress.sharded import SHARDS_CODEC


def inspect(data: bytes) -> dict[str, Any]:
    """Header summary and accounting of a file, without decoding it."""
    c = loads(data)
    acc = account(c, len(data))
    info = {
        "codec": c.codec,
        "tensors": len(c.tensors),
        "payloads": [
            {"name": p.name, "kind": p.kind, "role": p.role, "bytes": len(p.data)}
            for p in c.payloads
        ],
        "externals": [
            {"name": e.name, "kind": e.kind, "role": e.role, "sha256": e.sha256, "bytes": e.length}
            for e in c.externals
        ],
        "meta": c.meta,
        "accounting": acc.to_json(),
    }
    if c.codec.get("name") == SHARDS_CODEC:
        # Each payload is a shard's own file: the code the paper counts is the members' code.
        parts = [loads(p.data) for p in c.payloads]
        code = sum(account(m, len(p.data)).payload_bytes
                   for m, p in zip(parts, c.payloads, strict=True))
        info["accounting"]["payload_bytes"] = code
        info["accounting"]["ratio_paper"] = acc.orig_bytes / code if code else float("inf")
        info["shards"] = {"members": len(parts),
                          "codecs": sorted({str(m.codec.get("name")) for m in parts})}
    members = c.codec_state.get("members")
    if c.codec.get("name") == SERIES_CODEC and isinstance(members, int) and members > 0:
        # The accounting above is of one member's manifest; a series rebuilds `members` models.
        info["series"] = {"members": members, "orig_bytes": members * acc.orig_bytes,
                          "ratio": members * acc.orig_bytes / len(data)}
    return info
