"""Tensors as bytes: their own bits, or float32/float16 arrays; and which tensors are which.

`tensor_bytes` keeps a tensor's own dtype (exact round trip); `floats_to_bytes` stores floats as
little-endian float32 or float16 (what codecs keep unquantized, e.g. biases). `float_specs` tells a
decoder which manifest entries were coded (the floating ones, as `split_floats` chose on the
encoder side), and `is_weight` which of those are matrices or kernels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vaecompress.errors import FormatError, UserError
from vaecompress.io import StateDict
from vaecompress.params.vector import is_float_dtype

FLOAT_STORE = {"float32": "<f4", "float16": "<f2"}
FLOAT_KIND = {"float32": "raw-f32", "float16": "raw-f16"}  # payload kinds of such arrays


def is_weight(shape: list[int]) -> bool:
    """Matrices and kernels, the tensors the baselines quantize, prune and cluster."""
    return len(shape) >= 2


def numel(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def split_floats(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(floating tensors, everything else), each in the order of `state`."""
    floats: StateDict = {}
    other: StateDict = {}
    for k, v in state.items():
        (floats if is_float_dtype(str(v.dtype).removeprefix("torch.")) else other)[k] = v
    return floats, other


def float_specs(tensors: list[dict]) -> list[dict]:
    """Manifest entries (`Container.tensors`) of the floating tensors, in manifest order;
    deriving them from the manifest keeps the tensor names out of the codec state."""
    try:
        return [t for t in tensors if is_float_dtype(t["dtype"])]
    except (UserError, KeyError, TypeError) as e:  # e.g. an unknown dtype in a hostile manifest
        raise FormatError(f"manifest has a bad dtype: {e}") from None


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's own little-endian bytes in its own dtype (float64 stays float64, so the
    round trip is exact whatever the dtype); viewed as bytes so bfloat16 needs no numpy type."""
    if t.numel() == 0:  # an empty tensor's strides may forbid the byte view
        return b""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not data:  # an empty tensor: a zero-length byte view cannot be reinterpreted
        return torch.empty(shape, dtype=dtype)
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return raw.view(dtype).reshape(shape)


def floats_to_bytes(t: torch.Tensor, dtype: str) -> bytes:
    """A tensor stored as little-endian float32 or float16 (what baselines keep unquantized);
    a UserError for finite values beyond float16's range (a BatchNorm variance of 1e5 of a
    float32/bfloat16/float64 model), never an Inf in the file."""
    if dtype not in FLOAT_STORE:
        raise UserError(f"float storage must be one of {sorted(FLOAT_STORE)}, got '{dtype}'")
    x = t.detach().to("cpu", torch.float32).reshape(-1).numpy()
    with np.errstate(over="ignore"):  # an overflow is reported below, as bad input
        out = x.astype(FLOAT_STORE[dtype])
    if dtype == "float16" and not np.isfinite(out[np.isfinite(x)]).all():
        raise UserError("a tensor kept as float16 holds values beyond float16's range "
                        f"(|x| > {float(np.finfo(np.float16).max):.0f}); store such tensors "
                        "as float32 (the codec's bias_dtype or value_dtype setting)")
    return out.tobytes()


def floats_from_bytes(data: bytes, dtype: str, n: int) -> np.ndarray:
    if dtype not in FLOAT_STORE:
        raise FormatError(f"unknown float storage '{dtype}'")
    size = n * np.dtype(FLOAT_STORE[dtype]).itemsize
    if len(data) != size:
        raise FormatError(f"{dtype} data holds {len(data)} bytes, expected {size}")
    return np.frombuffer(data, dtype=FLOAT_STORE[dtype]).astype(np.float32)
