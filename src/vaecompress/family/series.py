"""A training run's checkpoints in one file, each coded against the previous rebuilt one.

`compress_series([c0, c1, ...], codec)` codes c0 alone (or against a given base) and each next
checkpoint with `api.compress(ck, codec, base=rebuilt(k-1))`: against what the reader will have
rebuilt, not against the original c(k-1), so that the coding errors do not add up along the run
(closed loop; an open loop drifts by the sum of the errors). Every `keyframe_every`-th member is
coded alone again (against the series' base), so that rebuilding one member decodes at most that
many files.

The file is a container (docs/format.md) whose codec is `series` (read here, not a registered
codec), whose manifest is every member's, and whose payloads `m0, m1, ...` (kind `vaecompress`)
are each a complete vaecompress file as `api.compress` writes it, carrying its own base record
and checksum (spec: docs/families.md). Rebuilding member k reads the header and the payloads
from its keyframe to k, and nothing else (`format.load_payloads`); each member rebuilds exactly
as its own file, decoded with the previous member as its base, would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaecompress.api import CompressResult, compress, decompress
from vaecompress.codecs.base import CodecContext, get_codec_class
from vaecompress.errors import FormatError, UserError
from vaecompress.family import SERIES_CODEC
from vaecompress.format import ROLE_CODE, Container, Payload, dumps, load_payloads
from vaecompress.io import StateDict

SERIES_VERSION = 1
MEMBER_KIND = "vaecompress"
MAX_MEMBERS = 100_000


def member_name(k: int) -> str:
    return f"m{k}"


@dataclass
class SeriesResult:
    data: bytes  # the series file
    members: list[CompressResult]  # each member's own file and accounting (given its base)
    labels: list[str]
    compress_s: float
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def orig_bytes(self) -> int:
        return sum(m.accounting.orig_bytes for m in self.members)

    @property
    def ratio(self) -> float:
        """Every member's bytes over the series file's: all that rebuilds them (given the
        series' base, if any)."""
        return self.orig_bytes / len(self.data)


def _manifest(state: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in state.items()]


def _keyframe(k: int, every: int) -> bool:
    return k == 0 or (every > 0 and k % every == 0)


def compress_series(
    states: Sequence[Mapping[str, torch.Tensor]],
    codec: str,
    *,
    labels: Sequence[str] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    keyframe_every: int = 0,
    ctx: CodecContext | None = None,
    **settings: Any,
) -> SeriesResult:
    """Code a run's checkpoints (in order) into one file, each against the previous rebuilt one;
    `base` (optional) is what the first member (and every keyframe) is coded against."""
    n = len(states)
    labels = [str(i) for i in range(n)] if labels is None else [str(x) for x in labels]
    if not 1 <= n <= MAX_MEMBERS:
        raise UserError(f"a series needs 1 to {MAX_MEMBERS} checkpoints, got {n}")
    if len(labels) != n:
        raise UserError(f"{n} checkpoints but {len(labels)} labels")
    if isinstance(keyframe_every, bool) or not isinstance(keyframe_every, int) \
            or keyframe_every < 0:
        raise UserError(f"keyframe_every must be an integer >= 0, got {keyframe_every!r}")
    cls = get_codec_class(codec)
    if not cls.exact_decode:
        raise UserError(f"{codec} decodes with float reductions that may differ by an ulp "
                        "between machines, and each member's base must be rebuilt bit for bit: "
                        "choose another codec for a series")
    manifest = _manifest(states[0])
    for k, state in enumerate(states):
        if _manifest(state) != manifest:
            raise UserError(f"checkpoint {labels[k]} holds other tensors (names, shapes or "
                            f"dtypes) than checkpoint {labels[0]}: a series is the checkpoints "
                            "of one model")
    t0 = time.perf_counter()
    ctx = ctx or CodecContext()
    members: list[CompressResult] = []
    previous: StateDict | None = None
    for k, state in enumerate(states):
        against = base if _keyframe(k, keyframe_every) else previous
        res = compress(state, codec, ctx=ctx, base=against, **settings)
        if res.externals:
            raise UserError(f"{codec} writes external files, which a series cannot hold")
        members.append(res)
        previous = res.rebuilt
    c = Container(codec={"name": SERIES_CODEC, "version": SERIES_VERSION,
                         "settings": {"codec": codec, **settings}},
                  tensors=manifest,
                  codec_state={"members": n, "labels": labels, "keyframe_every": keyframe_every})
    c.payloads = [Payload(member_name(k), MEMBER_KIND, ROLE_CODE, m.data)
                  for k, m in enumerate(members)]
    data = dumps(c)
    report = {"member_bytes": [len(m.data) for m in members]}
    return SeriesResult(data, members, labels, time.perf_counter() - t0, report)


def is_series(c: Container) -> bool:
    return c.codec.get("name") == SERIES_CODEC


@dataclass(frozen=True)
class SeriesIndex:
    """What a series file's header says: its members' labels and the keyframe spacing."""

    labels: list[str]
    keyframe_every: int

    def index(self, member: int | str) -> int:
        """A member by position or label (a label that is not a position is looked up)."""
        n = len(self.labels)
        if isinstance(member, str):
            if member in self.labels:
                return self.labels.index(member)
            if not member.lstrip("-").isdigit():
                raise UserError(f"the series has no member '{member}' (members: "
                                f"{_listed(self.labels)})")
            member = int(member)
        if not -n <= member < n:
            raise UserError(f"the series has {n} members (0..{n - 1}), not {member}")
        return member % n

    def needed(self, k: int) -> list[int]:
        """The members decoded to rebuild member k: from its keyframe to k."""
        every = self.keyframe_every
        start = k - k % every if every > 0 else 0
        return list(range(start, k + 1))


def _listed(labels: Sequence[str]) -> str:
    return ", ".join(labels[:5]) + (f", ... ({len(labels)} in all)" if len(labels) > 5 else "")


def read_index(c: Container) -> SeriesIndex:
    """The checked series header of a container (its payloads need not be loaded)."""
    if not is_series(c):
        raise UserError("this file is one model, not a checkpoint series: decode it without "
                        "--member")
    version = c.codec.get("version")
    if not isinstance(version, int) or version > SERIES_VERSION:
        raise FormatError(f"series v{version} is newer than this vaecompress reads "
                          f"(v{SERIES_VERSION}); upgrade vaecompress")
    state = c.codec_state
    n, labels, every = state.get("members"), state.get("labels"), state.get("keyframe_every")
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_MEMBERS
            and isinstance(labels, list) and len(labels) == n
            and all(isinstance(x, str) for x in labels)
            and isinstance(every, int) and not isinstance(every, bool) and every >= 0):
        raise FormatError("series codec state is malformed (members, labels, keyframe_every)")
    return SeriesIndex(labels, every)


