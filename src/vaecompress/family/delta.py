"""A model coded as its difference from a base model the receiver already has: one transform
around any codec (spec: docs/families.md, the file field: docs/format.md).

`api.compress(state, codec, base=B)` gives the codec `to_delta(state, B)` instead of `state`, and
decoding adds B back (`rebuild`). The file records the base's fingerprint (`base_sha256`) in its
meta under `BASE_KEY`, never the base's bytes; a reader given another base refuses it. Which
tensor is coded how:

- a floating tensor the base holds under the same name, shape and dtype: a lossy codec codes the
  difference `state - base` (computed in float32, float64 for float64 tensors, stored in the
  tensor's dtype); a lossless codec codes the bitwise XOR of the two bit patterns (ZipNN's
  delta), so that the rebuilt model is the input bit for bit;
- a tensor the base lacks, and every integer or bool tensor: coded as it is;
- a base tensor of the model's name with another shape or dtype: a UserError before any work.

A codec that weighs its error relative to the weights measures it against the model's, not the
delta's: the codec is given the model as `CodecContext.reference`, and vae-rd-free's fidelity
target (`snr`) and weighting are then those of the model (each tensor's error relative to the
model's tensor, the probe run on the model), as when the model is coded alone; the delta's
latents are mostly zero. Its change is held to a fidelity of its own as well (`change_snr`:
the codec is told which tensors are a change, `CodecContext.change`), so that a change smaller
than the error the weights' target allows is not coded as zeros. The trained form
(`solver=adam`), which weighs its rate against the relative error of what it codes through
`lam`, has its `lam` multiplied by |w|^2 / |d|^2 (the model's floating energy over the
delta's) instead.
A codec that trains on the task trains the delta through the model `base + delta`
(`shifted_finetuner`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vaecompress.coding.floats import tensor_bytes
from vaecompress.errors import FormatError, UserError
from vaecompress.io import StateDict
from vaecompress.params.vector import dtype_name
from vaecompress.training.finetune import Finetuner

if TYPE_CHECKING:
    from vaecompress.codecs.base import Codec

BASE_KEY = "vaecompress.base"
OPS = ("sub", "xor")  # difference (lossy codecs) or bitwise XOR (lossless codecs)
RATE_SETTING = "lam"  # the rate weight rescaled for a delta (see the module docstring)
_U64 = struct.Struct("<Q")
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def base_sha256(base: Mapping[str, torch.Tensor]) -> str:
    """The base's fingerprint: SHA-256 over its tensors in the order of their names (so that
    loading the same file another way gives the same digest), each as the u64 length and the
    ASCII JSON `[name,dtype,shape]`, then the u64 length and the tensor's own little-endian
    bytes."""
    h = hashlib.sha256()
    for name in sorted(base):
        t = base[name]
        head = json.dumps([name, dtype_name(t.dtype), list(t.shape)],
                          separators=(",", ":")).encode("ascii")
        data = tensor_bytes(t)
        h.update(_U64.pack(len(head)) + head + _U64.pack(len(data)))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class Delta:
    """How a file was coded against its base: the base's fingerprint and the operation."""

    sha256: str
    op: str

    def record(self) -> dict[str, str]:
        return {"sha256": self.sha256, "op": self.op}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Delta | None:
        """The record of a file's meta (None: the file was coded alone); FormatError when
        malformed."""
        record = meta.get(BASE_KEY)
        if record is None:
            return None
        sha = record.get("sha256") if isinstance(record, dict) else None
        op = record.get("op") if isinstance(record, dict) else None
        if not (isinstance(sha, str) and len(sha) == 64
                and all(ch in "0123456789abcdef" for ch in sha)) or op not in OPS:
            raise FormatError(f"meta '{BASE_KEY}' is malformed (needs a sha256 and an op in "
                              f"{', '.join(OPS)})")
        return cls(sha, op)


def paired(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> list[str]:
    """The names coded as a delta: floating tensors of `state` that `base` also holds. A base
    tensor of another shape or dtype is bad input, as is a base that shares no tensor."""
    names = []
    for name, t in state.items():
        if not t.is_floating_point() or name not in base:
            continue
        b = base[name]
        if list(b.shape) != list(t.shape) or b.dtype != t.dtype:
            raise UserError(
                f"the base's tensor '{name}' is {dtype_name(b.dtype)} {list(b.shape)}, the "
                f"model's is {dtype_name(t.dtype)} {list(t.shape)}: the base must be the model "
                "this one was fine-tuned from (the same architecture)")
        names.append(name)
    if not names and any(t.is_floating_point() for t in state.values()):
        raise UserError("the base shares no floating tensor with the model (no name in "
                        "common): give the model this one was fine-tuned from")
    return names


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def _combine(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], op: str,
             sign: int) -> StateDict:
    """`state` with each paired tensor t replaced by t XOR base, or t + sign * base."""
    names = set(paired(state, base))
    out: StateDict = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        if name in names:
            b = base[name].detach().to("cpu")
            if op == "xor":
                t = torch.bitwise_xor(_bits(t), _bits(b)).view(t.dtype)
            else:
                w = _work_dtype(t.dtype)
                t = (t.to(w) + sign * b.to(w)).to(t.dtype)
        out[name] = t
    return out


