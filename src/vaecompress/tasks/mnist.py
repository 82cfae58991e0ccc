"""The MNIST task of any classifier (a zoo model or the user's own, `zoo.arch`): the check that
it is one, its predictions and accuracy (the fidelity of a rebuilt model), and what codecs
retrain it on: cross-entropy with the labels (`make_finetuner`), or without them, distillation
from the original model (`mnist_distiller`), on seeded shuffled batches of the training images;
for the codecs that weigh tensors without data, the classifier run on noise images
(`mnist_probe`); for the search of `--max-drop`, the accuracy on a seeded draw of the training
images (`mnist_validation`), never the test images the rebuilt model is judged on.

Boundary: the images, the loss and the measure. Which network is run is the caller's (a zoo
name is built with `zoo.build_model`); how the zoo's networks were trained is `zoo.train`'s, and
how a codec trains on a `Finetuner` is `training.finetune`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.data import MnistSplit, to_tensors
from vaecompress.errors import UserError
from vaecompress.tasks.distill import distiller
from vaecompress.tasks.probe import Probe, classifier_probe
from vaecompress.tasks.validation import Validation
from vaecompress.training.finetune import Finetuner, ModuleLoss
from vaecompress.zoo.models import build_model
from vaecompress.zoo.train import ZOO_NORMALIZE

# What the task gives a network: MNIST images [N, 1, 28, 28], x / 255 normalized with (mean,
# std) (by default the zoo's, MNIST's own statistics) or left in [0, 1] (None); it must answer
# [N, 10] logits.
IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
VALIDATION_IMAGES = 20_000  # `mnist_validation`: training images drawn for `--max-drop`


def check_classifier(model: nn.Module, *, device: torch.device | str = "cpu",
                     name: str = "the model") -> None:
    """UserError (one line) unless `model` maps a batch of MNIST-shaped images to [N, 10]
    logits: run once on two blank images, before any long work."""
    device = torch.device(device)
    try:
        with torch.no_grad():
            out = model.to(device).eval()(torch.zeros(2, *IMAGE_SHAPE, device=device))
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
    (`training.finetune.ModuleLoss`; names lose `prefix`), on seeded shuffled batches."""
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


def mnist_probe(net: nn.Module, *, normalize: tuple[float, float] | None = ZOO_NORMALIZE,
                prefix: str = "", seed: int = 0,
                device: torch.device | str = "cpu") -> Probe:
    """The classifier run on uniform-noise MNIST-shaped images, normalized as its training
    images were (`tasks.probe.classifier_probe`): the data the data-free codecs weigh tensors
    with."""
    return classifier_probe(net, IMAGE_SHAPE, normalize=normalize, prefix=prefix, seed=seed,
                            device=device)


def mnist_validation(network: Callable[[Mapping[str, torch.Tensor]], nn.Module],
                     train: MnistSplit, *, n: int = VALIDATION_IMAGES, seed: int = 0,
                     device: torch.device | str = "cpu",
                     normalize: tuple[float, float] | None = ZOO_NORMALIZE) -> Validation:
    """The accuracy (points) of the classifier `network(state)` on `n` training images drawn
    with `seed`, for the search of `--max-drop` (`target`): the test images stay for judging
    what it chose. The model was trained on these images, so its accuracy there is higher
    than on the test set; the search reads only the drop."""
    pick = np.sort(np.random.default_rng(seed).choice(len(train), size=min(n, len(train)),
                                                      replace=False))
    split = MnistSplit(train.images[pick], train.labels[pick])

    def score(state: Mapping[str, torch.Tensor]) -> float:
        return accuracy(network(state), split, device=device, normalize=normalize)

    return Validation(score, "points", f"{len(split):,} MNIST training images (seed {seed})")
