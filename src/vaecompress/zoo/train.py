"""Training the zoo's classifiers on MNIST, and the MNIST task of any classifier: its accuracy,
and the loss codecs fine-tune it on (a zoo model or the user's own, `zoo.arch`): cross-entropy
with the labels (`make_finetuner`), or without them, distillation from the original model
(`mnist_distiller`).

Presets own their defaults here: `quick` trains in about a minute on a 2-core CPU, `paper`
trains long enough to pass the paper's original accuracies (Table 2).

With a checkpoint path, training saves its state at the end of an epoch (at most every
`checkpoint_every_s` seconds) and a run killed midway resumes from it to the same weights as an
uninterrupted one (`vaecompress.checkpoint`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
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
from vaecompress.coding.finetune import Finetuner, ModuleLoss
from vaecompress.data import MnistSplit, to_tensors
from vaecompress.data.mnist import MEAN, STD
from vaecompress.errors import UserError
from vaecompress.progress import progress as progress_bar
from vaecompress.runinfo import seed_everything
from vaecompress.tasks.distill import distiller
from vaecompress.zoo.models import build_model


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


# What the task gives a network: MNIST images [N, 1, 28, 28], x / 255 normalized with (mean,
# std) (the zoo's, MNIST's own statistics) or left in [0, 1] (None); it must answer [N, 10] logits.
ZOO_NORMALIZE: tuple[float, float] | None = (MEAN, STD)
N_CLASSES = 10


def check_classifier(model: nn.Module, *, device: torch.device | str = "cpu",
                     name: str = "the model") -> None:
    """UserError (one line) unless `model` maps a batch of MNIST-shaped images to [N, 10]
    logits: run once on two blank images, before any long work."""
    device = torch.device(device)
    try:
        with torch.no_grad():
            out = model.to(device).eval()(torch.zeros(2, 1, 28, 28, device=device))
    except Exception as e:  # the user's forward failing on MNIST images is bad input
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{name} fails on MNIST images [N, 1, 28, 28]: "
                        f"{type(e).__name__}: {first}") from None
    _check_logits(out, 2, name)


def _check_logits(out: Any, n: int, name: str) -> None:
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (n, N_CLASSES):
        raise UserError(f"{name} returns {shape} for {n} MNIST images; an MNIST classifier "
                        f"returns logits of shape [N, {N_CLASSES}]")


@torch.no_grad()
def predict(
    model: nn.Module,
    split: MnistSplit,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    normalize: tuple[float, float] | None = ZOO_NORMALIZE,
) -> torch.Tensor:
    """Predicted labels for every image of `split` (a CPU int64 tensor); the images are
    normalized with `normalize` (mean, std), or left in [0, 1] when it is None."""
    device = torch.device(device)
    model = model.to(device).eval()
    x, _ = to_tensors(split, device=device, normalize=normalize)
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        _check_logits(logits, len(x[i : i + batch_size]), "the model")
        out.append(logits.argmax(1).cpu())
    return torch.cat(out)


def accuracy(model: nn.Module, split: MnistSplit, *, device: torch.device | str = "cpu",
             normalize: tuple[float, float] | None = ZOO_NORMALIZE) -> float:
    """Top-1 accuracy in percent."""
    pred = predict(model, split, device=device, normalize=normalize)
    return 100.0 * float((pred == torch.as_tensor(split.labels)).float().mean())


def _shuffled_batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int,
                      seed: int) -> Iterator[Any]:
    """Seeded shuffled full batches of `x` (with `y`, pairs), a new order every pass, forever."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx] if y is None else (x[idx], y[idx])


def make_finetuner(
    model: str | nn.Module,
    train: MnistSplit,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    seed: int = 0,
    normalize: tuple[float, float] | None = ZOO_NORMALIZE,
    prefix: str = "",
) -> Finetuner:
    """The task loss of codecs that train on MNIST (vae-rd, pruning, Deep Compression):
    cross-entropy of `model` (a zoo name or any classifier) run with any set of tensors
    (`coding.finetune.ModuleLoss`; names lose `prefix`), on seeded shuffled batches."""
    device = torch.device(device)
    net = build_model(model) if isinstance(model, str) else model
    x, y = to_tensors(train, device=device, normalize=normalize)
    return Finetuner(loss=ModuleLoss(net.to(device), F.cross_entropy, prefix=prefix),
                     batches=lambda: _shuffled_batches(x, y, batch_size, seed),
                     steps_per_epoch=len(x) // batch_size)


def mnist_distiller(
    model: str | nn.Module,
    state: Mapping[str, torch.Tensor],
    train: MnistSplit,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    seed: int = 0,
    normalize: tuple[float, float] | None = ZOO_NORMALIZE,
    prefix: str = "",
    temperature: float = 1.0,
) -> Finetuner:
    """The same task without labels: the KL divergence of `model`'s predictions run with any
    set of tensors from its predictions with `state` (the original, the teacher;
    `tasks.distill`), on the training images of the same seeded batches as `make_finetuner`
    (the labels are never read)."""
    device = torch.device(device)
    net = build_model(model) if isinstance(model, str) else model
    x, _ = to_tensors(train, device=device, normalize=normalize)
    return distiller(net.to(device), lambda: _shuffled_batches(x, None, batch_size, seed),
                     state={k: v.to(device) for k, v in state.items()}, output="logits",
                     temperature=temperature, prefix=prefix,
                     steps_per_epoch=len(x) // batch_size)
