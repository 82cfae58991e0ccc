"""Noisy variants of one parameter vector: the VAE's training and validation data (paper, sec. 3).

The paper trains each VAE on 100 copies of the true parameters with noise "added to different
positions" (80 train, 20 validation) and tests it on the true parameters. It does not give the
noise; here it is configurable and defaults to Gaussian noise on a random half of the positions,
with a scale relative to the standard deviation of the (normalized) vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaecompress.errors import UserError

NOISE_KINDS = ("gaussian", "uniform")


@dataclass(frozen=True)
class NoiseConfig:
    kind: str = "gaussian"
    fraction: float = 0.5  # share of positions touched in each variant
    scale: float = 0.05  # noise std (gaussian) or half-width (uniform), in units of the vector std
    n_variants: int = 100
    val_fraction: float = 0.2  # 80 train / 20 validation, as in the paper

    def validate(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise UserError(f"unknown noise kind '{self.kind}'; choose one of {NOISE_KINDS}")
        if not 0.0 <= self.fraction <= 1.0:
            raise UserError(f"noise fraction must be in [0, 1], got {self.fraction}")
        if self.scale < 0:
            raise UserError(f"noise scale must be >= 0, got {self.scale}")
        if self.n_variants < 2 or not 0 < self.val_fraction < 1:
            raise UserError("need at least 2 variants and a validation fraction in (0, 1)")

    @property
    def n_val(self) -> int:
        return max(1, round(self.n_variants * self.val_fraction))


def make_variants(
    chunks: torch.Tensor, cfg: NoiseConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) variants of `chunks` [n_chunks, chunk], each shaped [n_var * n_chunks, chunk].

    Padding positions are noised too, as any other position: the decoder drops them anyway.
    """
    cfg.validate()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    std = float(chunks.float().std()) if chunks.numel() > 1 else 1.0
    out = []
    for _ in range(cfg.n_variants):
        shape = chunks.shape
        if cfg.kind == "gaussian":
            noise = torch.randn(shape, generator=gen)
        else:
            noise = torch.rand(shape, generator=gen) * 2 - 1
        mask = torch.rand(shape, generator=gen) < cfg.fraction
        out.append(chunks.cpu() + noise * mask * (cfg.scale * std))
    n_val = cfg.n_val
    train = torch.cat(out[: cfg.n_variants - n_val])
    val = torch.cat(out[cfg.n_variants - n_val :])
    return train.to(chunks.device), val.to(chunks.device)
