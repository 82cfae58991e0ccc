"""Tests for the baseline codecs (zstd, int8/int4, prune, kmeans, deep-compression) and their
shared entropy coder, on small synthetic state_dicts and a tiny hand-built finetuner."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vaecompress.api import compress, decompress
from vaecompress.codecs.base import CodecContext, Finetuner, make_codec
from vaecompress.codecs.deep_compression import DeepCompressionCodec, layer_sparsities
from vaecompress.coding.entropy import decode_symbols, encode_symbols, pack_uint, unpack_uint
from vaecompress.coding.kmeans import kmeans_1d
from vaecompress.coding.sparse import decode_positions, encode_positions, magnitude_masks
from vaecompress.errors import FormatError
from vaecompress.format import loads

BASELINES = ["zstd", "int8", "int4", "prune", "kmeans", "deep-compression"]


# --------------------------------------------------------------------------- fixtures


class TinyTask:
    """A 16-32-4 MLP on random data labelled by a random linear teacher."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.x = torch.randn(256, 16, generator=g)
        self.y = (self.x @ torch.randn(16, 4, generator=g)).argmax(1)
        self.state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def loss(self, state: Mapping[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]
             ) -> torch.Tensor:
        xb, yb = batch
        return F.cross_entropy(functional_call(self.net, dict(state), (xb,)), yb)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(1)
        while True:
            order = torch.randperm(len(self.x), generator=gen)
            for i in range(0, len(self.x), 32):
                idx = order[i : i + 32]
                yield self.x[idx], self.y[idx]

    def finetuner(self) -> Finetuner:
        return Finetuner(loss=self.loss, batches=self.batches, steps_per_epoch=8)

    def ctx(self) -> CodecContext:
        return CodecContext(progress=False, finetune=self.finetuner())


def _gaussian(shape: tuple[int, ...], seed: int = 0, std: float = 0.1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


# ----------------------------------------------------------------------- entropy coder


@pytest.mark.parametrize("symbols", [
    np.zeros(0, dtype=np.int64),
    np.array([7]),
    np.full(1000, 3),
    np.array([0, 1]),
    np.random.default_rng(0).integers(0, 32, 5000),
    np.random.default_rng(1).geometric(0.1, 20000) - 1,
    np.random.default_rng(2).integers(0, 2**16, 300),
    np.random.default_rng(3).integers(0, 2**16, 50_000),
    np.array([0, 2**32 - 1, 5]),
    np.random.default_rng(4).choice([0, 3, 5_000_000], 20_000),
    # A run of the smallest symbol at the end is coded first, from the coder's empty state,
    # where it costs nothing: fewer words than the reader's bound allows for the count. Such a
    # stream is stored packed, not written as one the reader refuses (it was, before).
    np.array([1] * 1000 + [2] * 5 + [0] * 1000),
], ids=["empty", "one", "constant", "two", "uniform32", "geometric", "sparse-2^16", "dense-2^16",
        "max", "few-far-apart", "free-run"])
def test_entropy_round_trip(symbols: np.ndarray) -> None:
    data = encode_symbols(symbols)
    out = decode_symbols(data, len(symbols))
    # the narrowest unsigned type that holds the stream's symbols (issue 21: no int64 copies)
    top = int(symbols.max(initial=0))
    assert out.dtype == np.dtype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16
                                 else np.uint32)
    np.testing.assert_array_equal(out, symbols)


@pytest.mark.parametrize("symbols", [
    np.random.default_rng(5).geometric(0.2, 10_000) - 1,  # a small alphabet: counted
    np.random.default_rng(6).choice([1, 7, 9_000_000], 10_000),  # far apart: sorted
])
def test_entropy_histogram_is_that_of_sorting(symbols: np.ndarray) -> None:
    """Both ways the coder takes its table (counting a small alphabet, sorting a wide one) give
    the distinct symbols, their counts and each symbol's rank as sorting does."""
    from vaecompress.coding.entropy import _histogram

    s = symbols.astype(np.int64)
    present, counts, ranks = _histogram(s, int(s.max()))
    want, want_counts = np.unique(s, return_counts=True)
    np.testing.assert_array_equal(present, want)
    np.testing.assert_array_equal(counts, want_counts)
    got = ranks()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.searchsorted(want, s))


