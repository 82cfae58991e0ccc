"""`bitdelta`: each matrix as its sign bits and one scale (BitDelta, Liu et al. 2024,
arXiv 2402.10193), the peer for coding a fine-tune against its base (`compress --base`).

    w ~ scale * sign(w),   scale = mean |w|   (the scale that minimizes |w - scale * sign(w)|^2)

one bit per weight plus one float per matrix (tensors of two or more dims); the other floating
tensors (biases, norms) are kept as float32 or float16, as BitDelta keeps them at full
precision. This is the data-free variant: BitDelta then refines the scales by about 200 steps
of distillation on the fine-tune's outputs, which this codec does not do.

Meant for a delta (`vaecompress compress --codec bitdelta --base BASE`; `experiments.families`
measures it so). On a whole model it is the binarized weights of XNOR-Net (Rastegari et al.
2016: sign and the mean magnitude per matrix), which the bench measures as a baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
from vaecompress.coding.entropy import pack_uint, packed_size, unpack_uint
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

SIGNS, SCALES, FLOATS = "signs", "scales", "floats"


@dataclass(frozen=True)
class BitDeltaSettings:
    scale_dtype: str = "float16"  # storage of the per-matrix scales: float32 | float16
    bias_dtype: str = "float32"  # tensors with < 2 dims: float32 | float16


@register
class BitDeltaCodec(Codec):
    name = "bitdelta"
    version = 1
    Settings = BitDeltaSettings

    def validate(self) -> None:
        for key in ("scale_dtype", "bias_dtype"):
            value = getattr(self.settings, key)
            if value not in FLOAT_STORE:
                raise UserError(f"bitdelta: {key} must be one of {', '.join(FLOAT_STORE)}, "
                                f"got {value!r}")

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        signs, scales, small = [], [], []
        for t in coded.values():
            x = t.detach().to("cpu", torch.float64).reshape(-1)
            if is_weight(list(t.shape)):
                scales.append(float(x.abs().mean()) if x.numel() else 0.0)
                signs.append((x >= 0).numpy().astype(np.uint8))
            else:
                small.append(t.detach().to("cpu", torch.float32).reshape(-1))
        bits = np.concatenate(signs) if signs else np.zeros(0, np.uint8)
        c = self.new_container(state)
        c.codec_state = {"scale": s.scale_dtype, "bias": s.bias_dtype}
        c.payloads += [
            Payload(SIGNS, "packed-u1", ROLE_CODE, pack_uint(bits, 1)),
            Payload(SCALES, FLOAT_KIND[s.scale_dtype], ROLE_CODE,
                    floats_to_bytes(torch.tensor(scales, dtype=torch.float32), s.scale_dtype)),
            Payload(FLOATS, FLOAT_KIND[s.bias_dtype], ROLE_CODE,
                    floats_to_bytes(torch.cat(small) if small else torch.zeros(0),
                                    s.bias_dtype)),
        ]
        add_passthrough(c, raw)
        return Encoded(c, report={"weights": int(bits.size), "matrices": len(scales)})

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        scale_dtype, bias_dtype = c.codec_state.get("scale"), c.codec_state.get("bias")
        if not (isinstance(scale_dtype, str) and isinstance(bias_dtype, str)
                and scale_dtype in FLOAT_STORE and bias_dtype in FLOAT_STORE):
            raise FormatError("bitdelta codec state is malformed (scale, bias)")
        specs = float_specs(c.tensors)
        weights = [t for t in specs if is_weight(list(t["shape"]))]
        n_bits = sum(numel(list(t["shape"])) for t in weights)
        n_small = sum(numel(list(t["shape"])) for t in specs if not is_weight(list(t["shape"])))
        packed = c.payload(SIGNS, kinds=["packed-u1"]).data
        if len(packed) != packed_size(n_bits, 1):
            raise FormatError(f"bitdelta signs hold {len(packed)} bytes, "
                              f"{packed_size(n_bits, 1)} expected")
        bits = unpack_uint(packed, 1, n_bits)
        scales = floats_from_bytes(c.payload(SCALES, kinds=[FLOAT_KIND[scale_dtype]]).data,
                                   scale_dtype, len(weights))
        small = floats_from_bytes(c.payload(FLOATS, kinds=[FLOAT_KIND[bias_dtype]]).data,
                                  bias_dtype, n_small)
        out: StateDict = {}
        pos_bits = pos_small = i = 0
        for t in specs:
            shape, n = list(t["shape"]), numel(list(t["shape"]))
            if is_weight(shape):
                sign = bits[pos_bits:pos_bits + n].astype(np.float32) * 2 - 1
                values = np.float32(scales[i]) * sign
                pos_bits, i = pos_bits + n, i + 1
            else:
                values = small[pos_small:pos_small + n]
                pos_small += n
            out[t["name"]] = torch.from_numpy(np.ascontiguousarray(values)).reshape(shape)
        return join_passthrough(c, out)
