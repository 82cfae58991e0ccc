"""The public API: state_dict -> bytes -> state_dict, with the accounting of every result.

result = vaecompress.compress(state)                  # the default: near-lossless, no data
result = vaecompress.compress(state, snr=30)          # the default codec at another fidelity
result = vaecompress.compress(state, "vae-paper", latent=64)
result = vaecompress.compress(state, "vae-rd", finetune=vaecompress.Finetuner(loss, batches))
result = vaecompress.compress(state, "vae-rd", finetune=vaecompress.distiller(net, inputs))
vaecompress.save(result, "model.vaec")            # atomic; writes any external file beside it
state = vaecompress.decompress(Path("model.vaec").read_bytes())
state = vaecompress.decompress_file("model.vaec")  # the same, reading the externals beside it

Any state_dict is accepted (any names, float32/float16/bfloat16/float64, integer and bool
tensors, empty and 0-d ones; docs/own-model.md says what each codec does with each dtype), and a
codec that trains on the task (`vae-rd`, `prune`, `deep-compression`, `kmeans` with
`finetune_epochs`) takes any task through a `Finetuner`: a loss of the model run with given
tensors (`training.finetune.ModuleLoss` makes one from an nn.Module and a criterion) and batches;
without labels, `tasks.distill.distiller` distils the original model (the teacher) into the
rebuilt one on batches of inputs.

Externals are the separate files a codec declares (`Codec.externals`, e.g. vae-paper's
"decoder"); by default each lies beside the file as `<file>.<name>.safetensors`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress import checksum
from vaecompress.accounting import Accounting, account
from vaecompress.codecs import DEFAULT_CODEC, LOSSLESS_CODEC
from vaecompress.codecs.base import Codec, CodecContext, get_codec_class, make_codec
from vaecompress.errors import FormatError, UserError
from vaecompress.family import delta
from vaecompress.fidelity import change_fidelity, weights_fidelity
from vaecompress.files import atomic_write_all, check_outputs, read_file
from vaecompress.format import Container, as_read, dumps, loads
from vaecompress.format.header import DTYPE_ITEMSIZE, MAX_NAME_CHARS, MAX_RANK
from vaecompress.inspection import inspect  # noqa: F401  (public API)
from vaecompress.io import StateDict
from vaecompress.sharded import SHARDS_CODEC
from vaecompress.tasks.distill import DistillLoss, distiller  # noqa: F401  (public API)
from vaecompress.training.finetune import Finetuner, ModuleLoss  # noqa: F401  (public API)

# The checksum of the rebuilt tensors, recorded in the file's `meta` at compression
# (`vaecompress.checksum`; spec: docs/format.md, "Checksum of the rebuilt tensors").
DECODED_KEY = checksum.DECODED_KEY
# The largest model `decompress` rebuilds unless told otherwise (the manifest's declared size,
# checked before any decoding); VAECOMPRESS_MAX_DECODED_BYTES overrides it.
DEFAULT_MAX_DECODED_BYTES = 2**34


@dataclass
class CompressResult:
    data: bytes  # the file
    externals: dict[str, bytes]  # referenced blobs (e.g. the decoder), by payload name
    accounting: Accounting
    compress_s: float
    report: dict[str, Any] = field(default_factory=dict)
    rebuilt: StateDict | None = None  # what decoding the file gives (decoded once to check it)
    codec: str = ""  # the codec that wrote `data`
    # What the rebuilt weights lost (`fidelity.weights_fidelity`), measured on every result.
    fidelity: dict[str, Any] = field(default_factory=dict)
    # Why the codec asked for is not the one that wrote `data` (the default codec fell back to
    # the lossless one), else None.
    fallback: str | None = None
    # What `compress(evaluate=...)` measured of the rebuilt model (its accuracy, its outputs'
    # fidelity), else None.
    evaluation: dict[str, Any] | None = None


def decoded_record(state: Mapping[str, torch.Tensor], *, exact: bool) -> dict[str, Any]:
    """The checksum record of rebuilt tensors, as `compress` stores it under DECODED_KEY."""
    return checksum.record(state, exact=exact)


def check_state(state: Mapping[str, torch.Tensor]) -> None:
    """What any codec can store, checked before any work: string names of 1 to
    MAX_NAME_CHARS characters, tensors of at most MAX_RANK dimensions in a dtype of the
    format's list (`DTYPE_ITEMSIZE`); one UserError naming the first entry that is not."""
    if not isinstance(state, Mapping):
        raise UserError(f"compress takes a state_dict (a mapping of names to tensors), got a "
                        f"{type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str) or not 1 <= len(k) <= MAX_NAME_CHARS:
            raise UserError(f"tensor name {str(k)[:40]!r} must be a string of 1 to "
                            f"{MAX_NAME_CHARS} characters")
        if k in RESERVED_NAMES:
            raise UserError(f"tensor name {k!r} is reserved by safetensors (the file could "
                            "not be read back); rename the tensor")
        if not _encodes(k):
            raise UserError(f"tensor name {k[:40]!r} is not valid Unicode; rename the tensor")
        if not isinstance(v, torch.Tensor):
            raise UserError(f"state entry '{k}' is a {type(v).__name__}, not a tensor")
        dtype = str(v.dtype).removeprefix("torch.")
        if dtype not in DTYPE_ITEMSIZE:
            raise UserError(f"tensor '{k}' has dtype {dtype}, which vaecompress does not store "
                            f"(it stores {', '.join(DTYPE_ITEMSIZE)}): convert it first")
        if v.dim() > MAX_RANK:
            raise UserError(f"tensor '{k}' has {v.dim()} dimensions, more than {MAX_RANK}")


# Names no file can hold: safetensors keeps its own metadata under this key (the passthrough
# blob and the decompressed file are safetensors).
RESERVED_NAMES = frozenset({"__metadata__"})


def _encodes(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_finite_input(codec: type[Codec], state: Mapping[str, torch.Tensor]) -> None:
    """A lossy codec refuses NaN/Inf weights (one would spread through a codebook, a scale or
    a normalization); the lossless ones keep them bit for bit."""
    if codec.lossless:
        return
    for k, v in state.items():
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{codec.name}: tensor '{k}' holds NaN or Inf values; this lossy "
                            "codec refuses them (the lossless zstd keeps them exactly)")


def compress(
    state: Mapping[str, torch.Tensor],
    codec: str | Codec | None = None,
    *,
    fallback: bool | None = None,
    ctx: CodecContext | None = None,
    finetune: Finetuner | None = None,
    meta: Mapping[str, Any] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    evaluate: Callable[[StateDict], Mapping[str, Any]] | None = None,
    **settings: Any,
) -> CompressResult:
    """Compress a state_dict with a registered codec (its name, or a codec made with
    `make_codec`); `settings` override the named codec's defaults.

    Without `codec`, the default (`codecs.DEFAULT_CODEC`, which needs no data), and the
    lossless `codecs.LOSSLESS_CODEC` instead whenever the default would make a file larger
    than the model (`CompressResult.fallback` says so): what `vaecompress compress` does.
    `fallback` asks for (or refuses) that fallback with any codec; by default only the
    default codec falls back.
    `finetune`, the task of a codec that trains on it, replaces `ctx.finetune` (`ctx` holds the
    device, seed and progress bars; default: CPU, seed 0). With `base`, a model the receiver
    already has, the codec codes the difference from it (`family.delta`); the file records the
    base's sha256, and decoding needs the same base. `evaluate`, a measure of a model (e.g. its
    test accuracy), is run on the model rebuilt from the file: `CompressResult.evaluation`, as
    the command line prints it, so a lossy result is never silent."""
    if isinstance(codec, Codec):
        if settings:
            raise TypeError("give the settings to make_codec or to compress, not both")
        enc_codec = codec
    else:
        enc_codec = make_codec(DEFAULT_CODEC if codec is None else codec, **settings)
    check_state(state)
    check_finite_input(type(enc_codec), state)
    ctx = ctx or CodecContext()
    if finetune is not None:
        ctx = replace(ctx, finetune=finetune)
    res = _compress_with(enc_codec, state, ctx, meta, base)
    if (codec is None if fallback is None else fallback) and res.accounting.ratio_honest < 1.0:
        # A codec nobody asked for must never make the file larger than the model.
        why = (f"{enc_codec.name} made a file larger than the model; kept lossless with "
               f"{LOSSLESS_CODEC} instead")
        res = _compress_with(make_codec(LOSSLESS_CODEC), state, ctx, meta, base)
        res.fallback = why
    if evaluate is not None and res.rebuilt is not None:
        res.evaluation = dict(evaluate(res.rebuilt))
    return res


def _compress_with(codec: Codec, state: Mapping[str, torch.Tensor], ctx: CodecContext,
                   meta: Mapping[str, Any] | None,
                   base: Mapping[str, torch.Tensor] | None) -> CompressResult:
    """One codec's file of `state` (against `base` when given), decoded once to record the
    checksum and fidelity of what a reader rebuilds."""
    t0 = time.perf_counter()
    plan = None
    coded = state
    if base is not None:
        check_state(base)
        settings = {f.name: getattr(codec.settings, f.name) for f in fields(codec.settings)}
        plan = delta.plan(type(codec), state, base, settings, ctx.finetune)
        codec = make_codec(codec.name, **plan.settings)
        coded, ctx = plan.coded, replace(ctx, finetune=plan.finetune, reference=state,
                                         change=tuple(delta.paired(state, base)))
    enc = codec.encode(dict(coded), ctx)
    if meta:
        enc.container.meta.update(meta)
    elapsed = time.perf_counter() - t0
    # Decode once, as a reader will (the header as written and read back, the same payload
    # bytes: `format.as_read`), and record what it rebuilt. The file is serialized below,
    # once, with the record of the rebuilt tensors in its header.
    rebuilt = type(codec)().decode(as_read(enc.container), enc.externals)
    if plan is not None:  # the checksum below is of the model, base added back
        enc.container.meta[delta.BASE_KEY] = plan.delta.record()
        enc.report.update(plan.report)
        rebuilt = delta.rebuild(rebuilt, base or {}, plan.delta.op)
    if not codec.lossless and not checksum.finite_norms(rebuilt):
        raise RuntimeError(f"{codec.name} rebuilt non-finite weights from finite ones")
    enc.container.meta[DECODED_KEY] = decoded_record(rebuilt, exact=codec.exact_decode)
    data = dumps(enc.container)
    fidelity = weights_fidelity(state, rebuilt)
    if base is not None:  # and of the change from the base, which the weights' SNR can hide
        fidelity |= change_fidelity(state, base, rebuilt, delta.paired(state, base))
    return CompressResult(
        data, enc.externals, account(enc.container, len(data)), elapsed, enc.report, rebuilt,
        codec=codec.name, fidelity=fidelity,
    )


def _check_decoded(c: Container, codec: type[Codec], state: StateDict) -> None:
    """The rebuilt tensors against the checksum recorded at compression (required from format
    3 on), and never a non-finite weight from a lossy codec."""
    checksum.check(c.meta.get(DECODED_KEY), state, exact=codec.exact_decode,
                   format_version=c.format_version)
    if not codec.lossless:
        for k, t in state.items():
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise FormatError(f"tensor '{k}' decodes to NaN or Inf values: the file is "
                                  "damaged or was made by another decoder")


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


def max_decoded_bytes() -> int:
    """The cap on a manifest's declared decoded size: VAECOMPRESS_MAX_DECODED_BYTES, else
    DEFAULT_MAX_DECODED_BYTES."""
    value = os.environ.get("VAECOMPRESS_MAX_DECODED_BYTES")
    if value is None:
        return DEFAULT_MAX_DECODED_BYTES
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"VAECOMPRESS_MAX_DECODED_BYTES must be an integer, got {value!r}") from None


