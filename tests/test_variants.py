"""The noisy variants: streamed rows equal the materialized ones, and their noise statistics."""

import pytest
import torch

from vaecompress.errors import UserError
from vaecompress.params.variants import NoiseConfig, VariantStream, make_variants


def _chunks(n: int = 7, c: int = 64) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(1))


def test_streamed_rows_equal_materialized_rows():
    chunks, cfg = _chunks(), NoiseConfig()
    train, val = make_variants(chunks, cfg, seed=3)
    stream = VariantStream(chunks, cfg, seed=3)
    assert train.shape == (80 * 7, 64) and val.shape == (20 * 7, 64)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:50]
    assert torch.equal(stream.train[idx], train[idx])
    assert torch.equal(stream.val[torch.arange(len(val))], val)
    assert len(stream.train) == len(train) and len(stream.val) == len(val)


def test_same_seed_same_variants_other_seed_other_noise():
    chunks, cfg = _chunks(), NoiseConfig()
    a, _ = make_variants(chunks, cfg, seed=0)
    b, _ = make_variants(chunks, cfg, seed=0)
    c, _ = make_variants(chunks, cfg, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_statistics(kind):
    n, c = 20, 256
    chunks = _chunks(n, c) * 3.0
    cfg = NoiseConfig(kind=kind, fraction=0.3, scale=0.1)
    train, val = make_variants(chunks, cfg, seed=0)
    noise = torch.cat([train, val]).view(cfg.n_variants, n, c) - chunks
    touched = noise != 0
    assert abs(touched.float().mean().item() - 0.3) < 0.01
    std = 0.1 * float(chunks.std())
    expect = std if kind == "gaussian" else std / 3**0.5  # uniform on [-s, s]: s / sqrt(3)
    assert abs(float(noise[touched].std()) / expect - 1) < 0.02
    assert abs(float(noise[touched].mean())) < 0.02 * std
    # At each position, the variants of one chunk carry independent noise: no two variants
    # are the same, and the correlation between variants is that of independent draws.
    flat = noise.reshape(cfg.n_variants, n * c)
    corr = torch.corrcoef(flat)
    off_diag = corr[~torch.eye(cfg.n_variants, dtype=torch.bool)]
    assert float(off_diag.abs().max()) < 0.1
    for k in range(n):
        rows = noise[:, k]
        assert len(torch.unique(rows, dim=0)) == cfg.n_variants


def test_zero_fraction_gives_the_true_chunks():
    chunks = _chunks()
    train, _ = make_variants(chunks, NoiseConfig(fraction=0.0), seed=0)
    assert torch.equal(train.view(80, *chunks.shape), chunks.expand(80, *chunks.shape))


def test_stream_memory_is_independent_of_the_variant_count():
    chunks = _chunks(300, 2048)  # 2.4 MiB of chunks; 100 variants would be 240 MiB
    s = VariantStream(chunks, NoiseConfig(), seed=0)
    pool = s.windows.untyped_storage().nbytes()
    assert pool <= 2 * chunks.numel() * 4 + 4 * 2048
    assert s.offsets.numel() == 100 * 300


def test_bad_noise_is_a_user_error():
    with pytest.raises(UserError, match="noise kind"):
        VariantStream(_chunks(), NoiseConfig(kind="salt"), seed=0)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        VariantStream(_chunks(), NoiseConfig(), seed=0).train[3]