def test_entropy_codes_skewed_streams_near_their_entropy() -> None:
    p = np.array([0.7, 0.2, 0.05, 0.05])
    s = np.random.default_rng(0).choice(4, size=20000, p=p)
    bits = -(p * np.log2(p)).sum() * len(s)
    assert len(encode_symbols(s, 4)) < 1.03 * bits / 8 + 64
    # The stream is self-contained and identical on every call.
    assert encode_symbols(s, 4) == encode_symbols(s.copy(), 4)


def test_entropy_rejects_bad_input_and_wrong_count() -> None:
    with pytest.raises(ValueError):
        encode_symbols(np.array([4]), alphabet_size=4)
    with pytest.raises(ValueError):
        encode_symbols(np.array([-1, 2]))
    data = encode_symbols(np.arange(10))
    with pytest.raises(FormatError):
        decode_symbols(data, 11)
    with pytest.raises(FormatError):
        decode_symbols(data[:3], 10)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 12, 16, 31, 32])
def test_pack_uint_round_trip(bits: int) -> None:
    v = np.random.default_rng(bits).integers(0, 2**bits, 101, dtype=np.uint64)
    data = pack_uint(v, bits)
    assert len(data) == (101 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_uint(data, bits, 101), v.astype(np.int64))


def test_int4_packs_two_values_per_byte() -> None:
    assert pack_uint(np.array([1, 2, 3]), 4) == bytes([0x12, 0x30])


# ------------------------------------------------------------------------------- zstd


def test_zstd_is_bit_exact_for_every_float_dtype() -> None:
    state = {"a": _gaussian((33, 7)), "h": _gaussian((5,)).half(), "b": _gaussian((4,)).bfloat16(),
             "d": _gaussian((3, 3)).double(), "s": torch.tensor(1.5), "n": torch.tensor(3)}
    out = decompress(compress(state, "zstd").data)
    assert list(out) == list(state)
    for k, v in state.items():
        assert out[k].dtype == v.dtype
        assert torch.equal(out[k].view(-1).view(torch.uint8) if v.is_floating_point() else out[k],
                           v.view(-1).view(torch.uint8) if v.is_floating_point() else v)


# ------------------------------------------------------------------------ quantization


def _scales(x: torch.Tensor, bits: int, scheme: str, per_channel: bool) -> torch.Tensor:
    g = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    if scheme == "affine":
        s = (g.amax(1) - g.amin(1)) / (2**bits - 1)
    else:
        s = g.abs().amax(1) / (2 ** (bits - 1) - 1)
    return s.repeat_interleave(g.shape[1]).reshape(x.shape) if per_channel else s.expand(x.shape)


