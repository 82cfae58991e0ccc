"""The second moments of each linear layer's inputs on the task's batches: what rounding with
error feedback (`methods.rd.feedback`) weighs a layer's output error by.

The task's loss is run on the original tensors, without gradients, under a forward hook on
every `nn.Linear` module. A hook's module is matched to a tensor of the state by identity:
`torch.func.functional_call` (which `ModuleLoss`, MiniLM's task and `tasks.distill` run their
model with) puts the state's own tensors in the module for the call. So any `Finetuner` whose
loss runs `nn.Linear` modules on the given tensors gets the statistics, with nothing to declare;
a layer the loss computes some other way (a fused recurrent cell, a convolution, `F.linear` on
its own) has none, and is rounded to nearest.

A layer whose input is the same tensor as the layer before it (MiniLM's query, key and value
read one hidden state) shares one product of that input.

Boundary: a loss, tensors and batches in, float64 matrices out; nothing of codecs or files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn


def linear_input_grams(loss: Callable[[Mapping[str, torch.Tensor], Any], Any],
                       state: Mapping[str, torch.Tensor], batches: Iterable[Any],
                       names: Iterable[str] | None = None,
                       max_inputs: int | None = None) -> dict[str, torch.Tensor]:
    """`{name: mean(x x^T)}` (float64, CPU, [in, in]) for every 2-D tensor of `state` in
    `names` (default: all) that the loss uses as an `nn.Linear` weight, over every input
    vector of every batch (a sequence's every position). `max_inputs`: layers with more input
    features are left out (their matrix grows with the square of them)."""
    wanted = set(state if names is None else names)
    ids = {id(v): k for k, v in state.items() if k in wanted and v.dim() == 2
           and (max_inputs is None or v.shape[1] <= max_inputs)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    last: list[Any] = [None, None]  # the last input seen and its product

    def hook(module: nn.Module, inputs: tuple[Any, ...], _out: Any) -> None:
        if not isinstance(module, nn.Linear) or not inputs:
            return
        name = ids.get(id(module.weight))
        x = inputs[0]
        if name is None or not isinstance(x, torch.Tensor) or x.shape[-1] != module.in_features:
            return
        if last[0] is not x:
            flat = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
            last[0], last[1] = x, (flat.T @ flat, flat.shape[0])
        prod, n = last[1]
        if name in sums:
            sums[name] += prod
        else:
            sums[name] = prod.clone()
        counts[name] = counts.get(name, 0) + n

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                loss(state, batch)
                last[0] = last[1] = None
    finally:
        handle.remove()
    return {k: s / counts[k] for k, s in sums.items() if counts[k]}
