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

An epoch is a step function of `training.loop`, with its early-stopping, checkpoint and
progress hooks. With a checkpoint path the loop saves its whole state after an epoch (at most
every `checkpoint_every_s` seconds): a run killed midway and started again resumes from it and ends
with the same VAE, bit for bit, as an uninterrupted run (`vaecompress.checkpoint`).

Under torchrun the processes share every batch and the validation set (`training.distributed`): each
computes its share of the rows, the gradients and loss sums are summed over the group.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from vaecompress.checkpoint import (
    Checkpoint,
    CheckpointError,
    count,
    fingerprint,
    number_list,
    optimizer_state,
    restore_rng,
    rng_states,
    state_dict_like,
)
from vaecompress.methods.paper.model import VAE, VAEArch, elbo_terms
from vaecompress.params.variants import RowSet
from vaecompress.training.distributed import Group, group
from vaecompress.training.loop import Broadcast, EarlyStopping, Loop, ProgressBar, Resume


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
    vae: VAE, data: Rows, sigma_x: float, bs: int = 1024, grp: Group | None = None
) -> tuple[float, float, float]:
    """(-ELBO, KL, NLL) per chunk, averaged over `data`; in a group each process evaluates its
    share of the rows and the sums are summed over the group."""
    vae.eval()
    grp = grp or Group()
    n = len(data)
    lo, hi = grp.share(n)
    sums = torch.zeros(2, device=_device(data))
    with torch.no_grad():
        for i in range(lo, hi, bs):
            x = data[torch.arange(i, min(i + bs, hi), device=sums.device)]
            nll, kl = elbo_terms(x, vae(x), sigma_x)
            sums += torch.stack([nll, kl]) * len(x)
    nll_sum, kl_sum = grp.sum_(sums).tolist()
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
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float | None = None,
) -> tuple[VAE, VAEHistory]:
    """Fit a VAE to `train` [n, in_dim]; returns the best-validation VAE (in eval mode).

    `checkpoint`: a file to keep the training's state in (saved after an epoch, at most every
    `checkpoint_every_s` seconds), resumed from when it holds a state of this same run and
    removed at the end. Under torchrun (`training.distributed`) the processes share the work
    and every one returns the same VAE; the checkpoint is written by rank 0 and read by all."""
    device = _device(train)
    grp = group()
    torch.manual_seed(cfg.seed)
    run = _Epochs(VAE(arch).to(device), train, val, cfg, grp)
    ck = Checkpoint(
        checkpoint,
        kind="train_vae",
        fingerprint=fingerprint(
            "train_vae",
            {"config": asdict(cfg), "arch": arch.to_json(), "device": device.type,
             "processes": grp.size},
            [*_rows_digest(train), *_rows_digest(val)] if checkpoint else [],
        ),
        every_s=checkpoint_every_s,
        writes=grp.main,
    )
    loop = Loop(run.epoch, cfg.epochs)
    # Every process scores the same, all-reduced, validation loss: no decision to broadcast.
    stopper = EarlyStopping(lambda lp: run.hist.val_loss[-1], patience=cfg.patience,
                            keep=run.keep)
    loop.add(Resume(ck, lambda saved: run.check(saved, stopper), lambda lp: run.state(stopper),
                    grp=grp))
    loop.add(stopper)
    # The length is unknown: early stopping ends the run long before `epochs` (150-250 of 500
    # in the paper preset), so the bar shows the best epoch and the patience left, not an ETA.
    loop.add(ProgressBar(None, desc=desc, unit="epoch", enabled=progress,
                         status=lambda lp: run.status(lp, stopper)))
    loop.add_callback("on_end", lambda lp: run.vae.load_state_dict(run.best))
    loop.add(Broadcast(lambda: run.vae.state_dict().values()))
    loop.run()
    run.hist.stopped_early = loop.stop
    run.vae.eval()
    return run.vae, run.hist