def _members(path: str | Path, ks: list[int]) -> list[bytes]:
    c = load_payloads(path, [member_name(k) for k in ks])
    for p in c.payloads:
        if p.kind != MEMBER_KIND:
            raise FormatError(f"series payload '{p.name}' has kind '{p.kind}', not "
                              f"'{MEMBER_KIND}'")
    return [p.data for p in c.payloads]


def decompress_member(path: str | Path, member: int | str, *,
                      base: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Rebuild one member of a series file, reading only the members it is coded against."""
    index = read_index(load_payloads(path, []))
    needed = index.needed(index.index(member))
    return _chain(_members(path, needed), base)


def decompress_all(path: str | Path, *,
                   base: Mapping[str, torch.Tensor] | None = None) -> list[StateDict]:
    """Every member of a series file, in order (one pass along the chain)."""
    index = read_index(load_payloads(path, []))
    blobs = _members(path, list(range(len(index.labels))))
    out: list[StateDict] = []
    for k, blob in enumerate(blobs):
        start = index.needed(k)[0]
        out.append(_chain([blob], base if start == k else out[-1]))
    return out


def _chain(blobs: list[bytes], base: Mapping[str, torch.Tensor] | None) -> StateDict:
    """Decode member files in order, each with the previous one rebuilt as its base (each
    member's own base record checks that the chain is the one it was coded on)."""
    state: StateDict | None = None
    previous = base
    for blob in blobs:
        state = decompress(blob, base=previous)
        previous = state
    assert state is not None  # blobs is never empty
    return state