def to_delta(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
             op: str) -> StateDict:
    """What the codec codes: `state` with each paired tensor replaced by its delta."""
    return _combine(state, base, op, -1)


def rebuild(decoded: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
            op: str) -> StateDict:
    """The model from the decoded delta: the inverse of `to_delta` (exact for "xor")."""
    return _combine(decoded, base, op, 1)


def _energy(state: Mapping[str, torch.Tensor]) -> float:
    return sum(float(t.detach().to("cpu", torch.float64).pow(2).sum())
               for t in state.values() if t.is_floating_point())


def delta_settings(codec_cls: type[Codec], settings: Mapping[str, Any], state: StateDict,
                   coded: StateDict) -> tuple[dict[str, Any], dict[str, float]]:
    """The codec's settings for coding `coded` (the delta of `state`), and what was changed:
    `lam` scaled by |w|^2 / |d|^2 for a codec that weighs its rate against an error relative to
    what it codes (see the module docstring)."""
    out = dict(settings)
    w2, d2 = _energy(state), _energy(coded)
    report = {"delta_energy_ratio": d2 / w2 if w2 > 0 else 0.0}
    names = {f.name for f in dataclasses.fields(codec_cls.Settings)}
    if codec_cls.uses_task or not d2 > 0 or not w2 > 0:
        return out, report
    if RATE_SETTING in names:
        lam = out.get(RATE_SETTING, getattr(codec_cls.Settings(), RATE_SETTING))
        if isinstance(lam, int | float) and not isinstance(lam, bool):
            out[RATE_SETTING] = float(lam) * w2 / d2
            report["lam_scale"] = w2 / d2
    return out, report


def shifted_finetuner(finetune: Finetuner, base: Mapping[str, torch.Tensor],
                      names: list[str]) -> Finetuner:
    """The task's loss of the model `base + delta`, as a function of the delta: a codec that
    trains on the task trains the delta."""
    inner = finetune.loss
    cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def loss(tensors: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        full = dict(tensors)
        for name in names:
            if name in full:
                t = full[name]
                key = (name, t.device, t.dtype)
                if key not in cache:
                    cache[key] = base[name].detach().to(t.device, t.dtype)
                full[name] = t + cache[key]
        return inner(full, batch)

    return dataclasses.replace(finetune, loss=loss)


@dataclass
class Plan:
    """What `api.compress` codes instead of the model, and how (`plan`)."""

    coded: StateDict  # the delta, in the model's order, names, shapes and dtypes
    delta: Delta
    settings: dict[str, Any]  # the codec's settings for the delta
    finetune: Finetuner | None  # the task, as a function of the delta
    report: dict[str, float]


def plan(codec_cls: type[Codec], state: Mapping[str, torch.Tensor],
         base: Mapping[str, torch.Tensor],
         settings: Mapping[str, Any], finetune: Finetuner | None) -> Plan:
    """Code `state` against `base` with the codec `codec_cls` (lossless: XOR, else the
    difference); a lossy codec refuses a base with NaN or Inf where it is used."""
    op = "xor" if codec_cls.lossless else "sub"
    names = paired(state, base)
    if op == "sub":
        for name in names:
            if not bool(torch.isfinite(base[name]).all()):
                raise UserError(f"the base's tensor '{name}' holds NaN or Inf values: a lossy "
                                "codec cannot code a delta against it (zstd can)")
    coded = to_delta(state, base, op)
    codec_settings, report = delta_settings(codec_cls, settings, dict(state), coded)
    if finetune is not None and op == "sub":
        finetune = shifted_finetuner(finetune, base, names)
    return Plan(coded, Delta(base_sha256(base), op), codec_settings, finetune, report)


def check_base(meta: Mapping[str, Any],
               base: Mapping[str, torch.Tensor] | None) -> Delta | None:
    """The file's delta record, checked against the base given to decode it: one UserError when
    a base is missing, given to a file coded alone, or not the one the file was coded against."""
    delta = Delta.from_meta(meta)
    if delta is None:
        if base is not None:
            raise UserError("this file was coded alone, not against a base: decode it without "
                            "a base (no --base)")
        return None
    if base is None:
        raise UserError(f"this file is coded against a base model (sha256 {delta.sha256[:16]}"
                        "...): give that model to decode it (--base FILE, or base= in the API)")
    got = base_sha256(base)
    if got != delta.sha256:
        raise UserError(f"the base given (sha256 {got[:16]}...) is not the model this file was "
                        f"coded against (sha256 {delta.sha256[:16]}...)")
    return delta
