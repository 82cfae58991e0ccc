"""The four MNIST classifiers of the paper's Table 1, and the registry that names them.

Every model takes a batch of normalized images shaped [N, 1, 28, 28] and returns logits [N, 10].
Parameter counts are exact: FNN 185,300, CNN 122,270, RNN 54,538, LSTM 214,282.

Boundary: this module imports no torch (the networks live in `nets.py`, loaded when a model is
built), so that listing the zoo is instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaecompress.errors import UserError

if TYPE_CHECKING:
    from torch import nn


def _net(name: str, *args: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from vaecompress.zoo import nets

        return getattr(nets, name)(*args)

    return build


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: how to build it and what Table 1 says about it."""

    name: str
    build: Callable[[], nn.Module]
    neurons: tuple[int, ...]
    params: int
    paper_accuracy: float  # Table 2, original model, percent
    paper_accuracy_recon: float  # Table 2, reconstructed at latent 64, percent


MODELS: dict[str, ModelSpec] = {
    "fnn": ModelSpec("fnn", _net("FNN"), (784, 200, 100, 60, 30, 10), 185_300, 98.0, 97.0),
    "cnn": ModelSpec("cnn", _net("CNN"), (784, 3136, 1568, 588, 200, 10), 122_270, 98.0, 97.0),
    "rnn": ModelSpec("rnn", _net("Recurrent", "rnn"), (28, 128, 128, 10), 54_538, 90.0, 89.0),
    "lstm": ModelSpec("lstm", _net("Recurrent", "lstm"), (28, 128, 128, 10), 214_282, 98.0, 98.0),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}") from None


def build_model(name: str) -> nn.Module:
    return get_spec(name).build()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
