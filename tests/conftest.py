"""Shared fixtures: tiny models and fast VAE settings, so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# Settings that train a VAE on a tiny state_dict in a second or two.
FAST_VAE = {
    "chunk_size": 256,
    "latent": 16,
    "hidden": (128,),
    "epochs": 60,
    "patience": 60,
    "n_variants": 20,
    "batch_size": 16,
}


class Tiny(nn.Module):
    """A small net with a conv, a linear, an LSTM and an integer buffer: every kind of tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(64, 16)
        self.rnn = nn.LSTM(8, 8)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))


@pytest.fixture
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = Tiny()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture
def fast_vae() -> dict:
    return dict(FAST_VAE)
