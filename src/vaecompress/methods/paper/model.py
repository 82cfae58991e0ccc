"""The fully connected VAE of the paper (section 2) and its ELBO loss (Eq. 3).

The decoder is a separate `nn.Sequential` so that it can be stored, shared and counted on its own:
it is what a receiver needs beside the latent codes to rebuild a model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VAEArch:
    """Everything needed to rebuild the network; stored in the file header."""

    in_dim: int = 2048
    latent: int = 64
    hidden: tuple[int, ...] = (512,)

    def to_json(self) -> dict:
        return asdict(self) | {"hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, obj: dict) -> VAEArch:
        return cls(int(obj["in_dim"]), int(obj["latent"]), tuple(int(h) for h in obj["hidden"]))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_decoder(arch: VAEArch) -> nn.Sequential:
    return _mlp([arch.latent, *reversed(arch.hidden), arch.in_dim])


class VAE(nn.Module):
    """x -> (mu, logvar) -> z = mu + sigma * eps -> x_hat."""

    def __init__(self, arch: VAEArch) -> None:
        super().__init__()
        self.arch = arch
        h = arch.hidden[-1] if arch.hidden else arch.in_dim
        self.encoder = (
            nn.Sequential(_mlp([arch.in_dim, *arch.hidden]), nn.ReLU())
            if arch.hidden
            else nn.Identity()
        )
        self.mu = nn.Linear(h, arch.latent)
        self.logvar = nn.Linear(h, arch.latent)
        self.decoder = build_decoder(arch)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-20.0, 10.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        # The reparameterization trick (Eq. 4): the noise is outside the graph, mu and sigma in it.
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return {"x_hat": self.decoder(z), "mu": mu, "logvar": logvar}


def elbo_terms(
    x: torch.Tensor, out: dict[str, torch.Tensor], sigma_x: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample negative log-likelihood and KL, in nats, averaged over the batch.

    p(x|z) is a Gaussian with fixed standard deviation `sigma_x` on the normalized parameters. With
    sigma_x = 1 on raw weights (spread 0.05-0.1) the likelihood term is tiny beside the KL and the
    posterior collapses to the prior; normalizing the data and choosing sigma_x at the precision
    the weights need keeps the reconstruction term in charge.
    """
    d = x.shape[1]
    sq = (x - out["x_hat"]).pow(2).sum(1)
    nll = sq / (2 * sigma_x**2) + d * math.log(sigma_x * math.sqrt(2 * math.pi))
    logvar, mu = out["logvar"], out["mu"]
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return nll.mean(), kl.mean()
