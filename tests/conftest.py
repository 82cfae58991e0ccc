"""Shared fixtures: tiny models, fast VAE settings and a tiny MNIST stand-in, so the suite runs
in minutes on 2 cores and never downloads MNIST (tests on the real data are marked slow)."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

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


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, np.uint8)
    head = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(head + arr.tobytes())


@pytest.fixture(scope="session")
def toy_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of MNIST IDX files (600 train, 200 test images) that any model learns in one
    epoch: digit k is a bright band at rows 2k+4..2k+5 over dim noise. Pass it as `data_dir`."""
    from vaecompress.data.mnist import IDX_FILES

    d = tmp_path_factory.mktemp("toy-mnist")
    rng = np.random.default_rng(0)
    for (img_name, lbl_name), n in zip(IDX_FILES.values(), (600, 200), strict=True):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 6, 4:24] = 230
        _write_idx(d / img_name, images)
        _write_idx(d / lbl_name, labels)
    return d


def mnist_accuracy(weights: Path, model: str, data_dir: Path) -> float:
    """Top-1 accuracy in percent of a zoo model's weights file on the (toy) MNIST test split,
    computed here from the logits, apart from the command line's own code path."""
    from safetensors.torch import load_file

    from vaecompress.data import load_mnist
    from vaecompress.data.mnist import to_tensors
    from vaecompress.zoo.arch import zoo_arch

    arch = zoo_arch(model)
    net = arch.build()
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    _, test = load_mnist(data_dir)
    x, y = to_tensors(test, normalize=arch.normalize)
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(y), 500)])
    return 100.0 * float((pred == y).float().mean())


def load_script(path: str, name: str | None = None) -> ModuleType:
    """A development script of the repository (`scripts/`, `benchmarks/`; not part of the
    package), loaded by its path under the repository root. Registered in `sys.modules` under
    `name` (its file's stem by default), where dataclasses and pickling look their module up;
    its folder is put on sys.path, where it finds its sibling modules."""
    name = name or Path(path).stem
    folder = str((ROOT / path).parent)  # its sibling modules, as `python path` would see them
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
