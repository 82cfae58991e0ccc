"""Retraining on the task: the loop every fine-tuning codec shares, masked or through codebooks.

A `Finetuner` (built by `zoo.train.make_finetuner` for the zoo models, or by any user for their
own model) gives a loss of the model evaluated with given tensors and an endless batch stream.
`run_finetune` runs Adam on some leaf tensors; `masked_finetune` keeps pruned weights at zero;
`finetune_centroids` trains the codebooks of clustered tensors (Deep Compression's trained
quantization).

Boundary: the loops take any context with `device`, `progress`, `label` and `finetune`
(`codecs.base.CodecContext` is one); without a finetuner they return their input unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from vaecompress.coding.floats import numel, split_floats
from vaecompress.coding.kmeans import Clustered
from vaecompress.io import StateDict
from vaecompress.progress import progress as progress_bar


@dataclass
class Finetuner:
    """What a retraining codec (pruning, Deep Compression) may use: a loss on the task.

    `loss(state, batch)` evaluates the model with the given tensors (via
    `torch.func.functional_call`), `batches()` yields training batches forever.
    """

    loss: Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]
    batches: Callable[[], Iterator[Any]]
    steps_per_epoch: int


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
    batches = finetuner.batches()
    losses: list[float] = []
    chunk = max(1, steps // 10)
    total = 0.0
    bar = progress_bar(steps, desc=desc, unit="step", enabled=progress)
    for step in range(steps):
        loss = finetuner.loss(make_state(), next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        total += float(loss.detach())
        if (step + 1) % chunk == 0:
            losses.append(total / chunk)
            total = 0.0
            bar.set_status(f"loss {losses[-1]:.4f}")
        bar.update()
    bar.close()
    return losses


def finetune_steps(ctx: TaskContext, epochs: float) -> int:
    return round(epochs * ctx.finetune.steps_per_epoch) if ctx.finetune and epochs > 0 else 0


def masked_finetune(state: StateDict, masks: Mapping[str, torch.Tensor], ctx: TaskContext,
                    epochs: float, lr: float,
                    desc: str = "finetune") -> tuple[StateDict, list[float]]:
    """Retrain every floating tensor of `state`, keeping the masked weights at zero. Returns the
    new state (on the CPU) and the loss curve; unchanged state when there is no finetuner."""
    steps = finetune_steps(ctx, epochs)
    if steps == 0:
        return dict(state), []
    coded, raw = split_floats(state)
    dev = ctx.device
    params = {k: v.detach().to(dev, torch.float32).clone().requires_grad_(True)
              for k, v in coded.items()}
    dev_masks = {k: m.to(dev) for k, m in masks.items()}
    fixed = {k: v.to(dev) for k, v in raw.items()}
    with torch.no_grad():
        for k, m in dev_masks.items():
            params[k].mul_(m)

    def reapply() -> None:
        for k, m in dev_masks.items():
            params[k].mul_(m)

    losses = run_finetune(params, lambda: {**fixed, **params}, ctx.finetune, steps, lr,
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
    coded, raw = split_floats(state)
    if steps == 0:
        return {k: v for k, v in coded.items() if k not in clustered}, []
    dev = ctx.device
    books = {k: torch.tensor(v, dtype=torch.float32, device=dev, requires_grad=True)
             for k, v in codebooks.items()}
    free = {k: v.detach().to(dev, torch.float32).clone().requires_grad_(True)
            for k, v in coded.items() if k not in clustered}
    fixed = {k: v.to(dev) for k, v in raw.items()}
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
    losses = run_finetune(params, make_state, ctx.finetune, steps, lr,
                          desc=f"{desc} {ctx.label}".strip(), progress=ctx.progress)
    for k, v in books.items():
        codebooks[k] = v.detach().to("cpu").numpy().astype(np.float32)
    return {k: v.detach().to("cpu").to(coded[k].dtype) for k, v in free.items()}, losses
