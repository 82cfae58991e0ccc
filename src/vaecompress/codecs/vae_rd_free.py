"""`vae-rd-free`: the rate-distortion VAE of `vae-rd` without the task's data.

The same latents, decoder, prior and stored form (`coding.latents`), trained on
`|w_hat - w|^2 / |w|^2 + lam * bits per parameter`: the distortion is the squared error of the
decoded weights relative to the weights' energy over the whole model, so it needs nothing but the
weights, like NNCodec. Each step sees the whole model (no batches), so training takes seconds.

This is the codec `vaecompress compress` uses when none is named: it needs no data and never
makes a file larger than the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from vaecompress.coding.floats import float_specs
from vaecompress.coding.latents import decode_model, encode_model
from vaecompress.errors import UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.vae.rd import RDConfig, check_finite, check_rd_settings, rd_report, train_rd

PAYLOAD = "latents"
KIND = "rd-latents"


@dataclass(frozen=True)
class VAERDFreeSettings:
    lam: float = 0.03  # weight of the rate (bits per parameter) against the relative error
    steps: int = 1500  # optimizer steps, each over the whole model
    lr: float = 0.1  # Adam on the latents, in quantization bins
    lr_step: float = 0.01  # Adam on the log of the decoder's steps
    lr_prior: float = 0.01  # Adam on the prior's parameters
    init_bins: float = 4.0  # the first step is std(w) / init_bins
    quant: str = "mixed"  # mixed | noise | ste (see vae.rd)
    decoder: str = "tensor"  # tensor | row | shared
    latents: str = "direct"  # direct | encoder (z = w / step)
    learned_prior: bool = True
    components: int = 3
    entropy: bool = True
    masks: bool = True


@register
class VAERDFreeCodec(Codec):
    name = "vae-rd-free"
    version = 1
    Settings = VAERDFreeSettings

    def validate(self) -> None:
        check_rd_settings(self.name, self.settings)
        if not 1 <= self.settings.steps <= 10**7:
            raise UserError(f"vae-rd-free: steps must be in 1..10**7, got {self.settings.steps}")

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "quick":
            return [{"steps": 300}]
        if preset in ("full", "ablation"):
            return [{"lam": lam} for lam in (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15)]
        return []

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        check_finite(coded, self.name)
        live = {k: v for k, v in coded.items() if v.numel()}
        cfg = RDConfig(lam=s.lam, steps=s.steps, lr=s.lr, lr_step=s.lr_step,
                       lr_prior=s.lr_prior, init_bins=s.init_bins, quant=s.quant,
                       decoder=s.decoder, latents=s.latents, learned_prior=s.learned_prior,
                       components=s.components, distortion="weights", seed=ctx.seed)
        res = train_rd(live, cfg, device=ctx.device, progress=ctx.progress,
                       desc=f"vae-rd-free {ctx.label}".strip(), checkpoint=ctx.checkpoint)
        data = encode_model([z.numpy() for z in res.ints], [t.numpy() for t in res.steps],
                            entropy=s.entropy, masks=s.masks)
        c = self.new_container(state)
        c.payloads.append(Payload(PAYLOAD, KIND, ROLE_CODE, data))
        add_passthrough(c, raw)
        return Encoded(c, report=rd_report(res, data))

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        data = c.payload(PAYLOAD, kinds=[KIND]).data
        arrays = decode_model(data, float_specs(c.tensors))
        return join_passthrough(c, {k: torch.from_numpy(v) for k, v in arrays.items()})
