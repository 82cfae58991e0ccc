"""Tests for vaecompress.params.vector: exact flatten/unflatten and chunk/unchunk."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vaecompress.errors import UserError
from vaecompress.params.vector import (
    Chunking,
    ParamLayout,
    TensorSpec,
    chunk,
    chunk_tensors,
    dtype_from_name,
    dtype_name,
    flatten,
    is_float_dtype,
    layout_of,
    unchunk,
    unchunk_tensors,
    unflatten,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)  # brings an int64 buffer: num_batches_tracked
        self.lstm = nn.LSTM(16, 12, num_layers=2)
        self.fc = nn.Linear(12, 10)


def net_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        # Values that would not survive a careless round trip through fewer bits.
        net.fc.weight[0, :4] = torch.tensor([1e-38, -3.4e38, 1.0 + 2**-23, float("inf")])
        net.fc.bias[0] = float("nan")
    net.bn.num_batches_tracked.fill_(123_456_789)
    return net.state_dict()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    # torch.equal treats NaN != NaN; compare the raw bits instead.
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


# ---------------------------------------------------------------- layout


def test_layout_order_and_float_only() -> None:
    state = net_state()
    full = layout_of(state)
    assert full.names == tuple(state.keys())
    floats = layout_of(state, float_only=True)
    assert "bn.num_batches_tracked" not in floats.names
    assert floats.names == tuple(n for n in state if state[n].is_floating_point())
    assert floats == full.float_only()
    assert floats.numel == sum(t.numel() for t in state.values() if t.is_floating_point())
    weights_only = layout_of(state, float_only=True, select=lambda n, t: n.endswith("weight"))
    assert all(n.endswith("weight") for n in weights_only.names) and weights_only.names


def test_layout_json_round_trip() -> None:
    layout = layout_of(net_state())
    obj = json.loads(json.dumps(layout.to_json()))
    assert ParamLayout.from_json(obj) == layout
    assert obj[-1] == {"name": "fc.bias", "shape": [10], "dtype": "float32"}
    assert {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"} in obj
    spec = TensorSpec("s", (), "bool")
    assert spec.numel == 1 and TensorSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "obj",
    [
        {"name": "x"},
        [{"name": "x", "shape": [2]}],
        [{"name": "x", "shape": "2", "dtype": "float32"}],
        [{"name": "x", "shape": [-1], "dtype": "float32"}],
        [{"name": "x", "shape": [2.0], "dtype": "float32"}],
        [{"name": "x", "shape": [2], "dtype": "float"}],
        [{"name": "x", "shape": [2], "dtype": "Tensor"}],
        [{"name": 3, "shape": [2], "dtype": "float32"}],
        [{"name": "x", "shape": [2], "dtype": "float32"}] * 2,
        ["x"],
    ],
)
def test_layout_from_json_malformed(obj: object) -> None:
    with pytest.raises(UserError):
        ParamLayout.from_json(obj)


def test_dtype_helpers() -> None:
    assert is_float_dtype("float32") and is_float_dtype("bfloat16") and is_float_dtype("float16")
    assert not is_float_dtype("int64") and not is_float_dtype("bool")
    assert not is_float_dtype("complex64")
    assert dtype_from_name("bfloat16") is torch.bfloat16
    assert dtype_name(torch.float) == "float32"
    with pytest.raises(UserError, match="unknown dtype"):
        dtype_from_name("nn")


def test_layout_rejects_non_tensor() -> None:
    with pytest.raises(UserError, match="not a tensor"):
        layout_of({"a": torch.zeros(2), "b": 3})  # type: ignore[dict-item]


# ---------------------------------------------------------------- flatten


def test_flatten_unflatten_bit_exact_float32() -> None:
    state = net_state()
    layout = layout_of(state, float_only=True)
    vec = flatten(state, layout)
    assert vec.dtype == torch.float32 and vec.dim() == 1 and vec.numel() == layout.numel
    back = unflatten(vec, layout)
    assert list(back) == list(layout.names)
    for name, t in back.items():
        assert same_bits(t, state[name]), name
        assert torch.equal(t.nan_to_num(), state[name].nan_to_num()), name
    # The model loads its own weights back (the int buffer is kept raw, as codecs do).
    net = Net()
    net.load_state_dict({**back, "bn.num_batches_tracked": state["bn.num_batches_tracked"]})
    for name, t in net.state_dict().items():
        assert same_bits(t, state[name]), name


def test_flatten_order_follows_layout() -> None:
    state = {"b": torch.tensor([3.0, 4.0]), "a": torch.tensor([[1.0], [2.0]])}
    vec = flatten(state, layout_of(state))
    assert vec.tolist() == [3.0, 4.0, 1.0, 2.0]


def test_outputs_do_not_alias() -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    layout = layout_of(state)
    vec = flatten(state, layout)
    vec[0] = 100.0
    assert state["a"][0, 0] == 0.0
    back = unflatten(vec, layout)
    back["a"][0, 0] = -1.0
    assert vec[0] == 100.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    state = {
        "w": torch.randn(7, 5).to(dtype),
        "tiny": torch.tensor([6e-8, -0.0, 65504.0 if dtype == torch.float16 else 3e38]).to(dtype),
        "f32": torch.randn(3),
    }
    layout = layout_of(state)
    assert [s.dtype for s in layout.specs] == [dtype_name(dtype), dtype_name(dtype), "float32"]
    back = unflatten(flatten(state, layout), layout)
    for name, t in state.items():
        assert back[name].dtype == t.dtype
        assert same_bits(back[name], t), name


def test_flatten_errors() -> None:
    state = {"a": torch.zeros(2, 3), "n": torch.zeros(2, dtype=torch.int64)}
    layout = layout_of(state, float_only=True)
    with pytest.raises(UserError, match=r"tensor 'a' has shape \(3, 2\), expected \(2, 3\)"):
        flatten({"a": torch.zeros(3, 2)}, layout)
    with pytest.raises(UserError, match="'a' is missing"):
        flatten({"b": torch.zeros(2, 3)}, layout)
    with pytest.raises(UserError, match="has dtype float16, expected float32"):
        flatten({"a": torch.zeros(2, 3, dtype=torch.float16)}, layout)
    with pytest.raises(UserError, match="only floating-point"):
        flatten(state, layout_of(state))


def test_unflatten_errors() -> None:
    layout = layout_of({"a": torch.zeros(2, 3)})
    with pytest.raises(UserError, match="has 5 elements, the layout needs 6"):
        unflatten(torch.zeros(5), layout)
    with pytest.raises(UserError, match="1-D"):
        unflatten(torch.zeros(2, 3), layout)
    with pytest.raises(UserError, match="floating-point"):
        unflatten(torch.zeros(6, dtype=torch.int32), layout)


def test_empty_layout() -> None:
    layout = layout_of({})
    vec = flatten({}, layout)
    assert vec.shape == (0,) and vec.dtype == torch.float32
    assert unflatten(vec, layout) == {}


# ---------------------------------------------------------------- chunk


@pytest.mark.parametrize(
    ("numel", "size", "n", "pad"),
    [
        (5000, 2048, 3, 1144),
        (4096, 2048, 2, 0),
        (100, 2048, 1, 1948),
        (1, 1, 1, 0),
        (0, 2048, 0, 0),
        (2049, 2048, 2, 2047),
    ],
)
def test_chunk_unchunk_exact(numel: int, size: int, n: int, pad: int) -> None:
    torch.manual_seed(numel)
    vec = torch.randn(numel)
    chunks, ch = chunk(vec, size)
    assert ch == Chunking(chunk_size=size, n_chunks=n, pad=pad, numel=numel)
    assert chunks.shape == (n, size) and chunks.dtype == vec.dtype
    flat = chunks.reshape(-1)
    assert torch.equal(flat[:numel], vec)
    assert torch.count_nonzero(flat[numel:]) == 0 and flat[numel:].numel() == pad
    assert torch.equal(unchunk(chunks, ch), vec)


def test_chunk_default_size_and_json() -> None:
    _, ch = chunk(torch.ones(5000))
    assert ch.chunk_size == 2048 and ch.pad == 1144
    assert Chunking.from_json(json.loads(json.dumps(ch.to_json()))) == ch


def test_unchunk_ignores_padding_values() -> None:
    vec = torch.arange(10, dtype=torch.float32)
    chunks, ch = chunk(vec, 4)
    decoded = chunks.clone()
    decoded[-1, -2:] = 7.0  # a decoder need not reproduce the zero padding
    assert torch.equal(unchunk(decoded, ch), vec)


def test_chunk_errors() -> None:
    with pytest.raises(UserError, match="chunk_size"):
        chunk(torch.zeros(4), 0)
    with pytest.raises(UserError, match="1-D"):
        chunk(torch.zeros(2, 2), 2)
    _, ch = chunk(torch.zeros(5000), 2048)
    with pytest.raises(UserError, match=r"shape \(2, 2048\), expected \(3, 2048\)"):
        unchunk(torch.zeros(2, 2048), ch)
    for bad in (
        {"chunk_size": 2048, "n_chunks": 3, "pad": 1000, "numel": 5000},
        {"chunk_size": 0, "n_chunks": 0, "pad": 0, "numel": 0},
        {"chunk_size": 2048, "n_chunks": 3, "pad": 1144},
        {"chunk_size": 2048.0, "n_chunks": 3, "pad": 1144, "numel": 5000},
    ):
        with pytest.raises(UserError):
            Chunking.from_json(bad)


def test_full_pipeline_on_module() -> None:
    state = net_state(3)
    layout = layout_of(state, float_only=True)
    chunks, ch = chunk(flatten(state, layout), 256)
    back = unflatten(unchunk(chunks, ch), layout)
    for name, t in back.items():
        assert same_bits(t, state[name]), name


def test_chunk_tensors_pads_each_tensor_on_its_own() -> None:
    sizes = [5, 0, 8, 1]
    vec = torch.arange(1, sum(sizes) + 1, dtype=torch.float32)
    chunks, ch = chunk_tensors(vec, sizes, 4)
    assert ch == Chunking(chunk_size=4, n_chunks=2 + 0 + 2 + 1, pad=0, numel=20)
    assert chunks.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 8, 9], [10, 11, 12, 13],
                               [14, 0, 0, 0]]
    decoded = chunks.clone()
    decoded[1, 1:] = 7.0  # whatever a decoder puts in the padding is dropped
    assert torch.equal(unchunk_tensors(decoded, ch, sizes), vec)
    with pytest.raises(UserError, match="does not match"):
        unchunk_tensors(chunks, ch, [5, 8, 5])
    with pytest.raises(UserError, match="14 elements"):
        chunk_tensors(vec[:-1], sizes, 4)
