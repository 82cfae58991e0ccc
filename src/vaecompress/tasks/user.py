"""A task the user defines with a function of the weights: `--score module.path:function`.

The function takes a state_dict (the names and tensors of the input file, rebuilt) and returns
a number, higher better: an accuracy in percent on the user's validation data, a BLEU score,
minus a loss. `compress --score` prints it for the rebuilt model beside the input's, so that
what a lossy file costs is measured in the user's own terms, on any model; with
`--max-drop D` the codec's fidelity setting is searched for the smallest file whose score is
at most D under the input's (`target.compress_within`, with this score as its validation).

Importing the function runs the user's module (`usercode`); calling it runs the user's code on
the weights, as their own script would. What it raises, or a result that is not a finite
number, is one line (a UserError), naming the function.

Boundary: a score of weights; the search and the printing are the caller's.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vaecompress.errors import UserError
from vaecompress.tasks.validation import Validation
from vaecompress.usercode import first_line, import_named


@dataclass
class UserScore:
    """The user's function `spec`, and the input's score, measured once. A state whose tensors
    are the very tensor objects of one scored before (the file `--max-drop` keeps, printed
    after its search scored it) is not scored again: the scores are remembered by weak
    references to the tensors, so remembering keeps no model alive."""

    spec: str
    fn: Callable[[dict[str, torch.Tensor]], Any]
    original: Mapping[str, torch.Tensor]
    _original_score: float | None = None
    _seen: list[tuple[list[weakref.ref[torch.Tensor]], float]] = field(default_factory=list)

    def _recall(self, state: Mapping[str, torch.Tensor]) -> float | None:
        tensors = list(state.values())
        for refs, value in self._seen:
            if len(refs) == len(tensors) and all(r() is t for r, t in zip(refs, tensors,
                                                                          strict=True)):
                return value
        return None

    def score(self, state: Mapping[str, torch.Tensor]) -> float:
        if state is self.original and self._original_score is not None:
            return self._original_score
        if (known := self._recall(state)) is not None:
            return known
        try:
            got = self.fn(dict(state))
        except UserError:
            raise
        except Exception as e:  # the user's code failed on these weights
            raise UserError(f"--score {self.spec} raised {type(e).__name__}: "
                            f"{first_line(e)}") from None
        value = _number(got)
        if value is None:
            raise UserError(f"--score {self.spec} returned {type(got).__name__} "
                            f"{str(got)[:60]!r}, not a finite number")
        if state is self.original:
            self._original_score = value
        else:  # the dead entries go: a state freed since can never match again
            self._seen = [e for e in self._seen if all(r() is not None for r in e[0])]
            self._seen.append(([weakref.ref(t) for t in state.values()], value))
        return value

    def input_score(self) -> float:
        return self.score(self.original)

    def validation(self) -> Validation:
        return Validation(self.score, "score", f"your score {self.spec}")

    def evaluate(self, rebuilt: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        s0, s = self.input_score(), self.score(rebuilt)
        return {"score": s, "score_input": s0, "score_drop": s0 - s, "score_function": self.spec}

    @staticmethod
    def describe(evals: Mapping[str, Any]) -> str:
        return (f"your score ({evals['score_function']}) of the rebuilt model: "
                f"{evals['score']:.6g}, the input's {evals['score_input']:.6g} "
                f"(lost {evals['score_drop']:.4g})")


def _number(x: Any) -> float | None:
    """`x` as a finite float (a Python or numpy number, a one-element tensor), else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            return None
        x = x.item()
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def user_score(spec: str, original: Mapping[str, torch.Tensor]) -> UserScore:
    """The user's score function `spec`, checked to be callable, for weights like
    `original` (the input's, scored once when first asked)."""
    try:
        fn = import_named(spec, "function", "my_eval:accuracy")
    except UserError as e:
        raise UserError(f"--score: {e}") from None
    if isinstance(fn, type) or not callable(fn):
        raise UserError(f"--score: '{spec}' is a {type(fn).__name__}, not a function of a "
                        "state_dict")
    return UserScore(spec, fn, original)