@pytest.mark.parametrize("codec,bits", [("int8", 8), ("int4", 4)])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
def test_quant_error_is_at_most_half_a_step(codec: str, bits: int, granularity: str,
                                            scheme: str) -> None:
    # Rows with very different ranges: per-channel scales must follow them.
    w = _gaussian((24, 3, 3, 3)) * torch.logspace(-2, 0, 24).reshape(24, 1, 1, 1)
    state = {"conv.weight": w, "conv.bias": _gaussian((24,), 1)}
    out = decompress(compress(state, codec, granularity=granularity, scheme=scheme).data)
    bound = _scales(w, bits, scheme, granularity == "channel") / 2
    assert ((out["conv.weight"] - w).abs() <= bound * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(out["conv.bias"], state["conv.bias"])  # bias_dtype float32: kept


def test_quant_float16_scales_keep_the_bound_and_quantized_biases() -> None:
    w = _gaussian((16, 40))
    out = decompress(compress({"w": w, "b": _gaussian((16,), 2)}, "int8", scale_dtype="float16",
                              bias_dtype="quantize").data)
    bound = _scales(w, 8, "affine", True) / 2
    assert ((out["w"] - w).abs() <= bound * 1.01 + 1e-6).all()  # float16 scales round up a little
    assert not torch.equal(out["b"], _gaussian((16,), 2))


def test_int4_file_is_about_half_of_int8_and_entropy_coding_helps() -> None:
    state = {"w": _gaussian((256, 256)), "b": _gaussian((256,), 1)}
    sizes = {c: compress(state, c).accounting.payload_bytes for c in ("int8", "int4")}
    assert 0.45 < sizes["int4"] / sizes["int8"] < 0.6
    packed = compress(state, "int8", granularity="tensor").accounting
    coded = compress(state, "int8", granularity="tensor", entropy=True).accounting
    assert coded.payload_bytes < 0.9 * packed.payload_bytes  # Gaussian levels are far from uniform
    assert torch.equal(decompress(compress(state, "int8", granularity="tensor").data)["w"],
                       decompress(compress(state, "int8", granularity="tensor",
                                           entropy=True).data)["w"])


# ---------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_has_exactly_the_requested_sparsity(scope: str) -> None:
    state = {"a.weight": _gaussian((40, 30)), "a.bias": _gaussian((40,), 1),
             "b.weight": _gaussian((10, 40), 2, std=0.5)}
    out = decompress(compress(state, "prune", sparsity=0.7, scope=scope).data)
    zeros = {k: int((out[k] == 0).sum()) for k in ("a.weight", "b.weight")}
    if scope == "layer":
        assert zeros == {"a.weight": 840, "b.weight": 280}
    else:
        assert sum(zeros.values()) == round(0.7 * 1600)
        assert zeros["a.weight"] / 1200 > zeros["b.weight"] / 400  # smaller weights pruned more
    masks = magnitude_masks({k: state[k] for k in zeros}, 0.7, scope)
    for k in zeros:  # the mask is exactly the magnitude mask, survivors exact (float32 values)
        assert torch.equal(out[k] != 0, masks[k])
        assert torch.equal(out[k][masks[k]], state[k][masks[k]])
    assert torch.equal(out["a.bias"], state["a.bias"])


def test_prune_finetune_keeps_zeros_zero() -> None:
    task = TinyTask()
    res = compress(task.state, "prune", ctx=task.ctx(), sparsity=0.6, scope="layer",
                   finetune_epochs=2, lr=1e-2)
    out = decompress(res.data)
    masks = magnitude_masks({k: v for k, v in task.state.items() if v.dim() >= 2}, 0.6)
    for k, m in masks.items():
        assert torch.equal(out[k] != 0, m)
        assert not torch.equal(out[k][m], task.state[k][m])  # the survivors were retrained
    assert len(res.report["finetune_loss"]) > 0
    note = compress(task.state, "prune", sparsity=0.6).report.get("note", "")
    assert "without fine-tuning" in note


def test_prune_bytes_shrink_with_sparsity_and_both_encodings_are_used() -> None:
    state = {"w": _gaussian((128, 128))}
    sizes, modes = [], []
    for sp in (0.3, 0.6, 0.9, 0.99):
        res = compress(state, "prune", sparsity=sp, zstd=False)
        sizes.append(res.accounting.payload_bytes)
        modes.append(res.report["modes"][0])
    assert sizes == sorted(sizes, reverse=True)
    assert modes[0] == "m" and modes[-1].startswith("d")
    assert compress(state, "prune", sparsity=0.9).accounting.payload_bytes < sizes[2]


def test_positions_round_trip() -> None:
    rng = np.random.default_rng(0)
    for density in (0.0, 0.001, 0.05, 0.5, 1.0):
        mask = rng.random(70_000) < density
        mode, data = encode_positions(mask)
        np.testing.assert_array_equal(decode_positions(mode, data, mask.size, int(mask.sum())),
                                      mask)


# ----------------------------------------------------------------------------- k-means


def test_kmeans_uses_at_most_2_to_the_bits_values() -> None:
    state = {"a.weight": _gaussian((50, 40)), "a.bias": _gaussian((50,), 1),
             "c.weight": _gaussian((8, 4, 3, 3), 2)}
    for bits in (2, 5):
        for scope in ("tensor", "global"):
            res = compress(state, "kmeans", bits=bits, scope=scope, entropy=scope == "global")
            out = decompress(res.data)
            assert len(torch.unique(out["a.weight"])) <= 2**bits
            assert len(torch.unique(out["c.weight"])) <= 2**bits
            both = torch.cat([out["a.weight"].reshape(-1), out["c.weight"].reshape(-1)])
            assert scope == "tensor" or len(torch.unique(both)) <= 2**bits
            assert torch.equal(out["a.bias"], state["a.bias"])
    # 5-bit indices: about 5/32 of the float32 size, plus the small codebook.
    packed = compress({"w": _gaussian((200, 200))}, "kmeans").accounting.payload_bytes
    assert packed < 200 * 200 * 5 / 8 + 32 * 4 + 16


def test_kmeans_1d_is_deterministic_and_exact_on_few_values() -> None:
    x = np.repeat(np.array([-1.0, 0.25, 3.0], dtype=np.float32), 50)
    c, idx = kmeans_1d(x, 4, 30)
    np.testing.assert_array_equal(c[idx], x)
    y = np.random.default_rng(0).standard_normal(5000)
    a, b = kmeans_1d(y, 32), kmeans_1d(y, 32)
    np.testing.assert_array_equal(a[0], b[0])
    assert (np.diff(a[0]) > 0).all()


def test_kmeans_centroid_finetuning_keeps_the_codebook() -> None:
    task = TinyTask()
    plain = decompress(compress(task.state, "kmeans", bits=3).data)
    tuned = decompress(compress(task.state, "kmeans", ctx=task.ctx(), bits=3, finetune_epochs=2,
                                lr=1e-2).data)
    for k in ("0.weight", "2.weight"):
        assert len(torch.unique(tuned[k])) <= 8
        assert not torch.equal(plain[k], tuned[k])


# --------------------------------------------------------------------- deep compression


def test_deep_compression_decodes_to_its_own_quantized_weights() -> None:
    task = TinyTask()
    settings = {"sparsity": 0.8, "prune_epochs": 1.0, "prune_stages": 2, "quant_epochs": 1.0,
                "prune_lr": 1e-2, "quant_lr": 1e-2}
    codec = make_codec("deep-compression", **settings)
    assert isinstance(codec, DeepCompressionCodec)
    expected = codec.quantize(task.state, task.ctx()).state()
    res = compress(task.state, "deep-compression", ctx=task.ctx(), **settings)
    out = decompress(res.data)
    for k, v in expected.items():
        assert torch.equal(out[k], v), k
    targets = layer_sparsities({"0.weight": 512, "2.weight": 128}, 0.8,
                               codec.settings.size_exponent)
    for k, sp in targets.items():
        assert int((out[k] == 0).sum()) == round(sp * out[k].numel())
        assert len(torch.unique(out[k])) <= 2**5 + 1  # the centroids and the pruned zeros
    assert targets["2.weight"] < targets["0.weight"] == pytest.approx(0.8)
    assert not torch.equal(out["0.bias"], task.state["0.bias"])  # biases retrained too
    assert res.report["bits_per_survivor"] > 0


def test_deep_compression_beats_int8_on_a_prunable_tensor() -> None:
    # Mostly tiny weights with a few large ones: what pruning is for.
    w = _gaussian((256, 256), std=0.01)
    big = _gaussian((256, 32), 1, std=1.0)
    w[:, ::8] = big.sign() * (1 + big.abs())
    state = {"fc.weight": w, "fc.bias": _gaussian((256,), 2)}
    dc = compress(state, "deep-compression", sparsity=0.875)
    assert dc.report.get("note")  # no finetuner: a note, not an error
    assert dc.accounting.ratio_honest > 2 * compress(state, "int8").accounting.ratio_honest
    out = decompress(dc.data)["fc.weight"]
    assert torch.equal(out[:, 1::8], torch.zeros(256, 32))
    assert (out[:, ::8] - w[:, ::8]).abs().mean() < 0.1  # 32 levels over [-5, 5]


def test_conv_kernels_get_conv_bits() -> None:
    state = {"c.weight": _gaussian((16, 8, 3, 3)), "f.weight": _gaussian((64, 64), 1)}
    out = decompress(compress(state, "deep-compression", sparsity=0.5, size_exponent=0.0,
                              conv_bits=3, fc_bits=2).data)
    assert 2**2 + 1 < len(torch.unique(out["c.weight"])) <= 2**3 + 1
    assert len(torch.unique(out["f.weight"])) <= 2**2 + 1


# ------------------------------------------------------------------------ the contract


# The contract itself (round trip, dtypes, passthrough, determinism, with a finetuner for the
# codecs that use one) runs over the whole registry in test_codec_contract.py.


def test_decoders_reject_a_damaged_codec_state() -> None:
    from vaecompress.format import dumps

    state = {"w": _gaussian((20, 20)), "b": _gaussian((20,), 1)}
    for codec in BASELINES:
        c = loads(compress(state, codec).data)
        c.codec_state = {}
        with pytest.raises(FormatError):
            decompress(dumps(c))


@pytest.mark.slow
def test_deep_compression_on_real_fnn() -> None:
    """Trains on real MNIST: the FNN must lose under a point at a ratio of 25 or more."""
    from vaecompress.data import load_mnist
    from vaecompress.tasks.mnist import accuracy, make_finetuner
    from vaecompress.zoo.train import TrainConfig, train_model

    train, test = load_mnist()
    model = train_model("fnn", train, TrainConfig(epochs=3), progress=False).model
    base = accuracy(model, test)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = CodecContext(progress=False, finetune=make_finetuner("fnn", train))
    res = compress(state, "deep-compression", ctx=ctx)
    model.load_state_dict(decompress(res.data))
    assert res.accounting.ratio_honest >= 25
    assert accuracy(model, test) > base - 1.0


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.uint8])
def test_entropy_stream_does_not_depend_on_the_integer_type(dtype: type) -> None:
    """Narrow integers are coded as they are (no int64 copy of a large tensor): the same
    stream as from int64, in every mode."""
    rng = np.random.default_rng(7)
    for s in (rng.geometric(0.3, 5000) - 1, rng.integers(0, 200, 3000), np.full(50, 9),
              np.array([1] * 1000 + [2] * 5 + [0] * 1000)):
        assert encode_symbols(s.astype(dtype)) == encode_symbols(s.astype(np.int64))


