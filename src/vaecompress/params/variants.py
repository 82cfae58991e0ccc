"""Noisy variants of one parameter vector: the VAE's training and validation data (paper, sec. 3).

The paper trains each VAE on 100 copies of the true parameters with noise "added to different
positions" (80 train, 20 validation) and tests it on the true parameters. It does not give the
noise; here it is configurable and defaults to Gaussian noise on a random half of the positions,
with a scale relative to the standard deviation of the (normalized) vector.

The variants are never stored: 100 copies of a 22.7M-parameter model would be 9 GB. A
`VariantStream` holds the chunks, one seeded *noise pool* (masked noise, twice the vector's
length) and one window offset per (variant, chunk); row (v, k) is chunk k plus the pool's
window at offset[v, k]. A batch of rows is two gathers and an add, so variants are made per
batch at no measurable cost beside the VAE's matrix products. For one chunk the 100 variants
use 100 distinct offsets, so at every position they carry independent noise, as separate noise
draws would; windows of different chunks may overlap (the same values at shifted positions),
which no per-position statistic of the data can see. `make_variants` materializes the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaecompress.errors import UserError

NOISE_KINDS = ("gaussian", "uniform")

POOL_FACTOR = 2  # the noise pool holds this many times the chunked vector's length ...
MIN_POOL = 2**18  # ... and at least this many values (1 MiB), so tiny models get varied noise
_POOL_BLOCK = 2**20  # the pool is drawn in blocks of this many values: a small transient


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


class VariantStream:
    """The noisy variants of `chunks` [n_chunks, chunk], made row by row on `chunks.device`.

    Row r is variant r // n_chunks of chunk r % n_chunks; the first (n_variants - n_val) variants
    are the training set (`train`), the rest the validation set (`val`). Everything is a pure
    function of (chunks, cfg, seed)."""

    def __init__(self, chunks: torch.Tensor, cfg: NoiseConfig, seed: int) -> None:
        cfg.validate()
        if chunks.dim() != 2 or chunks.shape[0] < 1:
            raise UserError(f"chunks must be a non-empty [n_chunks, chunk] matrix, got "
                            f"{tuple(chunks.shape)}")
        self.cfg = cfg
        self.chunks = chunks.float()
        n, c = chunks.shape
        self.n_chunks = n
        gen = torch.Generator(device="cpu").manual_seed(seed)
        std = float(chunks.float().std()) if chunks.numel() > 1 else 1.0
        size = max(MIN_POOL, POOL_FACTOR * n * c, c + cfg.n_variants)
        pool = torch.empty(size)
        for i in range(0, size, _POOL_BLOCK):
            m = min(_POOL_BLOCK, size - i)
            if cfg.kind == "gaussian":
                noise = torch.randn(m, generator=gen)
            else:
                noise = torch.rand(m, generator=gen) * 2 - 1
            mask = torch.rand(m, generator=gen) < cfg.fraction
            pool[i : i + m] = noise * mask * (cfg.scale * std)
        # For each chunk, variant v's window starts in its own stride [v*s, (v+1)*s) of the
        # window starts, shifted by a per-chunk base: distinct offsets for the variants of a chunk.
        windows = size - c + 1
        stride = windows // cfg.n_variants
        base = torch.randint(0, windows, (n,), generator=gen)
        jitter = torch.randint(0, stride, (cfg.n_variants,), generator=gen)
        starts = torch.arange(cfg.n_variants) * stride + jitter
        offsets = (starts[:, None] + base[None, :]) % windows  # [n_variants, n_chunks]
        self.offsets = offsets.reshape(-1).to(chunks.device)
        # Every window of the pool as a row of a strided view: gathering rows copies only them.
        self.windows = pool.to(chunks.device).unfold(0, c, 1)
        self.n_train_rows = (cfg.n_variants - cfg.n_val) * n
        self.n_rows = cfg.n_variants * n

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows `idx` (a 1-D integer tensor of global row numbers), [len(idx), chunk]."""
        idx = idx.to(self.offsets.device)
        # index_select, not `windows[...]`: advanced indexing of a strided view is 10x slower.
        out = torch.index_select(self.windows, 0, self.offsets[idx])
        return out.add_(torch.index_select(self.chunks, 0, idx % self.n_chunks))

    @property
    def train(self) -> RowSet:
        return RowSet(self, 0, self.n_train_rows)

    @property
    def val(self) -> RowSet:
        return RowSet(self, self.n_train_rows, self.n_rows - self.n_train_rows)


class RowSet:
    """A contiguous range of a stream's rows that indexes like a tensor: `len(s)` and
    `s[idx]` for a 1-D integer tensor `idx`, so training code takes it or a plain tensor."""

    def __init__(self, stream: VariantStream, start: int, n: int) -> None:
        self.stream, self.start, self.n = stream, start, n

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.n, self.stream.chunks.shape[1]])

    @property
    def device(self) -> torch.device:
        return self.stream.chunks.device

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1:
            raise TypeError("a RowSet is indexed by a 1-D integer tensor of row numbers")
        return self.stream.rows(idx + self.start)


def make_variants(
    chunks: torch.Tensor, cfg: NoiseConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) variants of `chunks` [n_chunks, chunk], each shaped [n_var * n_chunks, chunk]:
    the rows of `VariantStream(chunks, cfg, seed)`, materialized (small inputs and tests only).

    Padding positions are noised too, as any other position: the decoder drops them anyway.
    """
    s = VariantStream(chunks, cfg, seed)
    dev = s.offsets.device
    return (s.rows(torch.arange(s.n_train_rows, device=dev)),
            s.rows(torch.arange(s.n_train_rows, s.n_rows, device=dev)))
