"""What the experiments share: trained models reused by config hash, records written atomically.

A zoo model whose training configuration ships with the package (`zoo.reference`: the `paper`
preset at seed 0) is taken from there, the same weights on every machine, unless the run asks
to train (`retrain`). Any other is trained here; a trained model is cached under
`cache_dir()/models/<name>-<hash>.safetensors`, the hash taken
over everything that decides its weights (architecture, training config, seed, torch version), so
`reproduce` and `bench` reuse each other's models and a re-run trains nothing twice. Each finished
measurement is one JSON file under the run's `records/`, written atomically: an interrupted run
resumes where it stopped. A training killed midway resumes too: the classifier's training and
each codec's (`CodecContext.checkpoint`) keep their state under the run's `checkpoints/`, named
by the same keys, until they end (`vaecompress.checkpoint`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vaecompress.data import MnistSplit, cache_dir
from vaecompress.family.delta import base_sha256
from vaecompress.files import atomic_write_json
from vaecompress.io import load_weights_file, save_weights_file
from vaecompress.tasks.mnist import accuracy, predict
from vaecompress.zoo import build_model, reference
from vaecompress.zoo.train import TrainConfig, train_model


def config_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass
class TrainedModel:
    name: str
    state: dict[str, torch.Tensor]
    accuracy: float
    train_s: float
    path: Path
    key: str  # the training's configuration: names the cached file
    source: str = "trained here"  # or "reference": the weights shipped with the package

    @functools.cached_property
    def identity(self) -> str:
        """The key of what is measured on this model: its training's configuration and its
        weights' sha256. Training is not bit-reproducible across machines (other CPUs, other
        kernels), so the same configuration can give other weights; a record measured on
        one model is never reused for another."""
        return config_hash({"model": self.key, "weights": base_sha256(self.state)})


def trained_model(
    name: str,
    cfg: TrainConfig,
    train: MnistSplit,
    test: MnistSplit,
    *,
    device: torch.device,
    progress: bool = True,
    root: Path | None = None,
    checkpoints: Path | None = None,
    retrain: bool = False,
) -> TrainedModel:
    """The reference weights of `name` trained with `cfg` where the package ships them
    (`zoo.reference`) and `retrain` is off; else train `name` with `cfg`, or load the cached
    result of an identical earlier run here. `checkpoints`: the folder where the training
    keeps its resumable state (None: none)."""
    key = config_hash(
        {"model": name, "train": asdict(cfg), "torch": torch.__version__, "n_train": len(train)}
    )
    if not retrain:
        ref = reference.find(name, asdict(cfg), train.images, train.labels)
        if ref is not None:  # its accuracy measured here, on the test set given
            acc, _ = evaluate_state(name, ref.state, test, device=device)
            return TrainedModel(name, ref.state, acc, ref.entry.train_s, ref.path, key,
                                "reference")
    root = root or cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}-{key}.safetensors"
    if path.is_file():
        state, meta = load_weights_file(path)
        return TrainedModel(
            name, state, float(meta["test_accuracy"]), float(meta["train_s"]), path, key
        )
    ckpt = checkpoint_path(checkpoints, f"model-{name}-{key}")
    res = train_model(name, train, cfg, device=device, progress=progress, checkpoint=ckpt)
    acc = accuracy(res.model, test, device=device)
    state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
    save_weights_file(
        path,
        state,
        {
            "vaecompress.model": name,
            "test_accuracy": repr(acc),
            "train_s": repr(res.train_s),
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "config_key": key,
        },
    )
    # The tensors in the order the file gives them back, as every later run that finds the
    # model cached sees them: the vae-paper codec's layout, so its bytes, follow that order.
    state = load_weights_file(path)[0]
    return TrainedModel(name, state, acc, res.train_s, path, key)


def checkpoint_path(folder: Path | None, key: str) -> Path | None:
    """The checkpoint file of the training keyed `key` in `folder` (None without a folder)."""
    return None if folder is None else folder / f"{key}.pt"


def remove_if_empty(folder: Path) -> None:
    """Remove a run's `checkpoints/` once every training in it has ended."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def evaluate_state(
    name: str, state: dict[str, torch.Tensor], test: MnistSplit, *, device: torch.device
) -> tuple[float, torch.Tensor]:
    """(accuracy in percent, predicted labels) of `state` loaded into the `name` architecture."""
    net = build_model(name)
    net.load_state_dict(state)
    pred = predict(net, test, device=device)
    acc = 100.0 * float((pred == torch.as_tensor(test.labels)).float().mean())
    return acc, pred


class RecordStore:
    """One JSON file per finished measurement, keyed by a hash of what decides it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record is measured again

    def put(self, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), record)