def decompress(data: bytes, externals: Mapping[str, bytes] | None = None, *,
               stats: dict[str, Any] | None = None, max_bytes: int | None = None,
               base: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """Rebuild the state_dict from a file's bytes (and the bytes of what it references).

    A file coded against a base needs that base (`base`, checked by its sha256 before any
    decoding); a file coded alone refuses one.

    A file whose manifest declares more than `max_bytes` (default `max_decoded_bytes()`) is
    refused before decoding; the rebuilt tensors are checked against the checksum recorded at
    compression (FormatError when they differ).

    `stats`, when given, receives what the codec measured of its own decoding: a codec that
    decodes in a worker process (nncodec) sets `last_decode_s` to the time inside the worker,
    recorded here as `decode_s_inside`, so that a bench compares decoders, not process starts."""
    return decompress_container(loads(data), externals, stats=stats, max_bytes=max_bytes,
                                base=base)


def decompress_container(c: Container, externals: Mapping[str, bytes] | None = None, *,
                         stats: dict[str, Any] | None = None, max_bytes: int | None = None,
                         base: Mapping[str, torch.Tensor] | None = None) -> StateDict:
    """`decompress` of a container already read and verified (`format.loads`, or
    `format.load_payloads` of every payload: a reader that never holds the file's bytes and
    its payloads at once)."""
    if base is not None:
        check_state(base)
    against = delta.check_base(c.meta, base)
    if c.codec.get("name") == SHARDS_CODEC:  # a model folder coded one shard at a time
        from vaecompress.sharded.stream import join

        return join(c, max_bytes=max_bytes)
    externals = dict(externals or {})
    _check_externals(c, externals)
    codec_cls = get_codec_class(c.codec.get("name", "?"))
    newest = codec_cls.reads_version or codec_cls.version
    if int(c.codec.get("version", 0)) > newest:
        raise FormatError(
            f"file was written by {codec_cls.name} v{c.codec.get('version')}; this "
            f"vaecompress reads up to v{newest}"
        )
    limit = max_decoded_bytes() if max_bytes is None else max_bytes
    if c.decoded_bytes > limit:
        raise FormatError(
            f"the file declares a model of {c.decoded_bytes:,} bytes, more than the limit of "
            f"{limit:,} (set VAECOMPRESS_MAX_DECODED_BYTES to allow it)")
    codec = codec_cls()
    try:
        # A hostile file's numbers may overflow on the way to the checks that refuse them:
        # the error says what is wrong, in one line, without numpy's warnings before it.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            state = codec.decode(c, externals)
            if against is not None:
                state = delta.rebuild(state, base or {}, against.op)
            _check_decoded(c, codec_cls, state)
    except MemoryError:
        raise UserError(f"not enough memory to rebuild the model this file declares "
                        f"({c.decoded_bytes:,} bytes)") from None
    if stats is not None and getattr(codec, "last_decode_s", None) is not None:
        stats["decode_s_inside"] = float(codec.last_decode_s)  # type: ignore[attr-defined]
    return state


def external_path(path: str | Path, name: str) -> Path:
    """Where an external called `name` of the file `path` lies by default. A name that cannot
    be part of a file name there (a path separator, a NUL, a line break, too long) is a
    UserError: such a file's externals are given with --external NAME=FILE."""
    path = Path(path)
    target = f"{path.name}.{name}.safetensors"
    bad = next((c for c in ("/", "\\", "\0", "\n", "\r") if c in name), None)
    if bad is not None or name in (".", "..") or len(os.fsencode(target)) > 255:
        why = f"holds {bad!r}" if bad is not None else "is too long for a file name"
        raise UserError(f"the file's external {name[:40]!r} {why}: it cannot lie beside "
                        f"{path.name}; give it with --external NAME=FILE")
    return path.with_name(target)


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
    files: list[tuple[str | Path, bytes]] = [
        (Path(targets[name]) if name in targets else external_path(path, name), blob)
        for name, blob in result.externals.items()]
    files.append((path, result.data))
    check_outputs([p for p, _ in files])
    atomic_write_all(files)  # all or nothing: no orphan external when the file cannot be written


def decompress_file(
    path: str | Path, *, externals: Mapping[str, str | Path] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> StateDict:
    """Rebuild the state_dict from a compressed file. Each external the file references is read
    from the path given for its name, else from beside the file when it lies there; `base` is
    the model a file coded against one needs."""
    path = Path(path)
    data = read_file(path)
    given = dict(externals or {})
    referenced = [e.name for e in loads(data).externals]
    unknown = sorted(set(given) - set(referenced))
    if unknown:
        names = ", ".join(referenced) or "none"
        raise UserError(f"{path} references no external '{unknown[0]}' (it references: {names})")
    blobs = {}
    for name in referenced:
        if name in given:
            blobs[name] = read_file(given[name])
            continue
        p = external_path(path, name)
        if p.exists():
            blobs[name] = read_file(p)
    return decompress(data, blobs, base=base)


load = decompress_file  # the public name of the README's first version
