"""Every codec on a state_dict the project never saw (issue 10): float32, float16, bfloat16 and
float64 weights, BatchNorm's buffers, int64 position ids, bool, uint8/int8/int16/int32 tensors,
0-d and empty tensors. The rebuilt state_dict has the same names, shapes and dtypes in the same
order; integer and bool tensors come back exactly; a lossless codec gives back every bit; a lossy
one codes float64 in float32 and casts back. Codecs that train on the task get a Finetuner of a
module that holds all of these, through the public API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaecompress
from test_codec_contract import TINY_SETTINGS, _all_codecs
from vaecompress.codecs import REGISTRY


class Mixed(nn.Module):
    """A 4-class classifier whose tensors span every dtype a checkpoint may hold."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)

        def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.3).to(dtype)

        self.fc = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.w16 = nn.Parameter(randn(16, 16, dtype=torch.float16))
        self.wbf = nn.Parameter(randn(16, 16, dtype=torch.bfloat16))
        self.w64 = nn.Parameter(randn(4, 16, dtype=torch.float64))  # float64 values, not casts
        self.b64 = nn.Parameter(randn(4, dtype=torch.float64))
        self.scale = nn.Parameter(torch.tensor(1.25))
        self.register_buffer("position_ids", torch.arange(16)[None])
        self.register_buffer("mask", torch.arange(16) % 5 != 0)
        self.register_buffer("u8", torch.arange(250, 256, dtype=torch.uint8))
        self.register_buffer("i8", torch.tensor([-128, 0, 127], dtype=torch.int8))
        self.register_buffer("i16", torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16))
        self.register_buffer("i32", torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32))
        self.register_buffer("big", torch.tensor([2**62 + 1, -(2**63)], dtype=torch.int64))
        self.register_buffer("step", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("empty_bf", torch.zeros(2, 0, dtype=torch.bfloat16))
        self.register_buffer("empty_i", torch.zeros(0, dtype=torch.int64))
        with torch.no_grad():
            self.bn.running_mean.copy_(randn(16) * 0.1)
            self.bn.running_var.copy_(1 + randn(16).abs())
            self.bn.num_batches_tracked.fill_(1234)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.fc(x)))[:, self.position_ids[0]] * self.mask
        h = torch.relu(h @ self.w16.float().T)
        h = torch.relu(h @ self.wbf.float().T)
        return ((h.double() @ self.w64.T + self.b64) * self.scale).float()


def mixed_state() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in Mixed().state_dict().items()}


def mixed_finetuner() -> vaecompress.Finetuner:
    net = Mixed()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g)
    with torch.no_grad():
        y = net.eval()(x).argmax(1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]  # a list, cycled
    return vaecompress.Finetuner(vaecompress.ModuleLoss(net, F.cross_entropy), batches)


@pytest.mark.parametrize("codec", _all_codecs())
def test_every_codec_rebuilds_names_shapes_dtypes_and_integers(codec: str) -> None:
    state = mixed_state()
    cls = REGISTRY[codec]
    finetune = mixed_finetuner() if cls.uses_task else None
    res = vaecompress.compress(state, codec, ctx=vaecompress.CodecContext(progress=False),
                               finetune=finetune, **TINY_SETTINGS.get(codec, {}))
    out = vaecompress.decompress(res.data, res.externals)
    assert list(out) == list(state)
    for k, v in state.items():
        assert (out[k].shape, out[k].dtype) == (v.shape, v.dtype), k
        if not v.is_floating_point() or cls.lossless:
            assert torch.equal(out[k], v), k
        else:
            assert bool(torch.isfinite(out[k]).all()), k
    if not cls.lossless:  # float64 is coded in float32 and cast back
        for k in ("w64", "b64"):
            assert torch.equal(out[k], out[k].float().double()), k
        assert not torch.equal(state["w64"], state["w64"].float().double())


def test_float64_error_is_that_of_float32_for_the_tensors_kept_as_floats() -> None:
    """int8 keeps 1-D tensors as float32: the float64 bias loses exactly its extra digits."""
    state = mixed_state()
    out = vaecompress.decompress(vaecompress.compress(state, "int8").data)
    assert torch.equal(out["b64"], state["b64"].float().double())
    err = float((out["w64"] - state["w64"]).abs().max())
    assert 0 < err <= float(state["w64"].abs().max()) / 127 + 1e-6


def test_finetuner_defaults_and_refusals() -> None:
    ft = mixed_finetuner()
    assert ft.steps_per_epoch == 3  # the list's length
    assert ft.frozen == {"bn.running_mean", "bn.running_var", "empty", "empty_bf"}
    stream = ft.batches()
    first = [next(stream) for _ in range(4)]
    assert first[3][0] is first[0][0]  # cycled
    endless = vaecompress.Finetuner(ft.loss, lambda: iter([]))
    assert endless.steps_per_epoch == 100
    with pytest.raises(vaecompress.UserError, match="one-shot"):
        vaecompress.Finetuner(ft.loss, iter([(1, 2)]))
    with pytest.raises(vaecompress.UserError, match="empty"):
        vaecompress.Finetuner(ft.loss, [])
    with pytest.raises(vaecompress.UserError, match="empty"):
        next(vaecompress.Finetuner(ft.loss, [], steps_per_epoch=5).batches())
    with pytest.raises(vaecompress.UserError, match="steps_per_epoch"):
        vaecompress.Finetuner(ft.loss, [(1, 2)], steps_per_epoch=0)


def test_module_loss_casts_to_the_module_dtypes_and_differentiates_batchnorm() -> None:
    net = Mixed().eval()
    loss = vaecompress.ModuleLoss(net, F.cross_entropy)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    state = {k: (v.detach().float().requires_grad_(True) if v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    value = loss(state, (x, y))
    with torch.no_grad():
        assert math.isclose(float(value), float(F.cross_entropy(net(x), y)), rel_tol=1e-5)
    value.backward()
    for k in ("fc.weight", "w16", "w64", "bn.running_mean", "bn.running_var"):
        assert state[k].grad is not None and float(state[k].grad.abs().sum()) > 0, k
    assert net.fc.weight.grad is None  # the loss runs a private copy of the module


def test_what_no_codec_can_store_is_refused_before_the_work() -> None:
    w = torch.randn(4, 4)
    for state, fragment in [({"w": w, "z": torch.zeros(2, dtype=torch.complex64)},
                             "'z' has dtype complex64"),
                            ({"w": w, "f8": torch.zeros(2).to(torch.float8_e4m3fn)},
                             "'f8' has dtype float8_e4m3fn"),
                            ({"w": w, "epoch": 3}, "'epoch' is a int, not a tensor"),
                            ({"w": w, "": w}, "must be a string of 1 to 1024")]:
        with pytest.raises(vaecompress.UserError, match=fragment):
            vaecompress.compress(state, "zstd")
    big = {"w": w, "running_var": torch.tensor([1e5, 2.0])}  # beyond float16's range
    with pytest.raises(vaecompress.UserError, match="float16's range"):
        vaecompress.compress(big, "deep-compression", ctx=vaecompress.CodecContext(
            progress=False))
    out = vaecompress.decompress(vaecompress.compress(
        big, "deep-compression", ctx=vaecompress.CodecContext(progress=False),
        bias_dtype="float32").data)
    assert torch.equal(out["running_var"], big["running_var"])
