"""What a task offers to judge a rebuilt model on data set aside for choosing (`--max-drop`):
a score of any state of the model (higher is better), its unit, and the data it reads.

The search for the smallest file that keeps a fidelity (`target.compress_within`) reads only
this; the printed measure of the rebuilt model (the test set, the fidelity sets) is another set
of data, so that what the search chose is judged on data it never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

# accuracy in percentage points; 1 - mean cosine of embeddings; the user's own score
# (`tasks.user`, in its own units)
UNITS = ("points", "cosine", "score")


@dataclass(frozen=True)
class Validation:
    """`score(state)`: the model with the tensors `state` on the validation data (accuracy in
    percent for `points`, the mean cosine of its embeddings to the original's for `cosine`,
    the user's function's number for `score`);
    the drop of a rebuilt model is the original's score minus its own. `data`: what the score
    reads, in words (for the report and the file)."""

    score: Callable[[Mapping[str, torch.Tensor]], float]
    unit: str
    data: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {self.unit!r}")
