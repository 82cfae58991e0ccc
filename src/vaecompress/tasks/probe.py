"""How much each tensor matters, measured without the task's data: the model run on synthetic
inputs (as ZeroQ, Cai et al. 2020, and DFQ, Nagel et al. 2019, stand in for user data).

The sensitivity of a weight is its diagonal Fisher information under the model's own output
distribution: for a classifier, labels drawn from its softmax; for a model with a vector output
(an embedding), a Gaussian around it, which makes the Fisher `diag(J^T J)`, the squared
derivatives of the output. To second order a weight error `dw` changes the outputs by
`sum F dw^2` (twice the KL divergence of a classifier's predictions), so weighing a codec's
error by `F` weighs it by what it does to the outputs. Only the mean over each tensor is kept:
the data-free codec gives each tensor one step (`methods.rd.allocate`).

The gradient of a whole batch is squared, not each sample's: the cross terms vanish in
expectation (the score of a label drawn from the model has mean zero, and so has a projection
on a random Gaussian direction), so the mean of the squared batch gradients over batches,
divided by the batch size, is an unbiased estimate of the per-sample Fisher at the cost of one
backward pass per batch.

A classifier's probe can also make inputs closer to its data than noise, from the model alone
(`Probe.synthesize`, by inversion: `tasks.inversion`), and any probe's inputs can be distilled
on (`probe_distiller`): the data-free form of `vae-rd` (`synthetic`).

Boundary: a `Probe` is a function of tensors (the model run functionally on its own synthetic
inputs); this module knows neither codecs nor files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.checksum import state_sha256
from vaecompress.tasks.distill import distiller
from vaecompress.tasks.inversion import Inversion, invert
from vaecompress.training.finetune import Finetuner, ModuleLoss

KINDS = ("logits", "embedding")
# The steps an epoch of distillation on made inputs counts (`probe_distiller`): vae-rd's default
# of two epochs is then 400 steps, about 22 passes over the 2,304 images distilled on.
SYNTHETIC_EPOCH = 200
SYNTHETIC_BATCH = 128  # the made inputs' batch
Outputs = Callable[[Mapping[str, torch.Tensor], int], torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """`outputs(state, i)`: the outputs ([B, K]) of the network run with the tensors `state`
    on synthetic batch `i` of `batches` (the same inputs for the same `i` in every call).
    `synthesize(state, seed)`, where the probe can make them: a probe of the same network on
    inputs made from the model with tensors `state` itself (`tasks.inversion`), closer to its
    data than noise, for a codec that distils without data (`vae-rd` with `synthetic`)."""

    outputs: Outputs
    batches: int
    kind: str  # "logits" (a classifier) or "embedding" (any vector output)
    synthesize: Callable[[Mapping[str, torch.Tensor], int], Probe] | None = None


def fisher(probe: Probe, state: Mapping[str, torch.Tensor], names: Sequence[str], *,
           seed: int = 0) -> dict[str, float]:
    """The mean diagonal Fisher information of one weight of each tensor in `names`, from
    `probe.batches` backward passes (module docstring). Other tensors of `state` are held
    fixed. Deterministic for a seed on one machine."""
    if probe.kind not in KINDS:
        raise ValueError(f"probe kind must be one of {KINDS}")
    gen = torch.Generator().manual_seed(seed)
    wanted = set(names)
    tensors = {k: (v.detach().to(torch.float32).clone().requires_grad_(True) if k in wanted
                   else v) for k, v in state.items()}
    leaves = [tensors[k] for k in names]
    sums = [torch.zeros((), dtype=torch.float64) for _ in names]
    samples = 0
    for i in range(probe.batches):
        out = probe.outputs(tensors, i).to(torch.float32)
        out = out.reshape(out.shape[0], -1)
        if probe.kind == "logits":
            labels = torch.multinomial(out.detach().softmax(-1).cpu(), 1, generator=gen)
            score = -F.cross_entropy(out, labels[:, 0].to(out.device), reduction="sum")
        else:
            score = (out * torch.randn(out.shape, generator=gen).to(out.device)).sum()
        grads = torch.autograd.grad(score, leaves, allow_unused=True)
        for j, g in enumerate(grads):
            if g is not None:
                sums[j] += g.detach().to("cpu", torch.float64).square().sum()
        samples += out.shape[0]
    return {k: float(s) / (samples * max(1, state[k].numel()))
            for k, s in zip(names, sums, strict=True)}


def classifier_probe(net: nn.Module, input_shape: Sequence[int], *,
                     normalize: tuple[float, float] | None, prefix: str = "",
                     batches: int = 8, batch_size: int = 32, seed: int = 0,
                     device: torch.device | str = "cpu",
                     inversion: Inversion | None = None) -> Probe:
    """An image classifier on uniform-noise images in [0, 1) of `input_shape` (one image),
    normalized as its training data was (`normalize` = (mean, std) or None); `synthesize`
    makes images by `inversion` (`tasks.inversion`; its defaults when None), in batches of
    128."""
    inversion = inversion or Inversion()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batches * batch_size, *input_shape, generator=gen)
    if normalize is not None:
        x = (x - normalize[0]) / normalize[1]
    x = x.to(device)
    run = ModuleLoss(net, lambda out, _target: out, prefix=prefix)
    made: dict[tuple[str, int], Probe] = {}  # the inverted inputs of a state, made once

    def synthesize(state: Mapping[str, torch.Tensor], seed: int) -> Probe:
        key = (state_sha256(state), seed)
        if key not in made:
            fixed = {k: v.detach() for k, v in state.items()}
            classes = int(run(fixed, (x[:1], None)).shape[-1])
            with torch.enable_grad():
                images = invert(lambda xb: run(fixed, (xb, None)), tuple(input_shape),
                                classes=classes, normalize=normalize, cfg=inversion,
                                seed=seed, device=device)
            made[key] = Probe(_Batches(run, images, SYNTHETIC_BATCH),
                              math.ceil(len(images) / SYNTHETIC_BATCH), "logits")
        return made[key]

    return Probe(_Batches(run, x, batch_size), batches, "logits", synthesize)


class _Batches:
    """`outputs(state, i)`: the network `run` runs on batch `i` (of `batch_size`) of the
    inputs `x`. `buffers` names its floating buffers (BatchNorm's statistics), which a
    distillation on these inputs keeps exactly (`tasks.distill`, `Finetuner.frozen`)."""

    def __init__(self, run: ModuleLoss, x: torch.Tensor, batch_size: int) -> None:
        self.run, self.x, self.batch_size = run, x, batch_size
        self.buffers = run.buffers

    def __call__(self, state: Mapping[str, torch.Tensor], i: int) -> torch.Tensor:
        return self.run(state, (self.x[i * self.batch_size:(i + 1) * self.batch_size], None))


def probe_distiller(probe: Probe, state: Mapping[str, torch.Tensor], *,
                    validation: int = 2, steps_per_epoch: int = SYNTHETIC_EPOCH,
                    seed: int = 0) -> Finetuner:
    """Distillation on a probe's inputs (`tasks.distill`): the network with `state` (the
    original) the teacher, on every batch of `probe` but its last `validation` ones, which are
    kept apart for early stopping. The teacher's outputs are computed once per batch. An epoch
    is `steps_per_epoch` steps, whatever the number of batches: the inputs are few and made, not
    a dataset whose passes mean something."""
    if probe.batches <= validation:
        raise ValueError(f"a probe of {probe.batches} batches leaves none to distil on after "
                         f"{validation} kept for validation")
    kind = "logits" if probe.kind == "logits" else "embedding"
    train = list(range(probe.batches - validation))
    held = list(range(probe.batches - validation, probe.batches))
    return distiller(probe.outputs, train, state=state, output=kind, cache=True, seed=seed,
                     steps_per_epoch=steps_per_epoch, validation=held or None)


def tensor_sensitivities(probe: Probe, state: Mapping[str, torch.Tensor], names: Sequence[str],
                         arrays: Sequence[np.ndarray], seed: int = 0) -> list[float]:
    """Each tensor's mean Fisher information (`fisher`): the sensitivities of the closed form
    of the rate-distortion codecs (`methods.rd.allocate`); `arrays` are the tensors `names` in
    numpy.
    A tensor the synthetic inputs never reach (zero Fisher, e.g. the rows of unused tokens) is
    not thereby free: it is weighed as the most sensitive tensor is, relative to its energy."""
    sens = list(fisher(probe, state, names, seed=seed).values())
    energy = [float(np.square(a, dtype=np.float64).sum()) for a in arrays]
    top = max((f * e for f, e in zip(sens, energy, strict=True) if f > 0), default=0.0)
    return [f if (f > 0 and math.isfinite(f)) else (top / e if e > 0 else 0.0)
            for f, e in zip(sens, energy, strict=True)]
