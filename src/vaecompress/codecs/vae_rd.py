"""`vae-rd`: the VAE trained for file size on the task, with entropy-coded integer latents.

The paper's ELBO made into a code length (Balle et al.; EPR, Oktay et al. 2020): one integer
latent per weight, a decoder of one float32 step per tensor (`w = step * z`), a learned mixture
prior per tensor, trained on `task loss + lam * bits per parameter` with the model run on its
decoded weights (`vae.rd`). After training the latents are entropy-coded against integer
frequency tables stored in the file (`coding.latents`): the tables, the steps and the header are
all counted. A latent that rounds to zero costs a fraction of a bit, so pruning falls out of the
prior, and a column or row of zeros (an ignored pixel, a dead neuron) is flagged once.

Needs the task's training data at compression time, like Deep Compression (`ctx.finetune`);
`vae-rd-free` is the data-free sibling. Decoding needs only the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    join_passthrough,
    read_passthrough,
    register,
    split_passthrough,
)
from vaecompress.coding.floats import float_specs
from vaecompress.coding.latents import decode_model, encode_model
from vaecompress.errors import UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.vae.rd import check_finite, rd_report, train_rd
from vaecompress.vae.rd_settings import RDSettings

# One ingredient changed at a time against the defaults (`bench --preset ablation`).
ABLATION: tuple[dict[str, Any], ...] = (
    {"entropy": False},  # fixed-length codes instead of ANS with stored tables
    {"masks": False},  # no all-zero row/column flags
    {"learned_prior": False},  # the prior stays the initial mixture
    {"decoder": "row"},  # a bigger decoder: one step per output row
    {"decoder": "shared"},  # one step shared by every tensor
    {"latents": "encoder"},  # amortized encoder z = w / step instead of per-model latents
    {"quant": "noise"},  # uniform noise for the task too
    {"quant": "ste"},  # straight-through rounding for the rate too
)
PAYLOAD = "latents"
KIND = "rd-latents"


@dataclass(frozen=True)
class VAERDSettings(RDSettings):
    lam: float = 7.0  # weight of the rate (bits per parameter) against the task loss (nats)
    epochs: float = 2.0  # passes over the training data


@register
class VAERDCodec(Codec):
    name = "vae-rd"
    version = 1
    Settings = VAERDSettings
    uses_task: ClassVar[bool] = True

    def validate(self) -> None:
        s = self.settings
        s.check(self.name)
        if not (math.isfinite(s.epochs) and s.epochs > 0):
            raise UserError(f"vae-rd: epochs must be > 0, got {s.epochs}")

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "quick":
            return [{"epochs": 0.25}]
        if preset == "full":
            return [{"lam": lam} for lam in (4.0, 7.0, 10.0, 14.0, 20.0, 30.0)]
        if preset == "ablation":  # the reference first, then one ingredient changed at a time
            base = {"lam": 10.0}
            return [base, *({**base, **v} for v in ABLATION)]
        return []

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        if ctx.finetune is None:
            raise UserError(
                "vae-rd trains on the task and needs its training data (CLI: --finetune with "
                "a zoo model or --arch); without data use vae-rd-free"
            )
        coded, raw = split_passthrough(state)
        # Statistics the task's loss only reads (BatchNorm's running mean and variance, the
        # Finetuner's `frozen`) are kept exactly: a coded running variance could reach zero or
        # below and turn every output into NaN; they are a few floats per layer.
        frozen = ctx.finetune.frozen or frozenset()
        raw |= {k: coded.pop(k) for k in [k for k in coded if k in frozen]}
        check_finite(coded, self.name)
        live = {k: v for k, v in coded.items() if v.numel()}
        fixed = {**raw, **{k: v for k, v in coded.items() if not v.numel()}}
        steps = max(1, round(self.settings.epochs * ctx.finetune.steps_per_epoch))
        cfg = self.settings.rd_config(steps=steps, distortion="task", seed=ctx.seed)
        res = train_rd(live, cfg, fixed=fixed,
                       task_loss=ctx.finetune.loss, batches=ctx.finetune.batches(),
                       device=ctx.device, progress=ctx.progress,
                       desc=f"vae-rd {ctx.label}".strip(), checkpoint=ctx.checkpoint)
        data = encode_model([z.numpy() for z in res.ints], [s.numpy() for s in res.steps],
                            entropy=self.settings.entropy, masks=self.settings.masks)
        c = self.new_container(state)
        c.payloads.append(Payload(PAYLOAD, KIND, ROLE_CODE, data))
        add_passthrough(c, raw)
        return Encoded(c, report=rd_report(res, data))

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        data = c.payload(PAYLOAD, kinds=[KIND]).data
        raw = read_passthrough(c)  # with any floating tensor kept exactly (`frozen`)
        specs = [t for t in float_specs(c.tensors) if t["name"] not in raw]
        arrays = decode_model(data, specs)
        return join_passthrough(c, {k: torch.from_numpy(v) for k, v in arrays.items()}, raw)
