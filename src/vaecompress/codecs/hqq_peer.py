"""`hqq`: Half-Quadratic Quantization (HQQ, Badri & Shaji 2023) as an optional peer codec.

HQQ quantizes data-free, group by group: each group of `group_size` weights gets its own step
(HQQ's `scale`) and zero-point, `w ~ (q - zero) * step` with `q` in `[0, 2**bits - 1]`. It starts
from the min-max grid and then, with `optimize`, moves each group's zero-point by the
half-quadratic solver of `hqq.core.optimize.optimize_weights_proximal`: it minimizes the l_p
norm (p = 0.7) of the quantization error, alternating a generalized soft-threshold (l_p
shrinkage) of the error with a closed-form update of the zero-point. The quantization itself is
the real package's `hqq.core.quantize.Quantizer.quantize` (hqq 0.2.8.post1, installed by
`scripts/setup.sh hqq`), called on the CPU as HQQ's `HQQLinear` calls it for a Linear weight.

What is quantized: every floating tensor of two or more dims (a Linear weight; a Conv kernel or
any other >2-D tensor as the matrix `[dim0, rest]` HQQ would see, i.e. flattened row-major)
with at least `group_size` elements. HQQ's groups run along `axis` of the matrix HQQ forms from
the flattened tensor: `axis=1` (HQQ's default) cuts it into consecutive runs of `group_size`,
`axis=0` takes every `numel / group_size`-th element. A tensor whose size is not a multiple of
`group_size` is padded (each padded value copies the element before it in its own group, so no
group's range changes); the padded codes are stored and counted, and the decoder drops them.
Kept exactly, in `keep_dtype` (float32 by default, lossless for float32 models): 0-d and 1-D
tensors (biases, norm weights, scalars) and weights smaller than one group; the report counts
them (`kept_tensors`, `kept_bytes`).

What is stored, in one `code` payload written with `io.state_to_bytes` (safetensors, no pickle),
three arrays per quantized tensor and one per kept tensor, keyed by the tensor's index in the
manifest: `<i>.q` the codes packed at exactly `bits` each (`coding.entropy.pack_uint`, tighter
than HQQ's own 3-bit layout of ten codes per int32), `<i>.step` and `<i>.zero` one value per
group in `scale_dtype` (float16 by default, the dtype `HQQLinear` keeps its meta in), `<i>.keep`
the kept tensors. The payload's bytes (the arrays plus the safetensors header, HQQ's "meta"
here) are what the file counts; the settings the decoder needs (bits, group size, axis, dtypes)
are in the codec state. Decoding reads only that payload and the manifest, needs neither the
original nor the hqq package (`(q - zero) * step` in float32), and checks every array's dtype
and shape before use.

One refinement over HQQ: after HQQ returns its step and zero (float32), they are rounded to
`scale_dtype` and the codes re-rounded against the rounded values, so every code is the nearest
level of the grid the decoder uses (HQQ itself casts the meta after choosing the codes). With
`optimize=False` this is plain min-max round-to-nearest: every weight is within half a step of
its decoded value, step = (max - min) / (2**bits - 1) of its group (HQQ floors the inverse step
at 1/2e4 and uses step 1 for groups spanning under 1e-4). With `optimize=True` the zero-point
moves, and weights beyond the shifted grid are clamped to its end: the price of a lower l_p
error.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    import_failure,
    join_passthrough,
    peer_hint,
    register,
    split_passthrough,
)
from vaecompress.coding.entropy import pack_uint, packed_size, unpack_uint
from vaecompress.coding.floats import FLOAT_STORE, float_specs, is_weight, numel
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict, state_from_bytes, state_to_bytes

PAYLOAD = "hqq"
KIND = "safetensors"
HQQ_VERSION = "0.2.8.post1"
NOT_INSTALLED = (f"hqq is not installed: run scripts/setup.sh hqq (pip install --no-deps "
                 f"hqq=={HQQ_VERSION} termcolor; DISABLE_CUDA=1 skips its CUDA kernels)")
BITS = (1, 2, 3, 4, 5, 6, 8)  # HQQ's SUPPORTED_BITS without its ternary 1.58
AXES = (0, 1)
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16}
INV_STEP_MAX = 2e4  # HQQ: the inverse step is clamped here (float16 meta), so step >= 5e-5


@dataclass(frozen=True)
class HQQSettings:
    bits: int = 4  # 1, 2, 3, 4, 5, 6 or 8
    group_size: int = 64  # weights per (step, zero) pair; HQQ asks for a multiple of 8
    axis: int = 1  # 1: groups of consecutive weights (HQQ's default); 0: strided groups
    optimize: bool = True  # HQQ's half-quadratic zero-point solver; False: min-max RTN
    # Round the min-max zero-point to an integer before the solver moves it (HQQ's config does
    # this at 4 bits only); None: as HQQ.
    round_zero: bool | None = None
    scale_dtype: str = "float16"  # storage of step and zero: float16 (HQQ's) | float32
    keep_dtype: str = "float32"  # 1-D, 0-d and sub-group tensors: float32 | float16


_HQQ: dict[str, Any] = {}  # "quantizer" -> hqq's Quantizer class, or "why" -> why not
MODULES = ("hqq.core.quantize", "termcolor")  # what the codec imports (termcolor: hqq does)


def _missing() -> str | None:
    """Why hqq cannot be used, None when it is installed. Found without importing it: its
    import pulls in torch._dynamo (about 2 s), paid only by an encoder that uses it."""
    if "why" not in _HQQ and "quantizer" not in _HQQ:
        for module in MODULES:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                _HQQ["why"] = f"ModuleNotFoundError: No module named '{module}'"
                break
    return _HQQ.get("why")


def _quantizer() -> Any:
    """hqq's `Quantizer`, imported once (None when it cannot be imported; `_HQQ["why"]`)."""
    if _missing() is None and "quantizer" not in _HQQ:
        try:
            _HQQ["quantizer"] = importlib.import_module("hqq.core.quantize").Quantizer
        except Exception as e:  # ImportError, or anything its import chain raises
            _HQQ["why"] = import_failure(e)
    return _HQQ.get("quantizer")