def test_latent_records_do_not_depend_on_the_integer_type() -> None:
    from vaecompress.methods.rd.latents import MAX_LATENT, decode_tensor, encode_tensor

    rng = np.random.default_rng(8)
    z = rng.geometric(0.4, (40, 30)).astype(np.int64) - 2
    z[3] = 0  # a row of zeros: the masks are tried
    step = np.array([0.01], dtype=np.float32)
    rec = encode_tensor(z, step)
    assert encode_tensor(z.astype(np.int32), step) == rec
    # latents whose span needs more than int32 (the widest a reader accepts)
    wide = np.array([[-MAX_LATENT, 0, MAX_LATENT, 5]], dtype=np.int64)
    w, _ = decode_tensor(memoryview(encode_tensor(wide, step)), 0, (1, 4))
    np.testing.assert_array_equal(w, (wide.astype(np.float32) * step[0]))


@pytest.mark.parametrize("codec", ["int8", "int4"])
@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_quantizing_in_slices_writes_the_same_bytes(codec: str, scheme: str, granularity: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantizer's float64 arithmetic made a slice at a time (rows of a channel grid, and
    columns within a row longer than a slice) gives the file of the whole-tensor arithmetic."""
    from vaecompress.codecs import quant

    g = torch.Generator().manual_seed(5)
    state = {"w": torch.randn(37, 53, generator=g), "v": torch.randn(3, 1000, generator=g) * 3,
             "b": torch.randn(11, generator=g)}
    ctx = CodecContext(progress=False)
    settings = {"scheme": scheme, "granularity": granularity, "entropy": codec == "int8"}
    whole = compress(state, codec, ctx=ctx, **settings).data
    for size in (7, 53, 100):
        monkeypatch.setattr(quant, "_SLICE", size)
        assert compress(state, codec, ctx=ctx, **settings).data == whole


def test_quantizing_holds_the_symbols_and_one_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16 MB tensor is quantized in under 8 MB of numpy allocations: one byte a weight for
    its symbols and a slice of float64 (the whole-tensor arithmetic held over 32 MB)."""
    import tracemalloc

    from vaecompress.codecs import quant

    monkeypatch.setattr(quant, "_SLICE", 2**16)
    x = np.random.default_rng(0).standard_normal((1, 2**22), dtype=np.float32)
    tracemalloc.start()
    try:
        q, _, err = quant.quantize_groups(x, 8, "affine", "float32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert q.dtype == np.uint8 and err > 0
    assert peak < 8_000_000
