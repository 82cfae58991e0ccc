"""Retraining on the task: the step function every fine-tuning codec runs, masked or through
codebooks.

A `Finetuner` (built by `tasks.mnist.make_finetuner` for MNIST classifiers, or by any user for
their own model and task) gives a loss of the model evaluated with given tensors and an endless
batch stream. `ModuleLoss` makes such a loss from an `nn.Module` and a criterion: the module
runs in eval mode (dropout off, BatchNorm on its stored statistics, computed by a formula that
is differentiable in them, since codecs retrain every floating tensor, the statistics too), the
same function of its tensors that evaluating the rebuilt model computes.
`run_finetune` runs Adam on some leaf tensors, a step function of `training.loop`;
`masked_finetune` keeps pruned weights at zero; `finetune_centroids` trains the codebooks of
clustered tensors (Deep Compression's trained quantization).

Boundary: the loops take any context with `device`, `progress`, `label` and `finetune`
(`codecs.base.CodecContext` is one); without a finetuner they return their input unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from vaecompress.coding.floats import numel, split_floats
from vaecompress.coding.kmeans import Clustered
from vaecompress.errors import UserError
from vaecompress.io import StateDict
from vaecompress.training.loop import Loop, ProgressBar

DEFAULT_STEPS_PER_EPOCH = 100  # an "epoch" of a batch stream whose length is unknown


@dataclass
class Finetuner:
    """What a codec that trains on the task (`vae-rd`, pruning, Deep Compression) may use.

    `loss(state, batch)` evaluates the model with the given tensors (e.g. a `ModuleLoss`, via
    `torch.func.functional_call`) and returns a scalar to minimize, on any task. `batches` is
    a function returning an endless iterator of batches, or a re-iterable collection (a list,
    a DataLoader), cycled. `steps_per_epoch` is how many batches the codecs' `epochs` settings
    count as one epoch: by default the collection's length, else 100. `frozen` names tensors
    that retraining with Adam (pruning, Deep Compression, k-means) leaves as they are: by
    default a `ModuleLoss`'s floating buffers (BatchNorm's statistics, which no gradient step
    should move, let alone below zero); `vae-rd` keeps them exactly. `validation`: batches
    kept apart from the training stream, on which a codec that trains may stop early (the
    warm-started `vae-rd` keeps the best state it saw on them); None: no early stopping.
    """

    loss: Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]
    batches: Callable[[], Iterator[Any]] | Iterable[Any]
    steps_per_epoch: int | None = None
    frozen: frozenset[str] | None = None
    validation: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.frozen is None:
            self.frozen = frozenset(getattr(self.loss, "buffers", ()))
        if self.steps_per_epoch is None:
            b = self.batches
            self.steps_per_epoch = (len(b) if not callable(b) and isinstance(b, Sized)
                                    else DEFAULT_STEPS_PER_EPOCH)
            if self.steps_per_epoch == 0:
                raise UserError("Finetuner: the batches are empty")
        if isinstance(self.steps_per_epoch, bool) or not isinstance(self.steps_per_epoch, int) \
                or self.steps_per_epoch < 1:
            raise UserError(f"Finetuner: steps_per_epoch must be a positive integer, got "
                            f"{self.steps_per_epoch!r}")
        if not callable(self.batches):
            if not isinstance(self.batches, Iterable) or isinstance(self.batches, Iterator):
                raise UserError("Finetuner: batches must be a function returning an iterator, "
                                "or a collection that can be iterated again (a list, a "
                                "DataLoader), not a one-shot iterator")
            self.batches = partial(_cycle, self.batches)

    def stream(self) -> Iterator[Any]:
        """A fresh endless iterator of the training batches (`batches()`, which
        `__post_init__` made a function whatever it was given)."""
        if not callable(self.batches):  # only where a caller replaced it after construction
            raise UserError("Finetuner: batches must be a function returning an iterator")
        return self.batches()


def _cycle(items: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for item in items:
            empty = False
            yield item
        if empty:
            raise UserError("Finetuner: the batches are empty")


def _bn_eval(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in eval mode as plain arithmetic: differentiable in the running statistics,
    which `F.batch_norm` is not."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    assert bn.running_mean is not None and bn.running_var is not None  # patched only then
    y = (x - bn.running_mean.reshape(shape)) * torch.rsqrt(bn.running_var.reshape(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.reshape(shape)
    if bn.bias is not None:
        y = y + bn.bias.reshape(shape)
    return y


class ModuleLoss:
    """`loss(state, (inputs, targets)) = criterion(module(inputs) run with state, targets)`.

    The module (a private copy) runs in eval mode (its recurrent layers in training mode,
    without dropout, for cuDNN's sake); each tensor of `state` is cast to the dtype of the
    module's own tensor of that name, as `load_state_dict` would; names lose `prefix`
    (`module.` of a DDP checkpoint). A tuple or list of inputs is passed as positional
    arguments. `buffers`: the names (with `prefix`) of the module's floating buffers."""

    def __init__(self, module: nn.Module, criterion: Callable[[Any, Any], torch.Tensor], *,
                 prefix: str = "") -> None:
        net = copy.deepcopy(module).eval()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.forward = partial(_bn_eval, m)  # type: ignore[method-assign]
            elif isinstance(m, nn.RNNBase):  # cuDNN differentiates an RNN in training mode only
                m.train()
                m.dropout = 0.0
        self.net, self.criterion, self.prefix = net, criterion, prefix
        self.dtypes = {k: v.dtype for k, v in net.state_dict().items()}
        self.buffers = frozenset(prefix + k for k, b in net.named_buffers()
                                 if b.is_floating_point())

    def __call__(self, state: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        inputs, targets = batch
        n = len(self.prefix)
        tensors = {}
        for k, v in state.items():
            name = k[n:] if n and k.startswith(self.prefix) else k
            dtype = self.dtypes.get(name, v.dtype)
            tensors[name] = v if v.dtype == dtype else v.to(dtype)
        args = tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)
        return self.criterion(functional_call(self.net, tensors, args), targets)


class TaskContext(Protocol):
    device: torch.device
    progress: bool
    label: str
    finetune: Finetuner | None


def run_finetune(params: dict[str, torch.Tensor],
                 make_state: Callable[[], Mapping[str, torch.Tensor]],
                 finetuner: Finetuner, steps: int, lr: float,
                 after_step: Callable[[], None] | None = None,
                 desc: str = "finetune", progress: bool = False) -> list[float]:
    """Adam on `params` (leaf tensors with requires_grad) for `steps` batches of the task loss
    of `make_state()`; `after_step` runs under no_grad after each update (re-applying masks).
    Returns the mean loss of every tenth of the run, for reports."""
    if steps <= 0 or not params:
        return []
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    batches = finetuner.stream()
    losses: list[float] = []
    chunk = max(1, steps // 10)
    total = [0.0]

    def step(loop: Loop) -> None:
        loss = finetuner.loss(make_state(), next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        total[0] += float(loss.detach())
        if (loop.it + 1) % chunk == 0:
            losses.append(total[0] / chunk)
            total[0] = 0.0

    def status(loop: Loop) -> str | None:
        return f"loss {losses[-1]:.4f}" if loop.done % chunk == 0 else None

    Loop(step, steps).add(ProgressBar(steps, desc=desc, unit="step", enabled=progress,
                                      status=status)).run()
    return losses


def finetune_steps(ctx: TaskContext, epochs: float) -> int:
    per_epoch = ctx.finetune.steps_per_epoch if ctx.finetune is not None else None
    return round(epochs * per_epoch) if per_epoch and epochs > 0 else 0


def masked_finetune(state: StateDict, masks: Mapping[str, torch.Tensor], ctx: TaskContext,
                    epochs: float, lr: float,
                    desc: str = "finetune") -> tuple[StateDict, list[float]]:
    """Retrain every floating tensor of `state`, keeping the masked weights at zero. Returns the
    new state (on the CPU) and the loss curve; unchanged state when there is no finetuner."""
    steps = finetune_steps(ctx, epochs)
    finetuner = ctx.finetune
    if steps == 0 or finetuner is None:
        return dict(state), []
    coded, _ = split_floats(state)
    dev = ctx.device
    frozen = finetuner.frozen or frozenset()
    params = {k: v.detach().to(dev, torch.float32).clone().requires_grad_(True)
              for k, v in coded.items() if k not in frozen}
    dev_masks = {k: m.to(dev) for k, m in masks.items() if k in params}
    fixed = {k: v.to(dev) for k, v in state.items() if k not in params}
    with torch.no_grad():
        for k, m in dev_masks.items():
            params[k].mul_(m)

    def reapply() -> None:
        for k, m in dev_masks.items():
            params[k].mul_(m)

    losses = run_finetune(params, lambda: {**fixed, **params}, finetuner, steps, lr,
                          after_step=reapply, desc=f"{desc} {ctx.label}".strip(),
                          progress=ctx.progress)
    out = {k: (params[k].detach().to("cpu").to(v.dtype) if k in params else v)
           for k, v in state.items()}
    return out, losses


def finetune_centroids(state: StateDict, clustered: Mapping[str, Clustered],
                       codebooks: dict[str, np.ndarray], ctx: TaskContext, epochs: float,
                       lr: float, desc: str = "centroids") -> tuple[StateDict, list[float]]:
    """Deep Compression's trained quantization: the weights are a function of the centroids
    (scatter of centroid[index] into the positions), so backprop gives each centroid the sum of
    the gradients of its weights. The unclustered float tensors (biases) are trained too.
    Updates `codebooks` in place; returns the other retrained tensors and the loss curve."""
    steps = finetune_steps(ctx, epochs)
    coded, _ = split_floats(state)
    finetuner = ctx.finetune
    if steps == 0 or finetuner is None:
        return {k: v for k, v in coded.items() if k not in clustered}, []
    dev = ctx.device
    frozen = finetuner.frozen or frozenset()
    books = {k: torch.tensor(v, dtype=torch.float32, device=dev, requires_grad=True)
             for k, v in codebooks.items()}
    free = {k: v.detach().to(dev, torch.float32).clone().requires_grad_(True)
            for k, v in coded.items() if k not in clustered and k not in frozen}
    fixed = {k: v.to(dev) for k, v in state.items() if k not in clustered and k not in free}
    gather = {k: (torch.from_numpy(cl.index).to(dev),
                  None if cl.positions is None else torch.from_numpy(cl.positions).to(dev))
              for k, cl in clustered.items()}

    def make_state() -> dict[str, torch.Tensor]:
        out = {**fixed, **free}
        for k, cl in clustered.items():
            idx, pos = gather[k]
            vals = books[cl.book].index_select(0, idx)
            if pos is None:
                out[k] = vals.reshape(cl.shape)
            else:
                w = torch.zeros(numel(cl.shape), device=dev, dtype=vals.dtype)
                out[k] = w.index_add(0, pos, vals).reshape(cl.shape)
        return out

    params = {**{f"book:{k}": v for k, v in books.items()}, **free}
    losses = run_finetune(params, make_state, finetuner, steps, lr,
                          desc=f"{desc} {ctx.label}".strip(), progress=ctx.progress)
    for k, v in books.items():
        codebooks[k] = v.detach().to("cpu").numpy().astype(np.float32)
    return {k: (free[k].detach().to("cpu").to(v.dtype) if k in free else v)
            for k, v in coded.items() if k not in clustered}, losses
