"""Training one VAE on the noisy variants of one model's chunked parameters.

Up to `epochs` passes with early stopping on the validation loss; the weights of the best
validation epoch are kept. Each epoch's train/validation loss and wall time are recorded: they are
the paper's Figure 2 (curves) and Figure 3 (training time).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from vaecompress.vae.model import VAE, VAEArch, elbo_terms


@dataclass(frozen=True)
class VAETrainConfig:
    epochs: int = 500
    patience: int = 30  # epochs without a validation improvement before stopping
    batch_size: int = 64
    lr: float = 3e-4
    sigma_x: float = 0.05  # likelihood std on the normalized parameters (see elbo_terms)
    seed: int = 0


@dataclass
class VAEHistory:
    train_loss: list[float] = field(default_factory=list)  # -ELBO per chunk, nats
    val_loss: list[float] = field(default_factory=list)
    val_kl: list[float] = field(default_factory=list)
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


def _eval_loss(vae: VAE, data: torch.Tensor, sigma_x: float, bs: int = 1024) -> tuple[float, float]:
    vae.eval()
    nll_sum = kl_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(data), bs):
            x = data[i : i + bs]
            nll, kl = elbo_terms(x, vae(x), sigma_x)
            nll_sum += float(nll) * len(x)
            kl_sum += float(kl) * len(x)
    return (nll_sum + kl_sum) / len(data), kl_sum / len(data)


def train_vae(
    train: torch.Tensor,
    val: torch.Tensor,
    arch: VAEArch,
    cfg: VAETrainConfig,
    *,
    progress: bool = True,
    desc: str = "vae",
) -> tuple[VAE, VAEHistory]:
    """Fit a VAE to `train` [n, in_dim]; returns the best-validation VAE (in eval mode)."""
    device = train.device
    torch.manual_seed(cfg.seed)
    vae = VAE(arch).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    hist = VAEHistory()
    best = (float("inf"), copy.deepcopy(vae.state_dict()))
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        vae.train()
        order = torch.randperm(len(train), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(train), cfg.batch_size):
            x = train[order[i : i + cfg.batch_size]]
            nll, kl = elbo_terms(x, vae(x), cfg.sigma_x)
            loss = nll + kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
        val_loss, val_kl = _eval_loss(vae, val, cfg.sigma_x)
        hist.train_loss.append(total / len(train))
        hist.val_loss.append(val_loss)
        hist.val_kl.append(val_kl)
        hist.epoch_s.append(time.perf_counter() - t0)
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(vae.state_dict()))
            hist.best_epoch = epoch + 1
        bar.set_postfix(val=f"{val_loss:.1f}", best=hist.best_epoch)
        if epoch + 1 - hist.best_epoch >= cfg.patience:
            hist.stopped_early = True
            break
    bar.close()
    vae.load_state_dict(best[1])
    vae.eval()
    return vae, hist
