"""`int8` and `int4`: uniform quantization of every weight tensor, one implementation.

Weights (tensors with two or more dims: Linear, Conv, recurrent weight_ih/weight_hh) are cut
into groups, the whole tensor or one group per output channel (dim 0), and each group is
mapped onto 2**bits evenly spaced levels:

    affine:    x ~ lo + q * scale,      q in [0, 2**bits - 1],  scale = (max - min) / (2**bits - 1)
    symmetric: x ~ (q - qmax) * scale,  q in [0, 2 * qmax],     scale = max|x| / qmax

so the error of every weight is at most scale / 2. The level indices are packed at `bits` each
(two int4 values per byte) or entropy-coded per tensor (`entropy=True`); the (lo, scale) pairs
(scale alone when symmetric) are stored as float32 or float16 and counted. Tensors with fewer
dims (biases) are kept as float32/float16, or quantized per tensor with the weights' bits
(`bias_dtype="quantize"`).

Boundary: no training, no data; decoding reads only the container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    join_passthrough,
    register,
    split_passthrough,
)
from vaecompress.coding.entropy import (
    decode_symbols,
    encode_symbols,
    join_segments,
    pack_uint,
    packed_size,
    split_segments,
    uint_dtype,
    unpack_uint,
)
from vaecompress.coding.floats import (
    FLOAT_KIND,
    FLOAT_STORE,
    float_specs,
    floats_from_bytes,
    floats_to_bytes,
    is_weight,
    numel,
)
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict

GRANULARITIES = ("tensor", "channel")
SCHEMES = ("affine", "symmetric")
BIAS_MODES = (*FLOAT_STORE, "quantize")
_SLICE = 2**20  # weights quantized at a time


@dataclass(frozen=True)
class QuantSettings:
    granularity: str = "channel"  # one (lo, scale) per tensor, or per output channel (dim 0)
    scheme: str = "affine"  # affine: min..max; symmetric: -max|x|..max|x|, zero exact
    entropy: bool = False  # entropy-code the level indices (constriction ANS) instead of packing
    bias_dtype: str = "float32"  # tensors with < 2 dims: float32 | float16 | quantize
    scale_dtype: str = "float32"  # storage of lo/scale: float32 | float16


def _round_away(x: np.ndarray, dtype: str, up: bool) -> np.ndarray:
    """`x` in the storage dtype, rounded up (or down) so that the stored range still covers
    the data: the scale/2 error bound then holds for float16 scales too."""
    s = x.astype(FLOAT_STORE[dtype]).astype(np.float64)
    direction = np.inf if up else -np.inf
    bad = s < x if up else s > x
    s = np.where(bad, np.nextafter(s.astype(FLOAT_STORE[dtype]), direction).astype(np.float64), s)
    if not np.isfinite(s).all():
        raise UserError(f"weights exceed the range of {dtype} scales; use scale_dtype=float32")
    return s


def quantize_groups(x: np.ndarray, bits: int, scheme: str,
                    scale_dtype: str) -> tuple[np.ndarray, np.ndarray, float]:
    """x: (groups, m) float32 -> (symbols (groups, m) in the narrowest unsigned type, params
    float64 exactly representable in `scale_dtype`: (groups, 2) [lo, scale] for affine,
    (groups, 1) [scale] for symmetric, and the largest |rebuilt - x|). The arithmetic is in
    float64, made `_SLICE` weights at a time: the working set is the symbols and one slice,
    not several float64 copies of the tensor (a float32 min or max is exact in float64, so the
    symbols are those of the whole-tensor arithmetic)."""
    groups, m = x.shape
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = _round_away(np.abs(x).max(axis=1).astype(np.float64) / qmax, scale_dtype,
                            up=True)
        params, lo_clip, hi_clip, shift = scale[:, None], -qmax, qmax, qmax
        lo = np.zeros(groups)
    else:
        levels = 2**bits - 1
        lo = _round_away(x.min(axis=1).astype(np.float64), scale_dtype, up=False)
        scale = _round_away((x.max(axis=1).astype(np.float64) - lo) / levels, scale_dtype,
                            up=True)
        params, lo_clip, hi_clip, shift = np.stack([lo, scale], axis=1), 0, levels, 0
    div = np.where(scale > 0, scale, 1.0)
    q = np.empty((groups, m), dtype=uint_dtype(bits))
    max_err = 0.0
    rows = max(1, _SLICE // max(m, 1))
    cols = min(m, _SLICE) or 1
    for a in range(0, groups, rows):
        b = min(a + rows, groups)
        for c in range(0, m, cols):
            part = x[a:b, c : c + cols].astype(np.float64)
            if scheme == "affine":
                part -= lo[a:b, None]
            part /= div[a:b, None]
            np.rint(part, out=part)
            np.clip(part, lo_clip, hi_clip, out=part)
            part += shift
            q[a:b, c : c + cols] = part
            rec = _dequantize(q[a:b, c : c + cols], params[a:b], scheme, bits)
            rec -= x[a:b, c : c + cols]
            max_err = max(max_err, float(np.abs(rec).max(initial=0.0)))
    return q, params, max_err


class UniformQuantCodec(Codec):
    """Shared implementation; subclasses only fix `bits` and `name`."""

    bits: ClassVar[int]
    version = 1
    Settings = QuantSettings

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset in ("full", "datafree"):
            return [{"granularity": g, "entropy": e}
                    for g in ("tensor", "channel") for e in (False, True)]
        return [{"granularity": "channel"}]

    def validate(self) -> None:
        s = self.settings
        for value, allowed, what in ((s.granularity, GRANULARITIES, "granularity"),
                                     (s.scheme, SCHEMES, "scheme"),
                                     (s.bias_dtype, BIAS_MODES, "bias_dtype"),
                                     (s.scale_dtype, tuple(FLOAT_STORE), "scale_dtype")):
            if value not in allowed:
                raise UserError(f"{self.name}: {what} must be one of {allowed}, got '{value}'")

    def streams(self) -> bool:
        return True  # each tensor coded on its own

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        q_parts: list[bytes] = []
        scale_parts: list[bytes] = []
        float_parts: list[bytes] = []
        max_err = 0.0
        for t in coded.values():
            shape = list(t.shape)
            if t.numel() == 0:
                continue  # nothing to store; the manifest's shape rebuilds it
            if not is_weight(shape) and s.bias_dtype != "quantize":
                float_parts.append(floats_to_bytes(t, s.bias_dtype))
                continue
            groups = _groups(shape, s.granularity)
            x = t.detach().to("cpu", torch.float32).numpy().reshape(groups, -1)
            q, params, err = quantize_groups(x, self.bits, s.scheme, s.scale_dtype)
            max_err = max(max_err, err)
            q_parts.append(encode_symbols(q, 2**self.bits) if s.entropy
                           else pack_uint(q, self.bits))
            scale_parts.append(params.astype(FLOAT_STORE[s.scale_dtype]).tobytes())
        q_blob, q_lengths = join_segments(q_parts)
        c = self.new_container(state)
        c.codec_state = {"bits": self.bits, "scheme": s.scheme, "granularity": s.granularity,
                         "bias": s.bias_dtype, "scale": s.scale_dtype, "entropy": s.entropy,
                         "q": q_lengths}
        for name, kind, parts in (("q", "ans" if s.entropy else "packed", [q_blob]),
                                  ("scales", FLOAT_KIND[s.scale_dtype], scale_parts),
                                  ("floats", FLOAT_KIND.get(s.bias_dtype, "bytes"), float_parts)):
            blob = b"".join(parts)
            if blob:
                c.payloads.append(Payload(name, kind, ROLE_CODE, blob))
        add_passthrough(c, raw)
        return Encoded(c, report={"max_abs_error": max_err, "q_bytes": len(q_blob)})

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        st = c.codec_state
        try:
            bits, scheme, gran = int(st["bits"]), str(st["scheme"]), str(st["granularity"])
            bias, scale_dtype, entropy = str(st["bias"]), str(st["scale"]), bool(st["entropy"])
            q_lengths = list(st["q"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{self.name} codec state is malformed: {e}") from None
        if not 1 <= bits <= 16 or scheme not in SCHEMES or gran not in GRANULARITIES \
                or bias not in BIAS_MODES or scale_dtype not in FLOAT_STORE:
            raise FormatError(f"{self.name} codec state has unknown values")
        names = {p.name for p in c.payloads}
        blobs = {n: c.payload(n).data if n in names else b"" for n in ("q", "scales", "floats")}
        q_segs = iter(split_segments(blobs["q"], q_lengths))
        scale_item = np.dtype(FLOAT_STORE[scale_dtype]).itemsize
        scale_pos = float_pos = 0
        out: StateDict = {}
        for spec in float_specs(c.tensors):
            shape, n = list(spec["shape"]), numel(spec["shape"])
            if n == 0:
                out[spec["name"]] = torch.zeros(shape)
                continue
            if not is_weight(shape) and bias != "quantize":
                size = n * np.dtype(FLOAT_STORE[bias]).itemsize
                vals = floats_from_bytes(blobs["floats"][float_pos : float_pos + size], bias, n)
                float_pos += size
                out[spec["name"]] = torch.from_numpy(vals.copy()).reshape(shape)
                continue
            groups = _groups(shape, gran)
            seg = next(q_segs, None)
            if seg is None:
                raise FormatError(f"{self.name}: fewer quantized segments than weight tensors")
            if entropy:
                q = decode_symbols(seg, n)
            else:
                if len(seg) != packed_size(n, bits):
                    raise FormatError(f"{self.name}: segment of '{spec['name']}' has wrong size")
                q = unpack_uint(seg, bits, n)
            n_params = 2 if scheme == "affine" else 1
            size = groups * n_params * scale_item
            raw_params = blobs["scales"][scale_pos : scale_pos + size]
            if len(raw_params) != size:
                raise FormatError(f"{self.name}: scales payload is too short")
            scale_pos += size
            params = np.frombuffer(raw_params, dtype=FLOAT_STORE[scale_dtype])
            params = params.reshape(groups, n_params)
            rec = _dequantize(q.reshape(groups, -1), params.astype(np.float64), scheme, bits)
            out[spec["name"]] = torch.from_numpy(rec).reshape(shape)
        if next(q_segs, None) is not None or scale_pos != len(blobs["scales"]) \
                or float_pos != len(blobs["floats"]):
            raise FormatError(f"{self.name}: payloads hold more data than the manifest needs")
        return join_passthrough(c, out)


def _dequantize(q: np.ndarray, params: np.ndarray, scheme: str, bits: int) -> np.ndarray:
    """The float32 weights the decoder gives back; the encoder calls the same code, so what it
    reports is exactly what decoding yields."""
    scale = params[:, -1].astype(np.float32)[:, None]
    # In place on one float32 array (q may be any integer type, narrow or a broadcast view):
    # the same float32 operations as `lo + q * scale` and `(q - qmax) * scale`, which are
    # exact on these small integers, so the bytes are those of earlier versions.
    rec = q.astype(np.float32)
    if scheme == "affine":
        rec *= scale
        rec += params[:, 0].astype(np.float32)[:, None]
        return rec
    rec -= np.float32(2 ** (bits - 1) - 1)
    rec *= scale
    return rec


def _groups(shape: list[int], granularity: str) -> int:
    if granularity == "channel" and is_weight(shape) and shape[0] > 0:
        return int(shape[0])
    return 1


@register
class Int8Codec(UniformQuantCodec):
    name = "int8"
    bits = 8


@register
class Int4Codec(UniformQuantCodec):
    name = "int4"
    bits = 4
