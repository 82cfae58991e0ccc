"""A learned prior over integer latents: one small density per group of latents.

Each group (one tensor of the model) has a mixture of `k` logistic densities with learned
weights, means and scales; the first component, the narrowest at the start, stays centred on
zero (`mass`). The probability of an integer latent `z` is the mass of the mixture on
the unit bin `[z - 1/2, z + 1/2]`, so `-log2 p(z)` is the code length of `z` under this prior
(Balle et al. 2018): during training it is the differentiable rate term of the loss. It is also
evaluated on `z + u`, `u ~ U(-1/2, 1/2)` (the unit-width box posterior), which makes the rate a
smooth function of the continuous latents.

Boundary: this prior only guides training. The file never stores these floats: after training the
encoder turns the integers it actually codes into integer frequency tables
(`coding.entropy`, via `methods.rd.latents`), and decoding reads only those integers, so a file
decodes identically on every machine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_TINY = 1e-9  # the smallest bin mass used in the rate; keeps log2 finite
# `bits_fast` evaluates its table only at the occupied grid points above this many points (and
# twice the latents): below it the whole grid is a few hundred kilobytes of graph and cheaper
# than the sort that finds them.
SPARSE_MIN = 4096
# The first component's mean held at zero (`MixturePrior.mass`); False learns it as the others,
# as before, for `benchmarks/zero_spike.py`, which measures both.
ZERO_SPIKE = True


class MixturePrior(nn.Module):
    """`groups` independent mixtures of `k` logistics over integer latents."""

    def __init__(self, groups: int, k: int = 3, learned: bool = True,
                 init_scale: float = 2.0) -> None:
        super().__init__()
        if groups < 1 or k < 1:
            raise ValueError("a prior needs at least one group and one component")
        # Components start at 0 with scales spread over a decade around `init_scale` (in
        # latent bins): a narrow spike for what will be pruned, a wide slab for the rest.
        spread = torch.linspace(-1.5, 1.5, k) if k > 1 else torch.zeros(1)
        log_scales = math.log(init_scale) + spread
        self.logits = nn.Parameter(torch.zeros(groups, k), requires_grad=learned)
        self.means = nn.Parameter(torch.zeros(groups, k), requires_grad=learned)
        self.log_scales = nn.Parameter(log_scales.repeat(groups, 1), requires_grad=learned)

    @torch.no_grad()
    def fit_scale(self, group: int, std: float) -> None:
        """Centre group `group`'s components on a logistic of standard deviation `std` (bins),
        their scales spread as at the start: for latents whose spread is known (a warm start)."""
        k = self.log_scales.shape[1]
        spread = torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1)
        base = math.log(max(std, 0.5) * math.sqrt(3.0) / math.pi)
        self.log_scales[group] = base + spread

    def mass(self, z: torch.Tensor, group: int) -> torch.Tensor:
        """Probability mass of the unit bin centred on each element of `z`."""
        x = z.reshape(-1, 1)
        # The first component's mean is held at zero, its learned value ignored: a spike whose
        # mean may move drifts, on a model's small change from a base, towards a half-integer
        # (the change's own mean in bins), where its latents cost nothing on the noisy latents
        # the rate is trained on and round either way once coded, about a bit each: a larger
        # rate weight then gave a larger file (`benchmarks/zero_spike.py`).
        mu = self.means[group]
        if ZERO_SPIKE:
            mu = torch.cat([torch.zeros_like(mu[:1]), mu[1:]])
        inv_s = torch.exp(-self.log_scales[group])
        w = torch.softmax(self.logits[group], dim=0)
        # Evaluate on the side of the mean where the sigmoids are not both near 1 (the
        # difference of two numbers near 1 loses all precision in the tails).
        c = x - mu
        sign = torch.where(c > 0, -1.0, 1.0)
        upper = torch.sigmoid(sign * (c + 0.5) * inv_s)
        lower = torch.sigmoid(sign * (c - 0.5) * inv_s)
        per_comp = (upper - lower).abs()
        return (per_comp * w).sum(dim=1).clamp_min(_TINY).reshape(z.shape)

    def bits(self, z: torch.Tensor, group: int) -> torch.Tensor:
        """Total code length of `z` under group `group`, in bits (exact evaluation)."""
        return -torch.log2(self.mass(z, group)).sum()

    def bits_fast(self, z: torch.Tensor, group: int, resolution: int = 16) -> torch.Tensor:
        """`bits`, with the code length tabulated on a grid of `1/resolution` bins over the range
        of `z` and linearly interpolated. A model has hundreds of thousands of latents but they
        span a few hundred bins: the mixture is evaluated a few thousand times instead of once
        per latent (8x faster on the FNN), and gradients still reach both `z` and the prior.
        At resolution 16 the interpolation error of the code length is far below 0.01 bit.

        Where the grid has more points than twice the latents (a small tensor with a wide range:
        MiniLM's `token_type_embeddings` spans 0.53 million points for 768 latents at 30 dB,
        `benchmarks/results/rate_grid.json`), the table is evaluated only at the points next to
        a latent, the same values, so that its graph, kept for the backward pass, grows with the
        latents and not with their range."""
        flat = z.reshape(-1)
        n = flat.numel()
        if n == 0:
            return torch.zeros((), device=z.device)
        with torch.no_grad():
            lo = math.floor(float(flat.min())) - 1
            hi = math.ceil(float(flat.max())) + 1
            points = (hi - lo) * resolution + 1
        pos = (flat - lo) * resolution
        with torch.no_grad():
            i0 = pos.floor().clamp(0, points - 2).long()
            frac = pos - i0.to(pos.dtype)
            if points > max(SPARSE_MIN, 2 * n):
                # The occupied grid points, and each latent's two neighbours among them.
                at, inv = torch.unique(torch.cat([i0, i0 + 1]), return_inverse=True)
                j0, j1 = inv[:n], inv[n:]
                grid = (at + lo * resolution).to(flat.dtype) / resolution
            else:
                j0, j1 = i0, i0 + 1
                grid = torch.arange(lo * resolution, hi * resolution + 1, device=z.device,
                                    dtype=flat.dtype) / resolution
        table = -torch.log2(self.mass(grid, group))
        with torch.no_grad():
            # How much of each latent falls on each grid point: a soft histogram. Its dot
            # product with the table is the interpolated code length and carries the prior's
            # gradient; bincount is deterministic, unlike the scatter-add of a gather's backward.
            hist = torch.bincount(j0, weights=1 - frac, minlength=table.numel()) + \
                torch.bincount(j1, weights=frac, minlength=table.numel())
            slope = (table[j1] - table[j0]).detach()
        value = (table * hist.to(table.dtype)).sum()
        # The latents' gradient is the slope of the interpolation at each latent.
        through_z = (slope * pos).sum()
        return value + (through_z - through_z.detach())
