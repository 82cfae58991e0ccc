"""Error bounds derived from each lossy codec's settings (issue 21: the suite checked the lossy
baselines only by ranges). Each bound follows from how the codec stores a weight, so a decoder
or encoder that drifts fails here whatever the data."""

from __future__ import annotations

import pytest
import torch

from vaecompress.api import compress, decompress


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(24, 40, generator=g) * 0.2,
            "a.bias": torch.randn(24, generator=g) * 0.1,
            "b.weight": torch.randn(10, 24, generator=g) * 0.5 + 0.3,
            "b.bias": torch.randn(10, generator=g) * 0.1}


@pytest.mark.parametrize("codec,bits", [("int8", 8), ("int4", 4)])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_uniform_quantization_error_is_at_most_half_a_step(codec: str, bits: int,
                                                          granularity: str) -> None:
    """affine: 2**bits levels from each group's min to its max; every weight within half a
    level's step (float32 arithmetic: a relative 1e-6 of slack); biases kept as float32."""
    state = _state()
    out = decompress(compress(state, codec, granularity=granularity).data)
    for k, w in state.items():
        if w.dim() < 2:
            assert torch.equal(out[k], w), k
            continue
        x = w.reshape(w.shape[0], -1) if granularity == "channel" else w.reshape(1, -1)
        step = (x.max(1).values - x.min(1).values) / (2**bits - 1)
        err = (out[k].reshape(x.shape) - x).abs()
        assert bool((err <= step[:, None] / 2 * (1 + 1e-6) + 1e-7).all()), k
        assert float(err.max()) > 0  # lossy indeed: the bound is not met by returning w


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_kmeans_rebuilds_each_weight_as_its_nearest_of_2_to_the_bits_centroids(bits: int) -> None:
    """Without fine-tuning, k-means leaves each weight at the centroid nearest to it (Lloyd's
    assignment) among at most 2**bits values per tensor."""
    state = _state()
    out = decompress(compress(state, "kmeans", bits=bits).data)
    for k, w in state.items():
        if w.dim() < 2:
            assert torch.equal(out[k], w), k
            continue
        centroids = torch.unique(out[k])
        assert len(centroids) <= 2**bits, k
        nearest = (w.reshape(-1, 1) - centroids.reshape(1, -1)).abs().min(1).values
        err = (out[k] - w).abs().reshape(-1)
        assert bool((err <= nearest + 1e-6).all()), k


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_prune_zeroes_exactly_the_smallest_and_keeps_the_rest(sparsity: float) -> None:
    """Without a task: exactly round(sparsity * n) of the matrices' weights become zero, the
    smallest in magnitude over all of them (global scope), and every other weight is kept
    bit for bit (float32 values)."""
    state = _state()
    out = decompress(compress(state, "prune", sparsity=sparsity).data)
    mats = [k for k, w in state.items() if w.dim() >= 2]
    n = sum(state[k].numel() for k in mats)
    zeros = sum(int((out[k] == 0).sum()) for k in mats)
    assert zeros == round(sparsity * n)
    largest_pruned = max(float(state[k][out[k] == 0].abs().max()) for k in mats)
    smallest_kept = min(float(state[k][out[k] != 0].abs().min()) for k in mats)
    assert largest_pruned <= smallest_kept
    for k, w in state.items():
        kept = out[k] != 0
        assert torch.equal(out[k][kept], w[kept]), k
        if w.dim() < 2:
            assert torch.equal(out[k], w), k
