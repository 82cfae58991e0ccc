"""`zstd`: the lossless reference. Every floating tensor's raw bytes, concatenated in manifest
order, through zstandard; decoding gives back the state_dict bit for bit.

Boundary: this codec does no modelling of its own. Its ratio is what a general-purpose
compressor gets from trained weights (little: float mantissas look random), the floor every
lossy codec has to beat. The module also holds the raw-tensor helpers the other baselines use
for what they keep as plain floats (biases), and `float_specs`, which tells every baseline's
decoder which manifest entries it coded (the floating ones, as `split_passthrough` chose).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    join_passthrough,
    register,
    split_passthrough,
)
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.params.vector import dtype_from_name, is_float_dtype

PAYLOAD = "weights"
FLOAT_STORE = {"float32": "<f4", "float16": "<f2"}
FLOAT_KIND = {"float32": "raw-f32", "float16": "raw-f16"}  # payload kinds of such arrays


@dataclass(frozen=True)
class ZstdSettings:
    level: int = 19  # zstandard level, 1..22; 19 is the strongest without --ultra memory


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's own little-endian bytes in its own dtype (float64 stays float64, so the
    round trip is exact whatever the dtype); viewed as bytes so bfloat16 needs no numpy type."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return raw.view(dtype).reshape(shape)


def float_specs(c: Container) -> list[dict]:
    """Manifest entries of the tensors a baseline coded, in manifest order; deriving them from
    the manifest keeps the tensor names out of the codec state (fewer header bytes)."""
    try:
        return [t for t in c.tensors if is_float_dtype(t["dtype"])]
    except (UserError, KeyError, TypeError) as e:  # e.g. an unknown dtype in a hostile manifest
        raise FormatError(f"manifest has a bad dtype: {e}") from None


def numel(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def floats_to_bytes(t: torch.Tensor, dtype: str) -> bytes:
    """A tensor stored as little-endian float32 or float16 (what baselines keep unquantized)."""
    if dtype not in FLOAT_STORE:
        raise UserError(f"float storage must be one of {sorted(FLOAT_STORE)}, got '{dtype}'")
    return t.detach().to("cpu", torch.float32).reshape(-1).numpy().astype(FLOAT_STORE[dtype]) \
        .tobytes()


def floats_from_bytes(data: bytes, dtype: str, n: int) -> np.ndarray:
    if dtype not in FLOAT_STORE:
        raise FormatError(f"unknown float storage '{dtype}'")
    size = n * np.dtype(FLOAT_STORE[dtype]).itemsize
    if len(data) != size:
        raise FormatError(f"{dtype} data holds {len(data)} bytes, expected {size}")
    return np.frombuffer(data, dtype=FLOAT_STORE[dtype]).astype(np.float32)


@register
class ZstdCodec(Codec):
    name = "zstd"
    version = 1
    Settings = ZstdSettings

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        coded, raw = split_passthrough(state)
        blob = b"".join(tensor_bytes(t) for t in coded.values())
        data = zstandard.ZstdCompressor(level=self.settings.level).compress(blob)
        c = self.new_container(state)
        c.codec_state = {"raw_bytes": len(blob)}
        c.payloads.append(Payload(PAYLOAD, "zstd", ROLE_CODE, data))
        add_passthrough(c, raw)
        return Encoded(c, report={"raw_bytes": len(blob), "zstd_bytes": len(data)})

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        try:
            raw_bytes = int(c.codec_state["raw_bytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"zstd codec state is malformed: {e}") from None
        try:
            blob = zstandard.ZstdDecompressor().decompress(
                c.payload(PAYLOAD, kinds=["zstd"]).data, max_output_size=raw_bytes)
        except zstandard.ZstdError as e:
            raise FormatError(f"zstd payload is corrupt: {e}") from None
        out: StateDict = {}
        pos = 0
        for spec in float_specs(c):
            dtype = dtype_from_name(spec["dtype"])
            shape = list(spec["shape"])
            size = numel(shape) * torch.empty((), dtype=dtype).element_size()
            if pos + size > len(blob):
                raise FormatError("zstd payload is shorter than its tensors")
            out[spec["name"]] = tensor_from_bytes(blob[pos : pos + size], dtype, shape)
            pos += size
        if pos != len(blob):
            raise FormatError(f"zstd payload has {len(blob) - pos} bytes beyond its tensors")
        return join_passthrough(c, out)