def hqq_available() -> bool:
    return _missing() is None


def _layout(n: int, group_size: int, axis: int) -> tuple[int, int, tuple[int, int]]:
    """(padded length, groups, the matrix HQQ forms of the padded flat tensor)."""
    groups = -(-n // group_size)
    padded = groups * group_size
    return padded, groups, ((groups, group_size) if axis == 1 else (group_size, groups))


def pad_in_groups(flat: torch.Tensor, group_size: int, axis: int) -> torch.Tensor:
    """`flat` padded to a multiple of `group_size`; each added value copies the element before
    it in the same group (the previous one for axis 1, one row up for axis 0), so no group's
    minimum, maximum or l_p solution sees a value it did not have."""
    n = flat.numel()
    padded, groups, _ = _layout(n, group_size, axis)
    if padded == n:
        return flat
    out = torch.empty(padded, dtype=flat.dtype)
    out[:n] = flat
    stride = 1 if axis == 1 else groups
    for p in range(n, padded):
        out[p] = out[p - stride]
    return out


def dequantize(q: np.ndarray, step: np.ndarray, zero: np.ndarray, group_size: int,
               axis: int) -> np.ndarray:
    """The flat float32 weights (padding included) from codes and per-group step and zero;
    the encoder reports what this gives, so its numbers are what decoding yields."""
    groups = step.size
    shape = (groups, group_size) if axis == 1 else (group_size, groups)
    per = (groups, 1) if axis == 1 else (1, groups)
    s = step.astype(np.float32).reshape(per)
    z = zero.astype(np.float32).reshape(per)
    return ((q.reshape(shape).astype(np.float32) - z) * s).reshape(-1)


@register
class HQQCodec(Codec):
    name = "hqq"
    version = 1
    Settings = HQQSettings

    @classmethod
    def available(cls) -> str | None:
        return peer_hint(NOT_INSTALLED, "hqq", _missing())

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        """Without its solver HQQ is plain min-max rounding per group, the usual int4/int8
        per-group baseline: a method of its own in the tables, beside HQQ proper."""
        if settings.get("optimize", True) is False:
            return f"{cls.name} (min-max, no solver)", False
        return cls.name, False

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "full":
            return [{"bits": b, "group_size": g} for b in (2, 3, 4, 5, 6, 8)
                    for g in (16, 32, 64, 128, 256)]
        if preset == "datafree":
            return [{"bits": b, "group_size": g} for b in (2, 3, 4, 8) for g in (32, 64, 128)]
        return [{"bits": 4, "group_size": 64}]

    def validate(self) -> None:
        s = self.settings
        if s.bits not in BITS:
            raise UserError(f"hqq: bits must be one of {BITS}, got {s.bits!r}")
        if not 2 <= s.group_size <= 2**20:
            raise UserError(f"hqq: group_size must be in 2..{2**20}, got {s.group_size!r}")
        if s.axis not in AXES:
            raise UserError(f"hqq: axis must be 0 or 1, got {s.axis!r}")
        if s.round_zero is not None and not isinstance(s.round_zero, bool):
            raise UserError(f"hqq: round_zero must be true, false or None, got {s.round_zero!r}")
        for what, value in (("scale_dtype", s.scale_dtype), ("keep_dtype", s.keep_dtype)):
            if value not in FLOAT_STORE:
                raise UserError(f"hqq: {what} must be one of {tuple(FLOAT_STORE)}, got {value!r}")

    @property
    def round_zero(self) -> bool:
        s = self.settings
        return s.bits == 4 if s.round_zero is None else bool(s.round_zero)

    def _quantize(self, t: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(codes of the padded flat tensor, step, zero in `scale_dtype`) by hqq's Quantizer."""
        s = self.settings
        quantizer = _quantizer()
        if quantizer is None:
            raise UserError(self.available() or NOT_INSTALLED)
        flat = pad_in_groups(t.detach().to("cpu", torch.float32).reshape(-1), s.group_size,
                             s.axis)
        with torch.inference_mode():
            _, meta = quantizer.quantize(flat, nbits=s.bits, channel_wise=True,
                                         group_size=s.group_size, optimize=s.optimize,
                                         round_zero=self.round_zero, axis=s.axis,
                                         bitpack=False, device="cpu")
        dtype = TORCH_DTYPE[s.scale_dtype]
        step = meta["scale"].reshape(-1).to(dtype)  # HQQ's meta "scale" is the step
        zero = meta["zero"].reshape(-1).to(dtype)
        if not (torch.isfinite(step).all() and torch.isfinite(zero).all()):
            raise UserError(f"hqq: a group's step or zero-point exceeds {s.scale_dtype}'s "
                            "range; use scale_dtype=float32")
        _, _, shape = _layout(flat.numel(), s.group_size, s.axis)
        per = (-1, 1) if s.axis == 1 else (1, -1)
        x = flat.double().reshape(shape)
        levels = np.rint(x.numpy() / step.double().reshape(per).numpy()
                         + zero.double().reshape(per).numpy())
        q = np.clip(levels, 0, 2**s.bits - 1).astype(np.int64).reshape(-1)
        return q, step, zero

    def streams(self) -> bool:
        return True  # each tensor coded on its own

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        index = {k: i for i, k in enumerate(state)}
        arrays: dict[str, torch.Tensor] = {}
        report: dict[str, Any] = {"quantized_tensors": 0, "kept_tensors": 0, "kept_bytes": 0,
                                  "code_bytes": 0, "scale_bytes": 0, "padding_codes": 0,
                                  "max_abs_error": 0.0}
        for k, t in coded.items():
            i = index[k]
            if t.numel() == 0:
                continue  # the manifest's shape rebuilds it
            if not _quantized(list(t.shape), s.group_size):
                kept = t.detach().to("cpu", TORCH_DTYPE[s.keep_dtype]).reshape(-1)
                if not torch.isfinite(kept[torch.isfinite(t.reshape(-1).float())]).all():
                    raise UserError(f"hqq: tensor '{k}' holds values beyond float16's range; "
                                    "use keep_dtype=float32")
                arrays[f"{i}.keep"] = kept
                report["kept_tensors"] += 1
                report["kept_bytes"] += kept.numel() * kept.element_size()
                continue
            q, step, zero = self._quantize(t)
            code = pack_uint(q, s.bits)
            arrays[f"{i}.q"] = torch.frombuffer(bytearray(code), dtype=torch.uint8)
            arrays[f"{i}.step"], arrays[f"{i}.zero"] = step, zero
            rec = dequantize(q, step.numpy(), zero.numpy(), s.group_size, s.axis)
            err = np.abs(rec[: t.numel()] - t.detach().float().reshape(-1).numpy())
            report["max_abs_error"] = max(report["max_abs_error"], float(err.max()))
            report["quantized_tensors"] += 1
            report["code_bytes"] += len(code)
            report["scale_bytes"] += 2 * step.numel() * step.element_size()
            report["padding_codes"] += q.size - t.numel()
        if not arrays and not raw:
            raise UserError("the state_dict has no tensors to compress")
        c = self.new_container(state)
        c.codec_state = {"bits": s.bits, "group_size": s.group_size, "axis": s.axis,
                         "scale": s.scale_dtype, "keep": s.keep_dtype}
        if arrays:
            c.payloads.append(Payload(PAYLOAD, KIND, ROLE_CODE, state_to_bytes(arrays)))
        add_passthrough(c, raw)
        n = sum(t.numel() for k, t in coded.items() if f"{index[k]}.q" in arrays)
        report["bits_per_quantized_weight"] = (
            8 * (report["code_bytes"] + report["scale_bytes"]) / n if n else 0.0)
        return Encoded(c, report=report)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        bits, group_size, axis, scale_dtype, keep_dtype = _read_state(c.codec_state)
        arrays = _read_arrays(c)
        used: set[str] = set()

        def take(key: str, dtype: torch.dtype, size: int) -> np.ndarray:
            t = arrays.get(key)
            if t is None or t.dtype != dtype or t.dim() != 1 or t.numel() != size:
                got = "nothing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise FormatError(f"hqq payload: '{key}' should be {dtype} [{size}], got {got}")
            used.add(key)
            return t.numpy()

        out: StateDict = {}
        index = {spec["name"]: i for i, spec in enumerate(c.tensors)}
        for spec in float_specs(c.tensors):
            shape, n, i = list(spec["shape"]), numel(spec["shape"]), index[spec["name"]]
            if n == 0:
                out[spec["name"]] = torch.zeros(shape)
            elif not _quantized(shape, group_size):
                vals = take(f"{i}.keep", TORCH_DTYPE[keep_dtype], n)
                out[spec["name"]] = torch.from_numpy(vals.astype(np.float32)).reshape(shape)
            else:
                padded, groups, _ = _layout(n, group_size, axis)
                code = take(f"{i}.q", torch.uint8, packed_size(padded, bits))
                step = take(f"{i}.step", TORCH_DTYPE[scale_dtype], groups)
                zero = take(f"{i}.zero", TORCH_DTYPE[scale_dtype], groups)
                q = unpack_uint(code.tobytes(), bits, padded)
                with np.errstate(over="ignore", invalid="ignore"):
                    rec = dequantize(q, step, zero, group_size, axis)[:n]
                if not np.isfinite(rec).all():
                    raise FormatError(f"hqq payload rebuilds non-finite weights of "
                                      f"'{spec['name']}'")
                out[spec["name"]] = torch.from_numpy(rec.copy()).reshape(shape)
        if set(arrays) != used:
            raise FormatError(f"hqq payload holds {len(arrays) - len(used)} arrays the "
                              "manifest has no place for")
        return join_passthrough(c, out)


def _quantized(shape: list[int], group_size: int) -> bool:
    """Whether a floating tensor of this shape is quantized (else kept as floats)."""
    return is_weight(shape) and numel(shape) >= group_size


def _read_state(st: Mapping[str, Any]) -> tuple[int, int, int, str, str]:
    try:
        bits, group_size, axis = st["bits"], st["group_size"], st["axis"]
        scale_dtype, keep_dtype = st["scale"], st["keep"]
    except (KeyError, TypeError) as e:
        raise FormatError(f"hqq codec state is malformed: {e}") from None
    ints_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (bits, group_size, axis))
    strs_ok = isinstance(scale_dtype, str) and isinstance(keep_dtype, str)  # hashable, then known
    if not ints_ok or not strs_ok or bits not in BITS or not 2 <= group_size <= 2**20 \
            or axis not in AXES or scale_dtype not in TORCH_DTYPE or keep_dtype not in TORCH_DTYPE:
        raise FormatError("hqq codec state has unknown values")
    return bits, group_size, axis, scale_dtype, keep_dtype


def _read_arrays(c: Container) -> dict[str, torch.Tensor]:
    if PAYLOAD not in {p.name for p in c.payloads}:
        return {}
    try:
        return state_from_bytes(c.payload(PAYLOAD, kinds=[KIND]).data, what="hqq arrays")
    except UserError as e:
        raise FormatError(str(e)) from None


def main() -> int:
    """Check the installation: hqq imports, and a small round trip stays within its bound."""
    codec_hint = HQQCodec.available()
    if codec_hint is not None:
        print(codec_hint)
        return 1
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(32, 64, generator=gen) * 0.05, "b": torch.randn(32, generator=gen)}
    codec = HQQCodec(optimize=False, round_zero=False, scale_dtype="float32")
    back = codec.decode(codec.encode(state, CodecContext(progress=False)).container, {})
    groups = state["w"].reshape(-1, 64)
    bound = float(((groups.max(1).values - groups.min(1).values) / 15).max()) / 2
    err = float((back["w"] - state["w"]).abs().max())
    ok = err <= bound * (1 + 1e-5) and torch.equal(back["b"], state["b"])
    print(f"hqq {HQQ_VERSION}: round trip {'ok' if ok else 'FAILED'}, max |error| {err:.3g} "
          f"(half a step: {bound:.3g})")
    return 0 if ok and math.isfinite(err) else 1
