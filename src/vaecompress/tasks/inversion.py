"""Inputs made from a classifier itself, without its data: model inversion.

Uniform noise (the probe's inputs, `tasks.probe`) is enough to tell how much each tensor
matters, not which directions of a layer's inputs the model uses: noise images excite every
pixel alike, where the training images leave most of them at zero. Inverting the model puts
that back in part: start from noise images and move them (Adam, in pixel space, clamped to the
pixels' range) until the model gives each one the class it was assigned, with a total-variation
prior that keeps them smooth, as DeepInversion (Yin et al. 2020) and the zero-shot distillation
of Nayak et al. (2019) synthesize a training set from a teacher alone. What the model's own
weights say about its inputs is then in the images; nothing of the user's data is.

Boundary: a function of pixels to logits and a shape in, normalized images out; what a codec
does with them (`tasks.probe.Probe.synthesize`, a distillation in `vae-rd` with `synthetic`)
is not known here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Inversion:
    """How the images are made: `images` of them (the classes in turn), `steps` Adam steps of
    learning rate `lr` (pixels in [0, 1]) on `cross-entropy + tv * total variation`, all at once
    (the model is small; a large one would go in batches)."""

    images: int = 2304
    steps: int = 200
    lr: float = 0.05
    tv: float = 0.3


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """The mean absolute difference of neighbouring pixels, along the last two dimensions."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def invert(logits: Logits, input_shape: tuple[int, ...], *, classes: int,
           normalize: tuple[float, float] | None = None, cfg: Inversion = Inversion(),
           seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """`cfg.images` inputs of `input_shape` (pixels in [0, 1], then normalized as the
    model's training images were: `normalize` = (mean, std)) on which `logits` (the model's
    function of its normalized inputs) gives image `i` the class `i mod classes` (module
    docstring). Deterministic for a seed on one machine. The model's own parameters are not
    changed: only the images are optimized."""
    if classes < 1 or cfg.images < 1 or cfg.steps < 0:
        raise ValueError("an inversion needs a class, an image and no negative step count")
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(cfg.images, *input_shape, generator=gen).to(device)
    pixels.requires_grad_(True)
    target = (torch.arange(cfg.images) % classes).to(device)
    opt = torch.optim.Adam([pixels], lr=cfg.lr)

    def norm(p: torch.Tensor) -> torch.Tensor:
        x = p.clamp(0.0, 1.0)
        return x if normalize is None else (x - normalize[0]) / normalize[1]

    for _ in range(cfg.steps):
        loss = F.cross_entropy(logits(norm(pixels)), target)
        if cfg.tv:
            loss = loss + cfg.tv * total_variation(pixels)
        # the images' gradient alone: a module passed as `logits` keeps its own untouched
        (pixels.grad,) = torch.autograd.grad(loss, [pixels])
        opt.step()
    return norm(pixels.detach())