class _Epochs:
    """The step function of a VAE's training: one epoch (a pass over the shuffled rows, then
    the validation loss), the best weights kept, what a checkpoint holds and how it is read
    back."""

    def __init__(self, vae: VAE, train: Rows, val: Rows, cfg: VAETrainConfig,
                 grp: Group) -> None:
        self.vae, self.train, self.val, self.cfg, self.grp = vae, train, val, cfg, grp
        self.device = _device(train)
        self.opt = make_adam(vae.parameters(), cfg.lr, self.device, cfg.fused_adam)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.hist = VAEHistory()
        self.best = copy.deepcopy(vae.state_dict())

    def epoch(self, loop: Loop) -> None:
        t0 = time.perf_counter()
        vae, cfg, train, grp, hist = self.vae, self.cfg, self.train, self.grp, self.hist
        n, dim = len(train), vae.arch.in_dim
        vae.train()
        order = torch.randperm(n, generator=self.gen).to(self.device)
        sums = torch.zeros(2, device=self.device)
        for i in range(0, n, cfg.batch_size):
            if grp.size > 1:
                sums += _shared_step(vae, self.opt, train, order[i : i + cfg.batch_size], cfg,
                                     grp)
                continue
            x = train[order[i : i + cfg.batch_size]]
            nll, kl = elbo_terms(x, vae(x), cfg.sigma_x)
            loss = nll + kl
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            sums += torch.stack([nll.detach(), kl.detach()]) * len(x)
        nll_sum, kl_sum = grp.sum_(sums).tolist()
        val_loss, val_kl, val_nll = _eval_loss(vae, self.val, cfg.sigma_x, grp=grp)
        hist.train_loss.append((nll_sum + kl_sum) / n)
        hist.train_kl.append(kl_sum / n)
        hist.train_mse.append(nll_to_mse(nll_sum / n, dim, cfg.sigma_x))
        hist.val_loss.append(val_loss)
        hist.val_kl.append(val_kl)
        hist.val_mse.append(nll_to_mse(val_nll, dim, cfg.sigma_x))
        hist.epoch_s.append(time.perf_counter() - t0)

    def keep(self, loop: Loop) -> None:
        self.best = copy.deepcopy(self.vae.state_dict())
        self.hist.best_epoch = loop.done

    def status(self, loop: Loop, stopper: EarlyStopping) -> str | None:
        hist = self.hist
        if not hist.best_epoch:
            return None
        left = min(self.cfg.patience - (loop.done - hist.best_epoch), self.cfg.epochs - loop.done)
        rms = math.sqrt(max(hist.val_mse[hist.best_epoch - 1], 0.0))
        return (f"best {hist.best_epoch} (val -ELBO {stopper.best:.5g}, recon RMS {rms:.3g}), "
                f"patience {left} left")

    def state(self, stopper: EarlyStopping) -> dict[str, Any]:
        hist = self.hist
        return {
            "vae": self.vae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": rng_states({"order": self.gen}, self.device),
            "epoch": hist.epochs,
            "history": {k: list(getattr(hist, k)) for k in _CURVES},
            "best_epoch": hist.best_epoch,
            "best_loss": stopper.best,
            "best_vae": self.best,
        }

    def check(self, saved: dict[str, Any],
              stopper: EarlyStopping) -> tuple[int, Callable[[], None]]:
        """Check every field of a `train_vae` checkpoint; returns (epochs done, the function
        that loads it into the VAE, the optimizer, the random states, the history and
        `stopper`). Nothing is changed here."""
        epoch = count(saved, "epoch", 1, self.cfg.epochs - 1)
        curves = saved.get("history")
        if not isinstance(curves, dict):
            raise CheckpointError("field 'history' is malformed")
        hist = VAEHistory()
        for k in _CURVES:
            setattr(hist, k, number_list(curves, k, epoch))
        hist.best_epoch = count(saved, "best_epoch", 0, epoch)
        best_loss = saved.get("best_loss")
        if not isinstance(best_loss, float) or math.isnan(best_loss):
            raise CheckpointError("field 'best_loss' is not a number")
        if (hist.best_epoch == 0) != (best_loss == float("inf")):
            raise CheckpointError("fields 'best_loss' and 'best_epoch' disagree")
        ref = self.vae.state_dict()
        weights = state_dict_like(saved.get("vae"), ref, "VAE weights")
        best_weights = state_dict_like(saved.get("best_vae"), ref, "best VAE weights")
        opt_state = optimizer_state(saved.get("optimizer"), self.opt)
        set_rng = restore_rng(saved.get("rng"), {"order": self.gen}, self.device)

        def load() -> None:
            self.vae.load_state_dict(weights)
            self.opt.load_state_dict(opt_state)
            set_rng()
            self.hist = hist
            self.best = {k: v.to(self.device) for k, v in best_weights.items()}
            stopper.best, stopper.best_at = best_loss, hist.best_epoch
            stopper.waits = epoch - hist.best_epoch

        return epoch, load


def _shared_step(vae: VAE, opt: torch.optim.Optimizer, train: Rows, batch: torch.Tensor,
                 cfg: VAETrainConfig, grp: Group) -> torch.Tensor:
    """One step of a group on `batch` (row numbers): this process's share of the rows, the
    batch's noise as one process draws it (`VAE.forward`: one normal per row and latent), the
    gradients of the batch mean summed over the group. Returns this share's (NLL, KL) sums."""
    eps = torch.randn(len(batch), vae.arch.latent, device=batch.device)
    lo, hi = grp.share(len(batch))
    opt.zero_grad(set_to_none=True)
    sums = torch.zeros(2, device=batch.device)
    if hi > lo:
        x = train[batch[lo:hi]]
        mu, logvar = vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps[lo:hi]
        out = {"x_hat": vae.decoder(z), "mu": mu, "logvar": logvar}
        nll, kl = elbo_terms(x, out, cfg.sigma_x)
        ((nll + kl) * ((hi - lo) / len(batch))).backward()
        sums = torch.stack([nll.detach(), kl.detach()]) * (hi - lo)
    grp.sum_grads(vae.parameters())
    opt.step()
    return sums


# The per-epoch lists of a history, all of one length in a checkpoint.
_CURVES = tuple(f.name for f in fields(VAEHistory) if f.name not in ("best_epoch",
                                                                       "stopped_early"))


def _rows_digest(data: Rows) -> list[Any]:
    """What identifies training rows in a fingerprint: a tensor itself; for a `RowSet` (rows
    made on demand) the chunks and window offsets of its stream, its range and a sample of its
    rows (they carry the noise), so hashing stays as cheap as the model is small."""
    if isinstance(data, torch.Tensor):
        return [data]
    n = len(data)
    idx = torch.linspace(0, n - 1, steps=min(n, 64)).round().long().to(_device(data))
    parts: list[Any] = [n, data[idx] if n else None]
    if isinstance(data, RowSet):
        parts += [data.start, data.stream.chunks, data.stream.offsets]
    return parts
