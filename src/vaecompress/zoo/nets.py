"""The networks of the model zoo (PyTorch modules); `models.py` names them."""

from __future__ import annotations

import itertools

import torch
from torch import nn


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
