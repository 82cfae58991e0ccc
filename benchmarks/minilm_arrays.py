"""MiniLM's coded tensors as numpy arrays, and the fidelity of weights rebuilt from them: what
the benchmarks that quantize MiniLM by hand share (`default_refinements.py`, `token_prior.py`).

The scripts import it as a sibling module (`python benchmarks/<script>.py` puts this folder on
sys.path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaecompress.codecs.base import split_passthrough


@dataclass(frozen=True)
class CodedArrays:
    """The task's reference weights (`state`), the tensors a codec codes (`names`, in order)
    and each as a float32 array (`arrays`)."""

    state: dict[str, torch.Tensor]
    names: list[str]
    arrays: list[np.ndarray]

    @property
    def params(self) -> int:
        return sum(a.size for a in self.arrays)

    def rebuilt(self, decoded: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The model with each coded tensor replaced by its decoded array (same order)."""
        return {**self.state, **{k: torch.from_numpy(np.ascontiguousarray(w)).reshape(
            self.state[k].shape) for k, w in zip(self.names, decoded, strict=True)}}


def coded_arrays(task: Any) -> CodedArrays:
    """The `SentenceTask`'s reference model split as a codec splits it (non-empty floating
    tensors coded, the rest passed through)."""
    state = dict(task.reference)
    coded, _ = split_passthrough(state)
    names = [k for k, v in coded.items() if v.numel()]
    return CodedArrays(state, names, [coded[k].detach().float().numpy() for k in names])


def fidelity(task: Any, rebuilt: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean cosine and nearest neighbours kept against the original model, on the fidelity set
    and on the held-out text."""
    a = task.fidelity(rebuilt, eval_set="eval")
    b = task.fidelity(rebuilt, eval_set="heldout")
    return {"cos_mean": a["cos_mean"], "nn_same": a["nn_same"],
            "heldout_cos_mean": b["cos_mean"], "heldout_nn_same": b["nn_same"]}
