"""1-D k-means, and weight tensors described as indices into a codebook.

`kmeans_1d` uses linear initialization between min and max (as in Han et al. 2016) and a fixed
number of Lloyd iterations, so it is deterministic without any seed. `Clustered` describes a
tensor as (positions, cluster index) into a named codebook; `reconstruct` rebuilds it exactly as
a decoder does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vaecompress.coding.floats import numel


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float32 ascending, index int64 of each value) for 1-D data.

    In one dimension the nearest centroid is found by bisecting the midpoints of the sorted
    centroids, so each Lloyd step is O(n log k). An empty cluster keeps its centroid.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    k = max(1, min(k, x.size))
    lo, hi = float(x.min()), float(x.max())
    centroids = np.linspace(lo, hi, k) if k > 1 else np.array([(lo + hi) / 2])
    for _ in range(iters):
        idx = _nearest(x, centroids)
        sums = np.bincount(idx, weights=x, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    # The stored centroids are float32: assign against exactly those values.
    c32 = np.sort(centroids.astype(np.float32))
    return c32, _nearest(x, c32.astype(np.float64))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, x).astype(np.int64)


def index_bits(k: int) -> int:
    """Bits per packed index into a codebook of `k` entries."""
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


@dataclass
class Clustered:
    """A weight tensor as (positions, cluster index) into a codebook; the rest is zero."""

    shape: list[int]
    index: np.ndarray  # int64, cluster of each coded weight
    book: str  # key of its codebook
    positions: np.ndarray | None = None  # flat positions of the coded weights; None = all


def reconstruct(cl: Clustered, codebooks: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The float32 tensor a decoder rebuilds; the encoder reports exactly this."""
    values = codebooks[cl.book].astype(np.float32)[cl.index]
    if cl.positions is None:
        return torch.from_numpy(values).reshape(cl.shape)  # a new array: no copy needed
    full = np.zeros(numel(cl.shape), dtype=np.float32)
    full[cl.positions] = values
    return torch.from_numpy(full).reshape(cl.shape)
