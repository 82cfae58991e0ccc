"""A model folder coded one shard at a time, so that memory follows the largest shard, not
the model (issue 21).

`compress_folder(folder, output, codec)` reads one shard of a Hugging Face model folder
(`folders`), codes it with `api.compress` (every check and the default's lossless fallback, per
shard), using `codec.for_part(its weights, the model's)` so that the shards together keep the
codec's promise for the whole (`Codec.streams`), spools the shard's file to an unnamed temporary
file beside the output, and drops the shard before reading the next. The header is written last,
in front of the spooled members, atomically (`files.atomic_write`).

The file is a container (docs/format.md) whose codec is `shards` (read here, not a registered
codec): its manifest is every tensor in shard order, its codec state the number of shards, its
payloads `s0, s1, ...` (kind `vaecompress`) each a complete vaecompress file of one shard with
its own manifest and checksum, and its meta the folder's layout (`folders.FOLDER_KEY`).
`decompress_folder` writes the folder back one shard at a time, reading one member at a time
where it lies in the file (its bytes checked in place, then its header and payloads read:
`format.check_payload`, `format.load_payloads(within=...)`); `join` (what `api.decompress`
does with such a file) rebuilds the whole state_dict. Every member's manifest is checked
against the outer one and the layout before its tensors are used.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vaecompress.accounting import Accounting, account
from vaecompress.api import compress, decompress_container, max_decoded_bytes
from vaecompress.codecs.base import Codec, CodecContext
from vaecompress.errors import FormatError, UserError
from vaecompress.fidelity import combined
from vaecompress.files import atomic_write, check_outputs
from vaecompress.folders import (
    FOLDER_KEY,
    FolderLayout,
    Shard,
    float_weights,
    other_files,
    read_shard,
    shard_files,
    write_folder_parts,
)
from vaecompress.format import (
    ROLE_CODE,
    Container,
    check_payload,
    dumps_head,
    load_payloads,
    loads,
    payload_entry,
    read_index,
)
from vaecompress.io import StateDict
from vaecompress.progress import progress
from vaecompress.sharded import MEMBER_KIND, SHARDS_CODEC, SHARDS_VERSION, member_name

COPY_CHUNK = 16 * 2**20  # bytes copied at a time from the spool into the file


@dataclass
class ShardedResult:
    """What `compress_folder` wrote, in the terms of `api.CompressResult` (the same report)."""

    path: Path
    accounting: Accounting
    compress_s: float
    fidelity: dict[str, Any]
    codec: str
    members: list[dict[str, Any]]  # per shard: file, codec, bytes, fallback
    report: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    evaluation: dict[str, Any] | None = None


def manifest(state: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in state.items()]


def compress_folder(folder: str | Path, output: str | Path, codec: Codec, *,
                    fallback: bool = False, ctx: CodecContext | None = None,
                    meta: Mapping[str, Any] | None = None) -> ShardedResult:
    """Code the model folder `folder` into the file `output`, one shard at a time, with a
    codec that streams (`codec.streams()`); `fallback` as in `api.compress`, per shard."""
    if not codec.streams():
        raise UserError(f"{codec.name} with these settings needs the whole model at once; it "
                        "cannot code a folder one shard at a time")
    folder, output = Path(folder), Path(output)
    check_outputs([output], inputs=[folder])
    files = shard_files(folder)
    counts = [float_weights(folder, f) for f in files]
    total = sum(counts)
    ctx = replace(ctx or CodecContext(), checkpoint=None)
    t0 = time.perf_counter()
    shards: list[Shard] = []
    tensors: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    fids: list[dict[str, Any]] = []
    code = model = 0
    seen: set[str] = set()
    with tempfile.TemporaryFile(dir=output.parent) as spool, \
            progress(len(files), desc=f"shards {ctx.label}".strip(), unit="shard",
                     enabled=ctx.progress) as bar:
        for k, (file, count) in enumerate(zip(files, counts, strict=True)):
            part, shard_meta = read_shard(folder, file)
            twice = next((t for t in part if t in seen), None)
            if twice is not None:
                raise UserError(f"tensor {twice!r} is in two shards of {folder}")
            seen.update(part)
            res = compress(part, codec.for_part(count, total), fallback=fallback,
                           ctx=replace(ctx, label=f"{ctx.label} {file}".strip()))
            if res.externals:
                raise UserError(f"{res.codec} writes external files, which a sharded file "
                                "cannot hold")
            spool.write(res.data)
            entries.append(payload_entry(member_name(k), MEMBER_KIND, ROLE_CODE, res.data))
            shards.append(Shard(file, list(part), shard_meta))
            tensors += manifest(part)
            members.append({"file": file, "codec": res.codec, "bytes": len(res.data),
                            "snr_db": res.report.get("snr_db"), "fallback": res.fallback})
            fids.append(res.fidelity)
            code += res.accounting.payload_bytes
            model += res.accounting.model_bytes
            del part, res
            bar.update()
        layout = FolderLayout(shards, other_files(folder, shards))
        c = Container(codec={"name": SHARDS_CODEC, "version": SHARDS_VERSION,
                             "settings": {"codec": codec.name, **codec.settings_json()}},
                      tensors=tensors, codec_state={"shards": len(files)},
                      meta={**(meta or {}), FOLDER_KEY: layout.to_json()})
        head = dumps_head(c, entries)

        def write(f: Any) -> None:
            f.write(head)
            spool.seek(0)
            shutil.copyfileobj(spool, f, COPY_CHUNK)

        size = atomic_write(output, write)
    acc = account(c, size)
    acc = replace(acc, payload_bytes=code, model_bytes=model,
                  ratio_paper=acc.orig_bytes / code if code else float("inf"))
    fell = [m["file"] for m in members if m["fallback"]]
    return ShardedResult(
        output, acc, time.perf_counter() - t0, combined(fids), codec.name, members,
        report={"shards": len(files), "member_bytes": [m["bytes"] for m in members]},
        fallback=(f"{len(fell)} of {len(files)} shards kept lossless ({fell[0]}, ...): "
                  f"{codec.name} made them larger than their weights") if fell else None)


def is_sharded(c: Container) -> bool:
    return c.codec.get("name") == SHARDS_CODEC


def read_layout(c: Container) -> FolderLayout:
    """The checked header of a sharded file: its layout, one shard per member, and the outer
    manifest that of the layout's tensors in order (FormatError otherwise)."""
    version = c.codec.get("version")
    if not isinstance(version, int) or version > SHARDS_VERSION:
        raise FormatError(f"sharded file v{version} is newer than this vaecompress reads "
                          f"(v{SHARDS_VERSION}); upgrade vaecompress")
    n = c.codec_state.get("shards")
    layout = FolderLayout.from_json(c.meta.get(FOLDER_KEY))
    if not (isinstance(n, int) and not isinstance(n, bool) and n == len(layout.shards)):
        raise FormatError("sharded file's codec state does not match its folder layout")
    if [t for s in layout.shards for t in s.tensors] != [t["name"] for t in c.tensors]:
        raise FormatError(f"meta '{FOLDER_KEY}' does not list the file's tensors in order")
    return layout


