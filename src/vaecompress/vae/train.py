"""Training one VAE on the noisy variants of one model's chunked parameters.

The data are anything that indexes like a tensor of rows (`len(d)`, `d[idx]` for a 1-D index
tensor): a tensor, or a `params.variants.RowSet` that makes each batch of noisy variants when it
is asked for, so that 100 copies of the model never sit in memory. The loop does no Python work
per sample and no device sync per step: the batch is one gather, the loss sums stay on the
device until the end of the epoch, and Adam is the fused kernel (on CPU a third of the time of
the per-tensor one, which at batch 64 was a third of the epoch).

Up to `epochs` passes with early stopping on the validation loss; the weights of the best
validation epoch are kept. Each epoch's train/validation loss, its two terms (reconstruction error
and KL) and its wall time are recorded: they are the paper's Figure 2 (curves) and Figure 3
(training time).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from vaecompress.progress import progress as progress_bar
from vaecompress.vae.model import VAE, VAEArch, elbo_terms


@dataclass(frozen=True)
class VAETrainConfig:
    epochs: int = 500
    patience: int = 30  # epochs without a validation improvement before stopping
    batch_size: int = 64
    lr: float = 3e-4
    sigma_x: float = 0.05  # likelihood std on the normalized parameters (see elbo_terms)
    seed: int = 0
    fused_adam: bool = True  # False: torch's per-tensor Adam (the old loop, for benchmarks)


@dataclass
class VAEHistory:
    train_loss: list[float] = field(default_factory=list)  # -ELBO per chunk, nats
    val_loss: list[float] = field(default_factory=list)
    val_kl: list[float] = field(default_factory=list)  # KL per chunk, nats
    train_kl: list[float] = field(default_factory=list)
    # Mean squared reconstruction error per parameter, on the normalized parameters (so in
    # units of each tensor's variance): the likelihood term without its constant and scale.
    train_mse: list[float] = field(default_factory=list)
    val_mse: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def train_s(self) -> float:
        return float(sum(self.epoch_s))

    def to_json(self) -> dict:
        return asdict(self) | {"epochs": self.epochs, "train_s": self.train_s}


def nll_to_mse(nll: float, dim: int, sigma_x: float) -> float:
    """The mean squared error per parameter behind a Gaussian negative log-likelihood per chunk
    (`elbo_terms`): nll = sq / (2 sigma_x^2) + dim * log(sigma_x sqrt(2 pi)), sq = dim * mse."""
    const = dim * math.log(sigma_x * math.sqrt(2 * math.pi))
    return (nll - const) * 2 * sigma_x**2 / dim


def _eval_loss(
    vae: VAE, data: Rows, sigma_x: float, bs: int = 1024
) -> tuple[float, float, float]:
    """(-ELBO, KL, NLL) per chunk, averaged over `data`."""
    vae.eval()
    n = len(data)
    sums = torch.zeros(2, device=_device(data))
    with torch.no_grad():
        for i in range(0, n, bs):
            x = data[torch.arange(i, min(i + bs, n), device=sums.device)]
            nll, kl = elbo_terms(x, vae(x), sigma_x)
            sums += torch.stack([nll, kl]) * len(x)
    nll_sum, kl_sum = sums.tolist()
    return (nll_sum + kl_sum) / n, kl_sum / n, nll_sum / n


class Rows(Protocol):
    """A tensor of rows, or anything that indexes like one (`params.variants.RowSet`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor: ...


def _device(data: Rows) -> torch.device:
    return getattr(data, "device", torch.device("cpu"))


def make_adam(
    params: Iterable[torch.nn.Parameter], lr: float, device: torch.device, fused: bool = True
) -> torch.optim.Adam:
    """Adam, fused where torch has the kernel (CPU and CUDA in torch >= 2.4)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=fused and device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def train_vae(
    train: Rows,
    val: Rows,
    arch: VAEArch,
    cfg: VAETrainConfig,
    *,
    progress: bool = True,
    desc: str = "vae",
) -> tuple[VAE, VAEHistory]:
    """Fit a VAE to `train` [n, in_dim]; returns the best-validation VAE (in eval mode)."""
    device = _device(train)
    torch.manual_seed(cfg.seed)
    vae = VAE(arch).to(device)
    opt = make_adam(vae.parameters(), cfg.lr, device, cfg.fused_adam)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    hist = VAEHistory()
    best = (float("inf"), copy.deepcopy(vae.state_dict()))
    dim = arch.in_dim
    n = len(train)
    # The length is unknown: early stopping ends the run long before `epochs` (150-250 of 500
    # in the paper preset), so the bar shows the best epoch and the patience left, not an ETA.
    bar = progress_bar(None, desc=desc, unit="epoch", enabled=progress)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        vae.train()
        order = torch.randperm(n, generator=gen).to(device)
        sums = torch.zeros(2, device=device)
        for i in range(0, n, cfg.batch_size):
            x = train[order[i : i + cfg.batch_size]]
            nll, kl = elbo_terms(x, vae(x), cfg.sigma_x)
            loss = nll + kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([nll.detach(), kl.detach()]) * len(x)
        nll_sum, kl_sum = sums.tolist()
        val_loss, val_kl, val_nll = _eval_loss(vae, val, cfg.sigma_x)
        hist.train_loss.append((nll_sum + kl_sum) / n)
        hist.train_kl.append(kl_sum / n)
        hist.train_mse.append(nll_to_mse(nll_sum / n, dim, cfg.sigma_x))
        hist.val_loss.append(val_loss)
        hist.val_kl.append(val_kl)
        hist.val_mse.append(nll_to_mse(val_nll, dim, cfg.sigma_x))
        hist.epoch_s.append(time.perf_counter() - t0)
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(vae.state_dict()))
            hist.best_epoch = epoch + 1
        left = min(cfg.patience - (epoch + 1 - hist.best_epoch), cfg.epochs - epoch - 1)
        if hist.best_epoch:
            rms = math.sqrt(max(hist.val_mse[hist.best_epoch - 1], 0.0))
            bar.set_status(
                f"best {hist.best_epoch} (val -ELBO {best[0]:.5g}, recon RMS {rms:.3g}), "
                f"patience {left} left"
            )
        bar.update()
        if epoch + 1 - hist.best_epoch >= cfg.patience:
            hist.stopped_early = True
            break
    bar.close()
    vae.load_state_dict(best[1])
    vae.eval()
    return vae, hist
