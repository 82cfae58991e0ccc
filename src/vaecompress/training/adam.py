"""Adam whose step holds no parameter-sized temporary (issue 19).

torch's Adam (one tensor at a time, `foreach=False`) computes `denom = sqrt(v) / c + eps` for a
whole tensor before it updates the tensor: two temporaries the size of the largest parameter.
For a model's latents, where one tensor (an embedding) can be half the model, that is the peak
of a training step. `SlicedAdam` is the same algorithm (no weight decay, no AMSGrad, not
maximizing) with that last part done `SLICE` elements at a time: the same elementwise
operations in the same order, so the same numbers bit for bit (tests/test_training.py).

Boundary: an optimizer; which parameters it steps is its caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

SLICE = 2**20  # elements of a parameter updated at a time


class SlicedAdam(torch.optim.Adam):
    """`torch.optim.Adam(params, lr, betas, eps, foreach=False)`, its step sliced."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("SlicedAdam takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or not p.is_contiguous():
                    raise ValueError("SlicedAdam steps dense, contiguous parameters")
                state = self.state[p]
                if not state:  # as torch's Adam makes it
                    state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                state["step"] += 1
                step = state["step"].item()
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                flat_p, flat_m, flat_v = p.view(-1), m.view(-1), v.view(-1)
                for lo in range(0, flat_p.numel(), SLICE):
                    part = slice(lo, lo + SLICE)
                    denom = (flat_v[part].sqrt() / bias_correction2_sqrt).add_(eps)
                    flat_p[part].addcdiv_(flat_m[part], denom, value=-step_size)
        return None
