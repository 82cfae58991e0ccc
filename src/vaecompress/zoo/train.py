"""Training the zoo's classifiers on MNIST. How any classifier (a zoo model or the user's own)
is measured and fine-tuned on MNIST is the task's (`tasks.mnist`); this module knows only how the
zoo's networks are made: their training, its presets, and the images they were trained on
(`ZOO_NORMALIZE`).

Presets own their defaults here: `quick` trains in about a minute on a 2-core CPU, `paper`
trains long enough to pass the paper's original accuracies (Table 2).

Training is a step function of `training.loop` (one Adam step per iteration). With a checkpoint
path it saves its state at the end of an epoch (at most every `checkpoint_every_s` seconds) and a
run killed midway resumes from it to the same weights as an uninterrupted one
(`vaecompress.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.checkpoint import (
    Checkpoint,
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
from vaecompress.runinfo import seed_everything
from vaecompress.training.loop import Loop, ProgressBar, Resume
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
    run = _Epochs(model, x, y, cfg, device)
    loop = Loop(run.step, cfg.epochs * run.steps)
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
    loop.add(Resume(ck, lambda saved: run.check(saved, loop), run.state, every=run.steps))
    loop.add(ProgressBar(loop.total, desc=f"train {name}", unit="step", enabled=progress,
                         status=run.status))
    if on_step is not None:
        loop.add_callback("on_step_end", lambda lp: on_step(lp.done, model))
    loop.run()
    model.eval()
    return TrainResult(model, cfg, loop.elapsed_s(), run.losses)


class _Epochs:
    """The step function of a classifier's training: one Adam step on the next batch of the
    epoch's shuffled order (drawn at the epoch's first step), the epoch's mean loss at its last;
    what a checkpoint holds and how it is read back."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                 device: torch.device) -> None:
        self.model, self.x, self.y, self.cfg, self.device = model, x, y, cfg, device
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.steps = (len(x) + cfg.batch_size - 1) // cfg.batch_size  # per epoch
        self.losses: list[float] = []
        self.order = torch.empty(0, dtype=torch.int64)
        self.total = 0.0

    def step(self, loop: Loop) -> None:
        i = loop.it % self.steps
        if i == 0:
            self.model.train()
            self.order = torch.randperm(len(self.x), generator=self.gen).to(self.device)
            self.total = 0.0
        idx = self.order[i * self.cfg.batch_size : (i + 1) * self.cfg.batch_size]
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.total += float(loss.detach()) * len(idx)
        if i == self.steps - 1:
            self.losses.append(self.total / len(self.x))

    def status(self, loop: Loop) -> str | None:
        if loop.done % self.steps:
            return None
        return f"epoch {len(self.losses)}/{self.cfg.epochs}, loss {self.losses[-1]:.4f}"

    def state(self, loop: Loop) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": rng_states({"order": self.gen}, self.device), "epoch": len(self.losses),
                "epoch_loss": list(self.losses), "train_s": loop.elapsed_s()}

    def check(self, saved: dict[str, Any], loop: Loop) -> tuple[int, Callable[[], None]]:
        """Check every field of a `train_model` checkpoint; returns (the steps of the epochs
        done, the function that loads it). Nothing is changed here."""
        epoch = count(saved, "epoch", 1, self.cfg.epochs - 1)
        losses = number_list(saved, "epoch_loss", epoch)
        train_s = seconds(saved, "train_s")
        weights = state_dict_like(saved.get("model"), self.model.state_dict(), "model weights")
        opt_state = optimizer_state(saved.get("optimizer"), self.opt)
        set_rng = restore_rng(saved.get("rng"), {"order": self.gen}, self.device)

        def load() -> None:
            self.model.load_state_dict(weights)
            self.opt.load_state_dict(opt_state)
            set_rng()
            self.losses, loop.before_s = losses, train_s

        return epoch * self.steps, load