def _member(c: Container, k: int, shard: Shard, start: int, member: Container) -> StateDict:
    """Member k decoded (its own checksum checked by `api.decompress_container`), and what
    it rebuilt checked to be the tensors the outer manifest lists for its shard, in order."""
    state = decompress_container(member)
    if manifest(state) != c.tensors[start : start + len(shard.tensors)]:
        raise FormatError(f"member {member_name(k)} holds other tensors than the file's "
                          "manifest lists for its shard")
    return state


def _starts(layout: FolderLayout) -> list[int]:
    out, pos = [], 0
    for s in layout.shards:
        out.append(pos)
        pos += len(s.tensors)
    return out


def join(c: Container, *, max_bytes: int | None = None) -> StateDict:
    """Every tensor of a sharded container whose payloads are loaded, in shard order."""
    layout = read_layout(c)
    _check_size(c, max_bytes)
    state: StateDict = {}
    for k, (shard, start) in enumerate(zip(layout.shards, _starts(layout), strict=True)):
        p = c.payload(member_name(k), kinds=[MEMBER_KIND])
        state.update(_member(c, k, shard, start, loads(p.data)))
    return state


def _check_size(c: Container, max_bytes: int | None) -> None:
    limit = max_decoded_bytes() if max_bytes is None else max_bytes
    if c.decoded_bytes > limit:
        raise FormatError(
            f"the file declares a model of {c.decoded_bytes:,} bytes, more than the limit of "
            f"{limit:,} (set VAECOMPRESS_MAX_DECODED_BYTES to allow it)")


def decompress_folder(path: str | Path, output: str | Path) -> FolderLayout:
    """Write the model folder a sharded file holds to the new folder `output`, one shard at a
    time (all or nothing)."""
    c, entries, _ = read_index(path, verify=False)
    if not is_sharded(c):
        raise UserError(f"{path} is not a sharded file")
    layout = read_layout(c)
    _check_size(c, None)
    starts = _starts(layout)
    members = {e.name: e for e in entries}

    def part_of(k: int, shard: Shard) -> StateDict:
        # The member's bytes checked in place against the outer sha256, then its header and
        # payloads read where they lie (each against its own sha256): the member's bytes are
        # never held beside its payloads.
        e = members.get(member_name(k))
        if e is None or e.kind != MEMBER_KIND:
            raise FormatError(f"{path}: file has no member {member_name(k)} of kind "
                              f"{MEMBER_KIND}")
        check_payload(path, e)
        return _member(c, k, shard, starts[k], load_payloads(path, None, within=e))

    write_folder_parts(output, layout, part_of)
    return layout
