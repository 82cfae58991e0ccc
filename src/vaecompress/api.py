"""The public API: state_dict -> bytes -> state_dict, with the accounting of every result.

result = vaecompress.compress(state, "vae-paper", latent=64)
vaecompress.save(result, "model.vaec")            # atomic; writes any external file beside it
state = vaecompress.decompress(Path("model.vaec").read_bytes())
state = vaecompress.decompress_file("model.vaec")  # the same, reading the externals beside it

Externals are the separate files a codec declares (`Codec.externals`, e.g. vae-paper's
"decoder"); by default each lies beside the file as `<file>.<name>.safetensors`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaecompress.accounting import Accounting, account
from vaecompress.codecs.base import CodecContext, get_codec_class, make_codec
from vaecompress.errors import FormatError, UserError
from vaecompress.format import Container, dumps, loads
from vaecompress.io import StateDict, atomic_write_bytes


@dataclass
class CompressResult:
    data: bytes  # the file
    externals: dict[str, bytes]  # referenced blobs (e.g. the decoder), by payload name
    accounting: Accounting
    compress_s: float
    report: dict[str, Any] = field(default_factory=dict)


def compress(
    state: Mapping[str, torch.Tensor],
    codec: str = "vae-paper",
    *,
    ctx: CodecContext | None = None,
    meta: Mapping[str, Any] | None = None,
    **settings: Any,
) -> CompressResult:
    """Compress a state_dict with a registered codec; `settings` override the codec's defaults."""
    enc_codec = make_codec(codec, **settings)
    ctx = ctx or CodecContext()
    t0 = time.perf_counter()
    enc = enc_codec.encode(dict(state), ctx)
    if meta:
        enc.container.meta.update(meta)
    data = dumps(enc.container)
    elapsed = time.perf_counter() - t0
    return CompressResult(
        data, enc.externals, account(enc.container, len(data)), elapsed, enc.report
    )


def _check_externals(c: Container, externals: Mapping[str, bytes]) -> None:
    for ext in c.externals:
        blob = externals.get(ext.name)
        if blob is None:
            continue  # the codec says what is missing, in its own terms
        sha = hashlib.sha256(blob).hexdigest()
        if sha != ext.sha256:
            raise FormatError(
                f"external '{ext.name}' does not match this file: sha256 {sha[:16]}..."
                f" but the file expects {ext.sha256[:16]}..."
            )


def decompress(data: bytes, externals: Mapping[str, bytes] | None = None, *,
               stats: dict[str, Any] | None = None) -> StateDict:
    """Rebuild the state_dict from a file's bytes (and the bytes of what it references).

    `stats`, when given, receives what the codec measured of its own decoding: a codec that
    decodes in a worker process (nncodec) sets `last_decode_s` to the time inside the worker,
    recorded here as `decode_s_inside`, so that a bench compares decoders, not process starts."""
    c = loads(data)
    externals = dict(externals or {})
    _check_externals(c, externals)
    codec_cls = get_codec_class(c.codec.get("name", "?"))
    if int(c.codec.get("version", 0)) > codec_cls.version:
        raise FormatError(
            f"file was written by {codec_cls.name} v{c.codec.get('version')}; this "
            f"vaecompress reads up to v{codec_cls.version}"
        )
    codec = codec_cls()
    state = codec.decode(c, externals)
    if stats is not None and getattr(codec, "last_decode_s", None) is not None:
        stats["decode_s_inside"] = float(codec.last_decode_s)  # type: ignore[attr-defined]
    return state


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


def external_path(path: str | Path, name: str) -> Path:
    """Where an external called `name` of the file `path` lies by default."""
    path = Path(path)
    return path.with_name(f"{path.name}.{name}.safetensors")


def save(
    result: CompressResult,
    path: str | Path,
    *,
    externals: Mapping[str, str | Path] | None = None,
) -> None:
    """Write the file atomically, and each external the codec produced to the path given for
    its name in `externals`, or beside the file (`external_path`)."""
    path = Path(path)
    targets = dict(externals or {})
    unknown = sorted(set(targets) - set(result.externals))
    if unknown:
        made = ", ".join(sorted(result.externals)) or "none"
        raise UserError(f"this codec wrote no external '{unknown[0]}' (externals written: {made})")
    for name, blob in result.externals.items():
        atomic_write_bytes(Path(targets[name]) if name in targets else external_path(path, name),
                           blob)
    atomic_write_bytes(path, result.data)


def decompress_file(
    path: str | Path, *, externals: Mapping[str, str | Path] | None = None
) -> StateDict:
    """Rebuild the state_dict from a compressed file. Each external the file references is read
    from the path given for its name, else from beside the file when it lies there."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    data = path.read_bytes()
    given = dict(externals or {})
    referenced = [e.name for e in loads(data).externals]
    unknown = sorted(set(given) - set(referenced))
    if unknown:
        names = ", ".join(referenced) or "none"
        raise UserError(f"{path} references no external '{unknown[0]}' (it references: {names})")
    blobs = {}
    for name in referenced:
        p = Path(given[name]) if name in given else external_path(path, name)
        if name in given and not p.is_file():
            raise UserError(f"no such file: {p}")
        if p.is_file():
            blobs[name] = p.read_bytes()
    return decompress(data, blobs)


load = decompress_file  # the public name of the README's first version
