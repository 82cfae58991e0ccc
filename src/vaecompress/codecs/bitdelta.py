"""`bitdelta`: each matrix as its sign bits and one scale (BitDelta, Liu et al. 2024,
arXiv 2402.10193), the peer for coding a fine-tune against its base (`compress --base`).

    w ~ scale * sign(w),   scale = mean |w|   (the scale that minimizes |w - scale * sign(w)|^2)

one bit per weight plus one float per matrix (tensors of two or more dims); the other floating
tensors (biases, norms) are kept as float32 or float16, as BitDelta keeps them at full
precision. By default this is the data-free variant. With `finetune_epochs > 0` and the task in
the context (`--finetune`, `--distill`, or a `Finetuner` from Python) the scales are then
refined as BitDelta refines them: Adam on the task's loss of the rebuilt model, the signs fixed
and nothing but the scales trained (BitDelta distils the fine-tune's outputs for about 200
steps; here the loss is whatever the task is, the same one `vae-rd` trains on). Each scale is
trained as a factor of its mean magnitude, so one learning rate suits a delta of any size. The
file is the same size either way.

Meant for a delta (`vaecompress compress --codec bitdelta --base BASE`; `experiments.families`
measures it so). On a whole model it is the binarized weights of XNOR-Net (Rastegari et al.
2016: sign and the mean magnitude per matrix), which the bench measures as a baseline.
"""

from __future__ import annotations

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
from vaecompress.training.finetune import finetune_steps, run_finetune

SIGNS, SCALES, FLOATS = "signs", "scales", "floats"


@dataclass(frozen=True)
class BitDeltaSettings:
    scale_dtype: str = "float16"  # storage of the per-matrix scales: float32 | float16
    bias_dtype: str = "float32"  # tensors with < 2 dims: float32 | float16
    finetune_epochs: float = 0.0  # > 0: refine the scales on ctx.finetune's task
    lr: float = 1e-2  # Adam learning rate of each scale's factor (relative to its start)


@register
class BitDeltaCodec(Codec):
    name = "bitdelta"
    version = 1
    Settings = BitDeltaSettings
    uses_task = True  # only with finetune_epochs > 0: the scales are refined on the task

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        return cls.name, float(settings.get("finetune_epochs", 0) or 0) > 0

    def validate(self) -> None:
        for key in ("scale_dtype", "bias_dtype"):
            value = getattr(self.settings, key)
            if value not in FLOAT_STORE:
                raise UserError(f"bitdelta: {key} must be one of {', '.join(FLOAT_STORE)}, "
                                f"got {value!r}")
        for key in ("finetune_epochs", "lr"):
            value = getattr(self.settings, key)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0 or (key == "lr" and value == 0):
                raise UserError(f"bitdelta: {key} must be a finite number "
                                f"{'above' if key == 'lr' else 'of at least'} 0, got {value!r}")

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        signs, scales, small = [], {}, []
        for name, t in coded.items():
            x = t.detach().to("cpu", torch.float64).reshape(-1)
            if is_weight(list(t.shape)):
                scales[name] = float(x.abs().mean()) if x.numel() else 0.0
                signs.append((x >= 0).numpy().astype(np.uint8))
            else:
                small.append(t.detach().to("cpu", torch.float32).reshape(-1))
        bits = np.concatenate(signs) if signs else np.zeros(0, np.uint8)
        report: dict[str, Any] = {"weights": int(bits.size), "matrices": len(scales)}
        if s.finetune_epochs > 0 and ctx.finetune is None:
            report["note"] = "no finetuner in the context: scales not refined"
        scales, report["finetune_loss"] = refine_scales(
            state, scales, ctx, s.finetune_epochs, s.lr, stored16=s.bias_dtype == "float16")
        c = self.new_container(state)
        c.codec_state = {"scale": s.scale_dtype, "bias": s.bias_dtype}
        c.payloads += [
            Payload(SIGNS, "packed-u1", ROLE_CODE, pack_uint(bits, 1)),
            Payload(SCALES, FLOAT_KIND[s.scale_dtype], ROLE_CODE,
                    floats_to_bytes(torch.tensor(list(scales.values()), dtype=torch.float32),
                                    s.scale_dtype)),
            Payload(FLOATS, FLOAT_KIND[s.bias_dtype], ROLE_CODE,
                    floats_to_bytes(torch.cat(small) if small else torch.zeros(0),
                                    s.bias_dtype)),
        ]
        add_passthrough(c, raw)
        return Encoded(c, report=report)

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


def refine_scales(state: StateDict, scales: dict[str, float], ctx: CodecContext, epochs: float,
                  lr: float, stored16: bool = False) -> tuple[dict[str, float], list[float]]:
    """BitDelta's refinement: each matrix rebuilt as `scale * factor * sign`, the signs fixed,
    and only the factors (starting at 1) trained with Adam on the task's loss of the rebuilt
    state for `epochs` of its batches; the other tensors as they will be decoded (`stored16`:
    in float16). Returns the refined scales (unchanged without a finetuner) and the loss
    curve."""
    steps = finetune_steps(ctx, epochs)
    if steps == 0 or not scales or ctx.finetune is None:
        return scales, []
    dev = ctx.device
    signs = {k: torch.where(state[k].detach().to(dev) >= 0, 1.0, -1.0).to(torch.float32)
             for k in scales}
    start = {k: torch.tensor(v, dtype=torch.float32, device=dev) for k, v in scales.items()}
    factors = {k: torch.ones((), device=dev, requires_grad=True) for k in scales}
    # the other tensors as the file will hold them (biases in float16 when so stored)
    fixed = {k: (v.to(torch.float16).to(v.dtype) if stored16 and v.is_floating_point() else v)
             .to(dev) for k, v in state.items() if k not in scales}

    def rebuilt() -> dict[str, torch.Tensor]:
        return {**fixed, **{k: start[k] * factors[k] * signs[k] for k in scales}}

    losses = run_finetune(factors, rebuilt, ctx.finetune, steps, lr,
                          desc=f"bitdelta scales {ctx.label}".strip(), progress=ctx.progress)
    return {k: float(start[k] * factors[k].detach()) for k in scales}, losses
