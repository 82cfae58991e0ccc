"""The four MNIST classifiers of the paper's Table 1, and the registry that names them.

Every model takes a batch of normalized images shaped [N, 1, 28, 28] and returns logits [N, 10].
Parameter counts are exact: FNN 185,300, CNN 122,270, RNN 54,538, LSTM 214,282.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vaecompress.errors import UserError


class FNN(nn.Module):
    """784-200-100-60-30-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        sizes = [784, 200, 100, 60, 30, 10]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Neurons [784, 3136, 1568, 588, 200, 10]: 4x28x28 -> pool -> 8x14x14 -> pool -> 12x7x7."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 5, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 5, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # "same" for an even kernel pads 1 before and 2 after, as PyTorch's padding="same"
            # does; spelled out so that no padded copy warning is raised on every call.
            nn.ZeroPad2d((1, 2, 1, 2)),
            nn.Conv2d(8, 12, 4),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(588, 200), nn.ReLU(), nn.Linear(200, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Recurrent(nn.Module):
    """Two recurrent layers of 128 reading the image as 28 rows of 28 pixels, then FC 10."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM}[cell]
        self.rnn = rnn_cls(input_size=28, hidden_size=128, num_layers=2, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 28, 28))
        return self.fc(out[:, -1])


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
    "fnn": ModelSpec("fnn", FNN, (784, 200, 100, 60, 30, 10), 185_300, 98.0, 97.0),
    "cnn": ModelSpec("cnn", CNN, (784, 3136, 1568, 588, 200, 10), 122_270, 98.0, 97.0),
    "rnn": ModelSpec("rnn", lambda: Recurrent("rnn"), (28, 128, 128, 10), 54_538, 90.0, 89.0),
    "lstm": ModelSpec("lstm", lambda: Recurrent("lstm"), (28, 128, 128, 10), 214_282, 98.0, 98.0),
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
