"""The checksum of the rebuilt tensors (spec: docs/format.md, "Checksum of the rebuilt tensors").

Boundary: this module makes the record `api.compress` stores in a file's meta under
`DECODED_KEY`, from the tensors that decoding the file gives, and checks tensors a decoder
rebuilt against a file's record. It knows no codec and no framing; the caller says whether the
codec's decoding is exact (`Codec.exact_decode`) and which format version the file has.

Format 3 (the current one) requires the record. Its `sha256` digests, for each tensor in order,
its name, dtype and shape and then its own little-endian bytes, so that a header edit that
renames, reshapes or reorders tensors is caught as surely as a changed byte. A tolerant codec
(a decoder with float reductions, which may differ by a few ulps on another CPU) adds `layout`,
the same digest without the bytes, which must match exactly, and `blocks`, which bounds each
weight's error by a fraction of its tensor's scale (`detectable_fraction`):

  each floating tensor, as float64, is cut into blocks of `BLOCK[dtype]` weights (the last one
  zero-padded); each block gives two weighted sums S (weights `_coefficients`, all of magnitude
  below 2). With s the tensor's largest |w| (recorded) and e = NOISE[dtype], a decoder whose
  every weight is within e*s of the writer's moves S by less than tau = 2*B*e*s. The sums are
  read on a grid of step Q = 4*tau, shifted by half a step where that keeps S at least Q/4 from
  a grid line (one bit a sum, recorded); the record holds the digest of the grid cells. So a
  decoder within e*s per weight always passes, and a change of one weight by 0.75*Q = 6*B*e*s
  or more (0.59 % of s for float32) always fails.

Formats 1 and 2 (written before issue 21) carry at most the bytes-only `sha256` and, for a
tolerant codec, the float64 sums `l1` and `l2` (relative tolerance 1e-4); a file without a
record is decoded unchecked, as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vaecompress.errors import FormatError

DECODED_KEY = "vaecompress.decoded"
BINDING_VERSION = 3  # the first format version whose files must carry the binding record
NORM_RTOL = 1e-4  # formats 1-2: tolerance of the l1/l2 sums
# Per-weight difference (a fraction of the tensor's largest |w|) a tolerant decoder may show on
# another machine: 64 float32 ulps of the largest weight; for half types, one ulp of theirs
# (a few float32 ulps of noise may flip a rounding).
NOISE = {"float64": 2.0**-18, "float32": 2.0**-18, "float16": 2.0**-10, "bfloat16": 2.0**-7}
BLOCK = {"float64": 256, "float32": 256, "float16": 16, "bfloat16": 2}
_U64 = struct.Struct("<Q")


def detectable_fraction(dtype: str) -> float:
    """The error of one weight, as a fraction of its tensor's largest |w|, that the tolerant
    check always refuses (see the module docstring): 6 * BLOCK * NOISE."""
    return 6 * BLOCK[dtype] * NOISE[dtype]


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _raw(t: torch.Tensor) -> memoryview:
    """A tensor's own little-endian bytes, without a copy when it is contiguous on the CPU."""
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def _digest(state: Mapping[str, torch.Tensor], *, with_bytes: bool) -> str:
    h = hashlib.sha256(b"vaecompress.decoded/3\n")
    for name, t in state.items():
        head = json.dumps([name, _dtype(t), list(t.shape)], separators=(",", ":")).encode("ascii")
        h.update(_U64.pack(len(head)))
        h.update(head)
        if with_bytes:
            raw = _raw(t)
            h.update(_U64.pack(raw.nbytes))
            h.update(raw)
    return h.hexdigest()


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The digest of format 3's record: each tensor's name, dtype, shape and bytes, in order."""
    return _digest(state, with_bytes=True)


def bytes_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Formats 1-2: sha256 of the tensors' own bytes, concatenated in the given order."""
    h = hashlib.sha256()
    for t in state.values():
        h.update(_raw(t))
    return h.hexdigest()


def _norms(state: Mapping[str, torch.Tensor]) -> tuple[float, float]:
    l1 = l2 = 0.0
    for t in state.values():
        if t.is_floating_point() and t.numel():
            x = t.detach().to("cpu", torch.float64)
            l1 += float(x.abs().sum())
            l2 += float((x * x).sum())
    return l1, l2


def finite_norms(state: Mapping[str, torch.Tensor]) -> bool:
    return all(math.isfinite(x) for x in _norms(state))


# ------------------------------------------------------------------ the tolerant block check


def _coefficients(block: int) -> np.ndarray:
    i = np.arange(block, dtype=np.float64)
    first = 1 + i / block
    signs = np.where(np.array([bin(k).count("1") % 2 for k in range(block)]) == 0, 1.0, -1.0)
    second = signs * (1 + ((i * 37) % block) / block)
    return np.stack([first, second], axis=1)  # (block, 2), every |c| < 2


def _block_sums(t: torch.Tensor) -> tuple[np.ndarray, float]:
    """(the two sums of every block, in cell units before the shift; the tensor's scale)."""
    dtype = _dtype(t)
    block = BLOCK[dtype]
    x = t.detach().to("cpu", torch.float64).reshape(-1).numpy()
    pad = (-x.size) % block
    if pad:
        x = np.concatenate([x, np.zeros(pad)])
    sums = x.reshape(-1, block) @ _coefficients(block)
    return sums.reshape(-1), float(np.abs(x).max(initial=0.0))


def _cell(scale: float, dtype: str) -> float:
    return 4 * 2 * BLOCK[dtype] * NOISE[dtype] * (scale if scale > 0 else 1.0)


