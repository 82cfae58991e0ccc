"""`zstd`: the lossless reference. Every floating tensor's raw bytes, concatenated in manifest
order, through zstandard; decoding gives back the state_dict bit for bit.

Boundary: this codec does no modelling of its own. Its ratio is what a general-purpose
compressor gets from trained weights (little: float mantissas look random), the floor every
lossy codec has to beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
from vaecompress.coding.floats import float_specs, numel, tensor_bytes, tensor_from_bytes
from vaecompress.coding.zstd_bounded import decompress_exactly
from vaecompress.errors import FormatError, UserError
from vaecompress.format import DTYPE_ITEMSIZE, ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.params.vector import dtype_from_name

PAYLOAD = "weights"


@dataclass(frozen=True)
class ZstdSettings:
    level: int = 19  # zstandard level, 1..22; 19 is the strongest without --ultra memory


@register
class ZstdCodec(Codec):
    name = "zstd"
    version = 1
    Settings = ZstdSettings
    lossless = True  # NaN and Inf weights are kept exactly

    def validate(self) -> None:
        level = self.settings.level
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
            raise UserError(f"zstd: level must be an integer in 1..22, got {level!r}")

    def streams(self) -> bool:
        return True  # lossless: a shard decodes to its own bytes

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
        specs = float_specs(c.tensors)
        sizes = [numel(list(t["shape"])) * DTYPE_ITEMSIZE[t["dtype"]] for t in specs]
        if raw_bytes != sum(sizes):
            # Checked before decompressing: the output is bounded by the manifest's size.
            raise FormatError(f"zstd codec state says {raw_bytes} bytes, the manifest's "
                              f"floating tensors hold {sum(sizes)}")
        blob = decompress_exactly(c.payload(PAYLOAD, kinds=["zstd"]).data, raw_bytes,
                                  "zstd payload")
        out: StateDict = {}
        pos = 0
        for spec, size in zip(specs, sizes, strict=True):
            dtype = dtype_from_name(spec["dtype"])
            shape = list(spec["shape"])
            if pos + size > len(blob):
                raise FormatError("zstd payload is shorter than its tensors")
            out[spec["name"]] = tensor_from_bytes(blob[pos : pos + size], dtype, shape)
            pos += size
        if pos != len(blob):
            raise FormatError(f"zstd payload has {len(blob) - pos} bytes beyond its tensors")
        return join_passthrough(c, out)
