"""The rate-distortion VAE of the `vae-rd` codecs: integer latents, a tiny decoder, a learned prior.

For every floating tensor `w` of a model there is a latent tensor `z` of the same shape and a
decoder `w_hat = step * round(z)` (one learned step per tensor, or per output row, or one shared
by all tensors). With quantized latents and a box posterior of unit width, the negative ELBO is
exactly distortion + rate (Balle et al., arXiv 1611.01704): the rate is `-log2 p(round(z))` under
the learned prior (`methods.rd.prior`), the size of the entropy-coded latents; the distortion is the
task loss of the model run with `w_hat` (task-aware, needs training data) or the squared error
`|w_hat - w|^2` relative to the weights' energy (data-free). EPR (Oktay et al., arXiv 1906.06624)
is this model without an encoder; so is the default here: the latents are optimized directly
for the one model (`latents="direct"`). `latents="encoder"` keeps an amortized encoder instead,
`z = w / step` of the original weights, so only the decoder and the prior learn (the ablation of
what per-model latents bring).

Quantization during training (`quant`): `mixed` (default) runs the task on straight-through
rounded latents and measures the rate on noisy ones (`z + u`, `u ~ U(-1/2, 1/2)`); `noise` uses
the noisy latents for both; `ste` uses straight-through rounding for both.

Boundary: the model and its configuration; its training is `methods.rd.train` (from the first step)
and `methods.rd.warm` (warm-started from the closed form).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vaecompress.methods.rd.prior import MixturePrior

QUANT_MODES = ("mixed", "noise", "ste")
DECODERS = ("tensor", "row", "shared")
LATENTS = ("direct", "encoder")
DISTORTIONS = ("task", "weights")
SAMPLE_MIN = 65536  # a tensor up to this size has its rate computed on every latent


@dataclass(frozen=True)
class RDConfig:
    lam: float = 0.05  # weight of the rate (bits per parameter) against the distortion
    steps: int = 1000  # optimizer steps
    # Latents move fast (0.1 bin per step) and start coarse (std / 4): in a few epochs a weight
    # can travel from its initial bin to zero, and the step size can grow tenfold. With 0.02 and
    # std / 16 two epochs left 84 % of the FNN's latents non-zero at 5.6 bits per parameter.
    lr: float = 0.1  # Adam, latents (in quantization bins)
    lr_step: float = 1e-2  # Adam, log of the decoder's steps
    lr_prior: float = 1e-2  # Adam, the prior's parameters
    init_bins: float = 4.0  # the first step is std(w) / init_bins
    quant: str = "mixed"
    decoder: str = "tensor"
    latents: str = "direct"
    learned_prior: bool = True
    components: int = 3  # logistic components of each tensor's prior
    distortion: str = "task"
    seed: int = 0
    # The warm start (`train_rd(init_steps=...)`, the task-aware codec at scale):
    rate_sample: float = 1.0  # share of a large tensor's latents the rate is estimated on
    slope: float = 0.0  # > 0: lam = slope * 2 ln 2 * the task loss at the start (`_warm_lam`)
    validate_every: int = 0  # steps between early-stopping checks on the validation batches
    patience: int = 0  # checks without improvement before stopping (0: never stop early)



def rows_of(shape: torch.Size | list[int]) -> int:
    return int(shape[0]) if len(shape) >= 2 else 1


class RDModel(nn.Module):
    def __init__(self, tensors: Mapping[str, torch.Tensor], cfg: RDConfig,
                 init_steps: Sequence[float] | None = None,
                 init_latents: dict[int, torch.Tensor] | None = None) -> None:
        """`init_steps`: the warm start's steps, one per tensor; its latents are then
        `w / step`, except those of `init_latents` (tensor index -> integer latents of the
        tensor's shape, e.g. `methods.rd.feedback`'s), which start there. `init_latents` is
        emptied as it is read: its tensors are not held beside the model's."""
        super().__init__()
        self.warm = init_steps is not None
        self.cfg = cfg
        self.names = list(tensors)
        self.shapes = [tensors[k].shape for k in self.names]
        ref = [tensors[k].detach().to(torch.float32) for k in self.names]
        self.register_buffer("_n", torch.tensor(sum(t.numel() for t in ref)))
        if not self.warm:  # the warm start's task loss never reads the original weights
            for i, t in enumerate(ref):
                self.register_buffer(f"orig{i}", t.clone())
        log_steps = []
        for t in ref:
            scale = float(t.std()) if t.numel() > 1 else 0.0
            if not math.isfinite(scale) or scale <= 0:
                scale = float(t.abs().max()) if t.numel() else 0.0
            scale = scale if scale > 0 else 1e-3
            n_steps = rows_of(t.shape) if cfg.decoder == "row" else 1
            log_steps.append(torch.full((n_steps,), math.log(scale / cfg.init_bins)))
        if init_steps is not None:  # the closed form's steps (`methods.rd.allocate`)
            if cfg.decoder != "tensor" or cfg.latents != "direct" or len(init_steps) != len(ref):
                raise ValueError("a warm start needs one step per tensor and direct latents")
            log_steps = [torch.full((1,), math.log(float(d))) for d in init_steps]
        if cfg.decoder == "shared":
            shared = torch.stack([s[0] for s in log_steps]).mean().reshape(1)
            self.log_shared = nn.Parameter(shared)
            self.log_steps = nn.ParameterList()
        else:
            self.log_steps = nn.ParameterList(nn.Parameter(s) for s in log_steps)
        self.latents = nn.ParameterList(
            nn.Parameter(t / torch.exp(s).reshape(-1, *[1] * (t.dim() - 1))
                         if s.numel() > 1 else t / float(torch.exp(s)))
            for t, s in zip(ref, log_steps, strict=True)
        )
        if init_latents:
            if init_steps is None:
                raise ValueError("initial latents need the warm start's steps")
            with torch.no_grad():
                for i in sorted(init_latents):
                    z = init_latents.pop(i)
                    self.latents[i].copy_(z.reshape(self.shapes[i]).to(torch.float32))
                    del z
        if cfg.latents == "encoder":
            for p in self.latents:
                p.requires_grad_(False)
        self.prior = MixturePrior(len(ref), cfg.components, learned=cfg.learned_prior)
        if self.warm:  # the prior's scales from the latents' spread, in bins
            with torch.no_grad():
                for i, z in enumerate(self.latents):
                    spread = float(z.std()) if z.numel() > 1 else 1.0
                    self.prior.fit_scale(i, spread if math.isfinite(spread) else 1.0)

    def n_params(self) -> int:
        return int(self.get_buffer("_n"))

    def orig(self, i: int) -> torch.Tensor:
        return getattr(self, f"orig{i}")

    def step(self, i: int) -> torch.Tensor:
        if self.cfg.decoder == "shared":
            return torch.exp(self.log_shared)
        return torch.exp(self.log_steps[i])

    def latent(self, i: int) -> torch.Tensor:
        if self.cfg.latents == "encoder":  # the amortized encoder: z = w / step
            s = self.step(i)
            w = self.orig(i)
            return w / (s.reshape(-1, *[1] * (w.dim() - 1)) if s.numel() > 1 else s.reshape(()))
        return self.latents[i]

    @staticmethod
    def _q(z: torch.Tensor, how: str) -> torch.Tensor:
        if how == "round":
            return torch.round(z)
        if how == "ste":
            return z + (torch.round(z) - z).detach()
        return z + (torch.rand_like(z) - 0.5)

    def _modes(self) -> tuple[str, str]:
        q = self.cfg.quant
        return {"mixed": ("ste", "noise"), "noise": ("noise", "noise"), "ste": ("ste", "ste")}[q]

    def forward(
        self, own: Collection[int] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(decoded tensors for the distortion, rate in bits) with training relaxations; with
        `own`, of those tensors only (a process's share in a group). The others still draw
        their noise, so that each tensor gets the noise it gets in one process."""
        how_w, how_r = self._modes()
        out, bits = {}, torch.zeros(())
        for i, name in enumerate(self.names):
            if own is not None and i not in own:
                if "noise" in (how_w, how_r):  # `_q`'s one draw of this tensor's noise
                    p = self.latents[i]
                    torch.rand(p.shape, dtype=p.dtype, device=p.device)
                continue
            out[name], b = self.term(i)
            bits = bits + b
        return out, bits

    def term(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor `i` with the training relaxations: (its decoded weights, its rate in bits)."""
        how_w, how_r = self._modes()
        z = self.latent(i)
        zw = self._q(z, how_w)
        zr = zw if how_r == how_w else self._q(z, how_r)
        s = self.step(i)
        w = zw * s.reshape(-1, *[1] * (z.dim() - 1)) if s.numel() > 1 else zw * s.reshape(())
        return w, self.prior.bits_fast(zr, i)

    def term_task(self, i: int) -> torch.Tensor:
        """Tensor `i` as the task sees it in a warm start (`methods.rd.warm`): `step * round(z)`
        with the straight-through gradient, in one op that keeps no copy of the latents."""
        return _RoundScale.apply(self.latent(i), self.step(i))

    def rate(self, i: int) -> torch.Tensor:
        """Tensor `i`'s rate in bits on its noisy latents (warm start): on a uniform sample of
        `rate_sample` of them for a large tensor, scaled up, an unbiased estimate of the
        whole (`SAMPLE_MIN`)."""
        z = self.latent(i).reshape(-1)
        n = z.numel()
        if self.cfg.rate_sample < 1.0 and n > SAMPLE_MIN:
            k = max(SAMPLE_MIN, round(self.cfg.rate_sample * n))
            z = z[torch.randint(n, (k,), device=z.device)]
            return self.prior.bits_fast(self._q(z, "noise"), i) * (n / k)
        return self.prior.bits_fast(self._q(z, "noise"), i)

    @torch.no_grad()
    def export(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ints = [torch.round(self.latent(i)).to(torch.int64).cpu() for i in range(len(self.names))]
        steps = [self.step(i).detach().to("cpu", torch.float32).clone()
                 for i in range(len(self.names))]
        return ints, steps

    @torch.no_grad()
    def prior_bits(self) -> float:
        ints, _ = self.export()
        return float(sum(self.prior.bits(z.to(torch.float32), i) for i, z in enumerate(ints)))


class _RoundScale(torch.autograd.Function):
    """`step * round(z)` with the straight-through gradient (`d/dz = step`), saving nothing but
    its inputs: the warm start's decoder for the task, at the memory of the latents alone."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, step)
        return torch.round(z).mul_(step.reshape(()))  # in place: one tensor, not two

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, step = ctx.saved_tensors
        step_grad = torch.round(z).mul_(grad).sum().reshape(step.shape)  # one temporary
        return grad * step.reshape(()), step_grad