def _grid(state: Mapping[str, torch.Tensor], scales: list[float] | None
          ) -> tuple[list[float], list[np.ndarray], list[torch.Tensor]]:
    """(scales, sums in cell units, per tensor) of the floating, non-empty tensors."""
    out_scales, units = [], []
    floats = [t for t in state.values() if t.is_floating_point() and t.numel()]
    if scales is not None and len(scales) != len(floats):
        raise FormatError(f"meta '{DECODED_KEY}' has {len(scales)} scales for "
                          f"{len(floats)} floating tensors")
    for i, t in enumerate(floats):
        sums, scale = _block_sums(t)
        s = scale if scales is None else scales[i]
        out_scales.append(s)
        units.append(sums / _cell(s, _dtype(t)))
    return out_scales, units, floats


def _cells_digest(units: list[np.ndarray], shifts: np.ndarray) -> str:
    flat = np.concatenate(units) if units else np.zeros(0)
    if flat.size != shifts.size:
        raise FormatError(f"meta '{DECODED_KEY}' has {shifts.size} block offsets for "
                          f"{flat.size} block sums")
    cells = np.floor(flat + 0.5 * shifts).astype("<i8")
    return hashlib.sha256(cells.tobytes()).hexdigest()


def _blocks_record(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    scales, units, _ = _grid(state, None)
    flat = np.concatenate(units) if units else np.zeros(0)
    frac = flat - np.floor(flat)
    shifts = ((frac < 0.25) | (frac >= 0.75)).astype(np.uint8)  # keep S >= Q/4 from a line
    return {"scales": scales, "shift": base64.b64encode(np.packbits(shifts).tobytes()).decode(),
            "sha256": _cells_digest(units, shifts)}


def _check_blocks(blocks: Any, state: Mapping[str, torch.Tensor]) -> None:
    try:
        scales = [float(s) for s in blocks["scales"]]
        packed = base64.b64decode(blocks["shift"], validate=True)
        want = str(blocks["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"meta '{DECODED_KEY}' is malformed: {e}") from None
    if not all(math.isfinite(s) and 0 <= s <= 1e38 for s in scales):
        raise FormatError(f"meta '{DECODED_KEY}' has a bad scale")
    _, units, floats = _grid(state, scales)
    n = sum(u.size for u in units)
    if len(packed) != (n + 7) // 8:
        raise FormatError(f"meta '{DECODED_KEY}' has {len(packed)} bytes of block offsets, "
                          f"{(n + 7) // 8} expected")
    shifts = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n)
    if _cells_digest(units, shifts) != want:
        worst = max((detectable_fraction(_dtype(t)) for t in floats), default=0.0)
        raise FormatError(
            "the rebuilt tensors do not match the file's checksum (a weight differs by up to "
            f"{100 * worst:.2g}% of its tensor's largest or more): a damaged payload or a "
            "decoder other than the one that wrote the file")


# ------------------------------------------------------------------------ record and check


def record(state: Mapping[str, torch.Tensor], *, exact: bool) -> dict[str, Any]:
    """What `api.compress` stores under DECODED_KEY for the tensors decoding gives."""
    out: dict[str, Any] = {"sha256": state_sha256(state)}
    if not exact:
        out["layout"] = _digest(state, with_bytes=False)
        out["blocks"] = _blocks_record(state)
    return out


def check(rec: Any, state: Mapping[str, torch.Tensor], *, exact: bool,
          format_version: int) -> None:
    """Rebuilt tensors against a file's record; FormatError on any mismatch."""
    if format_version < BINDING_VERSION:
        _check_legacy(rec, state, exact=exact)
        return
    if rec is None:
        raise FormatError(f"the file has no checksum of its tensors (meta '{DECODED_KEY}'), "
                          f"which format {format_version} requires: it was edited or damaged")
    sha = rec.get("sha256") if isinstance(rec, dict) else None
    if not isinstance(sha, str):
        raise FormatError(f"meta '{DECODED_KEY}' is malformed")
    if _digest(state, with_bytes=True) == sha:
        return
    if exact:
        raise FormatError(
            "the rebuilt tensors do not match the checksum recorded at compression (a damaged "
            "payload, an edited header, or a decoder other than the one that wrote the file)")
    if rec.get("layout") != _digest(state, with_bytes=False):
        raise FormatError("the rebuilt tensors' names, dtypes, shapes or order do not match "
                          "the file's checksum: an edited header")
    _check_blocks(rec.get("blocks"), state)


def _check_legacy(rec: Any, state: Mapping[str, torch.Tensor], *, exact: bool) -> None:
    if rec is None:
        return
    sha = rec.get("sha256") if isinstance(rec, dict) else None
    if not isinstance(sha, str):
        raise FormatError(f"meta '{DECODED_KEY}' is malformed")
    if bytes_sha256(state) == sha:
        return
    if exact:
        raise FormatError(
            "the rebuilt tensors do not match the checksum recorded at compression "
            "(a damaged payload, or a decoder other than the one that wrote the file)")
    try:
        want = (float(rec["l1"]), float(rec["l2"]))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"meta '{DECODED_KEY}' is malformed") from None
    for name, got, ref in zip(("l1", "l2"), _norms(state), want, strict=True):
        if not (math.isfinite(got) and abs(got - ref) <= NORM_RTOL * max(abs(ref), 1e-30)):
            raise FormatError(
                f"the rebuilt tensors do not match the file's checksum ({name} {got:.6g}, "
                f"recorded {ref:.6g}): a damaged payload or a decoder other than the one "
                "that wrote the file")
