"""Training the zoo's classifiers on MNIST. How any classifier (a zoo model or the user's own)
is measured and fine-tuned on MNIST is the task's (`tasks.mnist`); this module knows only how the
zoo's networks are made: their training, its presets, and the images they were trained on
(`ZOO_NORMALIZE`).

Presets own their defaults here: `quick` trains in about a minute on a 2-core CPU, `paper`
trains long enough to pass the paper's original accuracies (Table 2).

With a checkpoint path, training saves its state at the end of an epoch (at most every
`checkpoint_every_s` seconds) and a run killed midway resumes from it to the same weights as an
uninterrupted one (`vaecompress.checkpoint`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.checkpoint import (
    Checkpoint,
    CheckpointError,
    count,
    fingerprint,
    number_list,
    optimizer_state,
    restore_rng,
    rng_states,
    seconds,
    state_dict_like,
)
from vaecompress.data import MnistSplit, to_tensors
from vaecompress.data.mnist import MEAN, STD
from vaecompress.errors import UserError
from vaecompress.progress import progress as progress_bar
from vaecompress.runinfo import seed_everything
from vaecompress.zoo.models import build_model

# The images the zoo's networks were trained on and want: MNIST's x / 255 normalized with its own
# mean and std (`data.to_tensors`' default); a network of the user's may want them in [0, 1] (None).
ZOO_NORMALIZE: tuple[float, float] | None = (MEAN, STD)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    limit: int | None = None  # train on the first N images only (tests)


# Epochs per model; the paper does not give its own, so these were chosen to reach its accuracies.
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"fnn": 3, "cnn": 3, "rnn": 3, "lstm": 3},
    "paper": {"fnn": 15, "cnn": 15, "rnn": 15, "lstm": 10},
}


def preset_config(preset: str, model: str, seed: int = 0) -> TrainConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    return TrainConfig(epochs=PRESETS[preset][model], seed=seed)


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    train_s: float
    epoch_loss: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "train_s": self.train_s,
            "epoch_loss": self.epoch_loss,
        }


def train_model(
    name: str,
    train: MnistSplit,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train a fresh `name` model with Adam; the run is a pure function of `cfg.seed`.

    `checkpoint`: a file to save the training's state in after an epoch (at most every
    `checkpoint_every_s` seconds; default `checkpoint.checkpoint_every_s()`), resumed from when
    it holds a state of this same run, removed at the end. `init`: weights to start from
    instead of a fresh initialization (a fine-tune); `on_step(steps_done, model)` is called
    after every optimizer step (e.g. to keep the run's checkpoints)."""
    if init is not None and checkpoint is not None:
        raise ValueError("a fine-tune (init) is not resumable from a checkpoint")
    device = torch.device(device)
    seed_everything(cfg.seed)
    model = build_model(name).to(device)
    if init is not None:
        model.load_state_dict(init)
    x, y = to_tensors(train, device=device)
    if cfg.limit is not None:
        x, y = x[: cfg.limit], y[: cfg.limit]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    steps = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    losses: list[float] = []
    ck = Checkpoint(
        checkpoint,
        kind="train_model",
        fingerprint=fingerprint(
            "train_model",
            {"model": name, "config": asdict(cfg), "device": device.type},
            [train.images[: cfg.limit], train.labels[: cfg.limit]] if checkpoint else [],
        ),
        every_s=checkpoint_every_s,
    )
    saved = ck.load()
    before_s = 0.0  # the training time of earlier, interrupted runs
    if saved is not None:
        try:
            losses, before_s = _restore_model(saved, model, opt, gen, device, cfg.epochs)
        except CheckpointError as e:
            ck.reject(str(e))
    t0 = time.perf_counter() - before_s
    bar = progress_bar(cfg.epochs * steps, desc=f"train {name}", unit="step", enabled=progress)
    bar.update(len(losses) * steps)
    for _ in range(len(losses), cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            bar.update()
            if on_step is not None:
                on_step(len(losses) * steps + i + 1, model)
        losses.append(total / len(x))
        bar.set_status(f"epoch {len(losses)}/{cfg.epochs}, loss {losses[-1]:.4f}")
        if ck.due() and len(losses) < cfg.epochs:
            ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "rng": rng_states({"order": gen}, device), "epoch": len(losses),
                     "epoch_loss": list(losses), "train_s": time.perf_counter() - t0})
    bar.close()
    ck.finish()
    model.eval()
    return TrainResult(model, cfg, time.perf_counter() - t0, losses)


def _restore_model(saved: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
                   gen: torch.Generator, device: torch.device,
                   epochs: int) -> tuple[list[float], float]:
    """Check every field of a `train_model` checkpoint, then load it; returns (the losses of
    the epochs done, their training time). Nothing is changed when a field is wrong."""
    epoch = count(saved, "epoch", 1, epochs - 1)
    losses = number_list(saved, "epoch_loss", epoch)
    train_s = seconds(saved, "train_s")
    weights = state_dict_like(saved.get("model"), model.state_dict(), "model weights")
    opt_state = optimizer_state(saved.get("optimizer"), opt)
    set_rng = restore_rng(saved.get("rng"), {"order": gen}, device)
    model.load_state_dict(weights)
    opt.load_state_dict(opt_state)
    set_rng()
    return losses, train_s
