"""What a compressed file holds, read from its header alone: no decoding, and no torch.

`vaecompress inspect` runs on this, so it starts in the time of the format and accounting
modules (numpy at most), not in the seconds that importing torch takes; `vaecompress.inspect`
is the same function.
"""

from __future__ import annotations

from typing import Any

from vaecompress.accounting import account
from vaecompress.format import loads


def inspect(data: bytes) -> dict[str, Any]:
    """Header summary and accounting of a file, without decoding it."""
    c = loads(data)
    acc = account(c, len(data))
    return {
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
