"""The settings both rate-distortion codecs share (`vae-rd`, `vae-rd-free`), declared once.

Each codec's `Settings` extends `RDSettings` with its own (the task-aware one's `epochs`, the
data-free one's fidelity knob and solver) and its own default `lam` (the rate's weight is in
units of the codec's distortion: a task loss in nats, or a relative error). `rd_config` turns
them into the trainer's `methods.rd.model.RDConfig`, and `check` validates them, once, when the
codec is
made: a `--set lam=10` travels CLI -> `Codec(**settings)` (types, `check`) -> `rd_config` ->
`RDModel`/the loss, and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vaecompress.errors import UserError
from vaecompress.methods.rd.model import DECODERS, LATENTS, QUANT_MODES, RDConfig


@dataclass(frozen=True)
class RDSettings:
    lam: float = 1.0  # weight of the rate (bits per parameter) against the distortion
    lr: float = 0.1  # Adam on the latents, in quantization bins
    lr_step: float = 0.01  # Adam on the log of the decoder's steps
    lr_prior: float = 0.01  # Adam on the prior's parameters
    init_bins: float = 4.0  # the first step is std(w) / init_bins
    quant: str = "mixed"  # mixed | noise | ste (see methods.rd.model)
    decoder: str = "tensor"  # tensor | row | shared: where one step applies
    latents: str = "direct"  # direct (optimized per model) | encoder (z = w / step)
    learned_prior: bool = True  # False: the prior stays the fixed initial mixture
    components: int = 3  # logistic components of each tensor's prior
    entropy: bool = True  # False: fixed-length codes (the ablation)
    masks: bool = True  # flag all-zero rows and columns once

    def rd_config(self, *, steps: int, distortion: str, seed: int) -> RDConfig:
        """The trainer's configuration for `steps` steps of `distortion` ("task"|"weights")."""
        return RDConfig(lam=self.lam, steps=steps, lr=self.lr, lr_step=self.lr_step,
                        lr_prior=self.lr_prior, init_bins=self.init_bins, quant=self.quant,
                        decoder=self.decoder, latents=self.latents,
                        learned_prior=self.learned_prior, components=self.components,
                        distortion=distortion, seed=seed)

    def check(self, codec: str) -> None:
        """One line per bad value, naming the codec."""
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"{codec}: lam must be a finite number >= 0, got {self.lam}")
        for name in ("lr", "lr_step", "lr_prior", "init_bins"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise UserError(f"{codec}: {name} must be a finite number > 0, got {v}")
        if self.quant not in QUANT_MODES:
            raise UserError(f"{codec}: quant must be one of {', '.join(QUANT_MODES)}, got "
                            f"{self.quant!r}")
        if self.decoder not in DECODERS:
            raise UserError(f"{codec}: decoder must be one of {', '.join(DECODERS)}")
        if self.latents not in LATENTS:
            raise UserError(f"{codec}: latents must be one of {', '.join(LATENTS)}")
        if not 1 <= self.components <= 16:
            raise UserError(f"{codec}: components must be in 1..16, got {self.components}")
