"""The zoo's reference weights: the four classifiers of the `paper` preset as trained once,
shipped with the package, so that every machine measures the same models.

Training is a pure function of its seed on one machine, not across machines: the same code,
data, seed and torch build gave other weights on each machine this project ran on (the FNN at
97.92, 97.70 and 97.64 %), and on one machine the weights change with torch's thread count
and with the instruction set its kernels dispatch to (AVX-512 or AVX2; `docs/reproducibility.md`).
A result measured on one machine's models could not be made again anywhere else. So
`experiments.common.trained_model` takes a model from here whenever its training
configuration is the one shipped (`paper` preset, seed 0) and its training images are the ones
they were trained on (MNIST's 60,000, found by their digest), and trains only when asked to
(`--retrain`) or for anything else.

`reference/manifest.json` names each file with the configuration that made it, the sha256 of
its bytes, its test accuracy and where it was trained. Every field is checked before it is
used, and a file whose bytes do not match its digest is refused (a damaged install), never
loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.io import state_from_bytes
from vaecompress.zoo.models import MODELS

FOLDER = Path(__file__).with_name("reference")
MANIFEST = FOLDER / "manifest.json"
_FIELDS = {"model", "train", "data_sha256", "file", "sha256", "test_accuracy", "train_s",
           "trained_on"}
_TRAIN_FIELDS: dict[str, Any] = {"epochs": int, "batch_size": int, "lr": float, "seed": int,
                                "limit": (int, type(None))}
_FILE = re.compile(r"[a-z0-9_-]+\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ReferenceError(RuntimeError):
    """The shipped manifest or a shipped file is not what the package was built with."""


@dataclass(frozen=True)
class Entry:
    model: str
    train: dict[str, Any]  # `zoo.train.TrainConfig` as a dict
    data_sha256: str  # of the training images and labels (`data_sha256`)
    file: str
    sha256: str  # of the file's bytes
    test_accuracy: float  # percent, on MNIST's 10,000 test images, where it was trained
    train_s: float
    trained_on: str  # the machine, torch build and revision that trained it, in words

    @property
    def path(self) -> Path:
        return FOLDER / self.file


@dataclass(frozen=True)
class Reference:
    entry: Entry
    state: dict[str, torch.Tensor]

    @property
    def path(self) -> Path:
        return self.entry.path


def _entry(raw: Any, i: int) -> Entry:
    where = f"{MANIFEST}: entry {i}"
    if not isinstance(raw, dict) or set(raw) != _FIELDS:
        raise ReferenceError(f"{where}: expected the fields {sorted(_FIELDS)}")
    model, train = raw["model"], raw["train"]
    if model not in MODELS:
        raise ReferenceError(f"{where}: unknown model {model!r}")
    if not isinstance(train, dict) or set(train) != set(_TRAIN_FIELDS) or not all(
            isinstance(train[k], t) and not isinstance(train[k], bool)
            for k, t in _TRAIN_FIELDS.items()):
        raise ReferenceError(f"{where}: 'train' must hold {sorted(_TRAIN_FIELDS)}")
    if not isinstance(raw["file"], str) or not _FILE.fullmatch(raw["file"]):
        raise ReferenceError(f"{where}: 'file' must be a plain name ending in .safetensors")
    for k in ("sha256", "data_sha256"):
        if not isinstance(raw[k], str) or not _SHA256.fullmatch(raw[k]):
            raise ReferenceError(f"{where}: '{k}' must be 64 lowercase hex digits")
    acc, secs = raw["test_accuracy"], raw["train_s"]
    if not isinstance(acc, float) or not 0.0 <= acc <= 100.0:
        raise ReferenceError(f"{where}: 'test_accuracy' must be a percentage")
    if not isinstance(secs, float) or not secs >= 0.0:
        raise ReferenceError(f"{where}: 'train_s' must be a non-negative number")
    if not isinstance(raw["trained_on"], str):
        raise ReferenceError(f"{where}: 'trained_on' must be a string")
    return Entry(model, dict(train), raw["data_sha256"], raw["file"], raw["sha256"], acc, secs,
                 raw["trained_on"])


@functools.cache
def entries() -> tuple[Entry, ...]:
    """The manifest's entries, each checked; none when the package ships no manifest."""
    if not MANIFEST.is_file():
        return ()
    try:
        raw = json.loads(MANIFEST.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReferenceError(f"{MANIFEST}: not readable JSON ({e})") from e
    if not isinstance(raw, dict) or set(raw) != {"format", "models"} or raw["format"] != 1 \
            or not isinstance(raw["models"], list):
        raise ReferenceError(f"{MANIFEST}: expected {{'format': 1, 'models': [...]}}")
    out = tuple(_entry(e, i) for i, e in enumerate(raw["models"]))
    keys = [(e.model, json.dumps(e.train, sort_keys=True), e.data_sha256) for e in out]
    if len(set(keys)) != len(keys):
        raise ReferenceError(f"{MANIFEST}: two entries for one configuration")
    return out


def data_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """The digest of a training set: its uint8 images' bytes, then its int64 labels' (both
    C-ordered, little-endian)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def find(model: str, train: dict[str, Any], images: np.ndarray,
         labels: np.ndarray) -> Reference | None:
    """The shipped weights of `model` trained with the configuration `train` (a
    `TrainConfig` as a dict) on these training images and labels, their bytes checked against
    the manifest; None where none ships."""
    candidates = [e for e in entries() if e.model == model and e.train == train]
    if not candidates:
        return None
    digest = data_sha256(images, labels)
    for e in candidates:
        if e.data_sha256 == digest:
            return Reference(e, load(e))
    return None


def load(e: Entry) -> dict[str, torch.Tensor]:
    """The entry's tensors, after its file's bytes are found to be the ones the manifest names."""
    try:
        blob = e.path.read_bytes()
    except OSError as err:
        raise ReferenceError(f"{e.path}: the reference weights of {e.model} are missing "
                             f"({err}); reinstall the package, or pass --retrain") from err
    if hashlib.sha256(blob).hexdigest() != e.sha256:
        raise ReferenceError(f"{e.path}: the reference weights of {e.model} are damaged (their "
                             "sha256 is not the manifest's); reinstall the package, or pass "
                             "--retrain")
    return state_from_bytes(blob, what=f"reference weights in {e.path}")
