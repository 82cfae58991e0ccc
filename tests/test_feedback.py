"""Rounding with error feedback (`methods.rd.feedback`), the linear layers' input statistics it
weighs by (`training.grams`), and `vae-rd`'s warm start rounded with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from test_warm import _Teacher as WarmTeacher  # its loss and batches
from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext, Finetuner
from vaecompress.errors import UserError
from vaecompress.methods.rd.feedback import output_error, round_with_feedback
from vaecompress.training.finetune import ModuleLoss
from vaecompress.training.grams import linear_input_grams


def _correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    """Inputs whose coordinates are strongly correlated (a few directions carry most energy),
    as a transformer's hidden states are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) * torch.logspace(0, -2, dim).unsqueeze(1)
    return torch.randn(n, dim, generator=g) @ mix


def _entropy(z: torch.Tensor) -> float:
    _, counts = np.unique(z.numpy(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_feedback_lowers_the_output_error_at_the_same_step() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    x = _correlated(4096, 48, 1)
    gram = (x.T @ x).double() / len(x)
    step = 0.5
    near = torch.round(w / step)
    fed = round_with_feedback(w, step, gram)
    assert fed.dtype == torch.int8 and fed.shape == w.shape  # the narrowest that holds them
    e_near = output_error(w, near * step, gram)
    e_fed = output_error(w, fed.double() * step, gram)
    assert e_fed < 0.5 * e_near  # over 3 dB less output error
    # on the same grid, at about the same entropy of the latents (what the file costs)
    assert abs(_entropy(fed) - _entropy(near)) < 0.3


def test_uncorrelated_inputs_leave_nearest_rounding() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, 30, generator=g)
    gram = torch.diag(torch.rand(30, generator=g, dtype=torch.float64) + 0.5)
    assert torch.equal(round_with_feedback(w, 0.3, gram), torch.round(w / 0.3).long())


def test_a_dead_input_is_rounded_to_nearest_and_feeds_nothing_back() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(10, 6, generator=g)
    x = _correlated(500, 6, 4)
    x[:, 2] = 0.0
    gram = (x.T @ x).double() / len(x)
    z = round_with_feedback(w, 0.25, gram)
    assert torch.equal(z[:, 2], torch.round(w[:, 2] / 0.25).long())
    # the other columns are as if the dead one were not there
    keep = [0, 1, 3, 4, 5]
    alone = round_with_feedback(w[:, keep], 0.25, gram[keep][:, keep])
    assert torch.equal(z[:, keep], alone)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        round_with_feedback(torch.zeros(3, 4), 0.1, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        round_with_feedback(torch.zeros(3, 4), 0.0, torch.eye(4, dtype=torch.float64))


class _Net(nn.Module):
    """Two linear layers reading one input (as MiniLM's query and key), then a third."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 7), nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x)) * self.b(x))


def test_grams_are_the_second_moments_of_each_linear_layers_inputs() -> None:
    torch.manual_seed(0)
    net = _Net()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    loss = ModuleLoss(net, lambda out, _t: out.sum())
    batches = [(torch.randn(8, 4, 5), None), (torch.randn(6, 4, 5), None)]
    grams = linear_input_grams(loss, state, batches)
    assert set(grams) == {"a.weight", "b.weight", "c.weight"}
    x = torch.cat([b[0].reshape(-1, 5) for b in batches]).double()
    torch.testing.assert_close(grams["a.weight"], x.T @ x / len(x))
    torch.testing.assert_close(grams["b.weight"], grams["a.weight"])
    with torch.no_grad():
        h = torch.relu(net.a(x.float())) * net.b(x.float())
    torch.testing.assert_close(grams["c.weight"], (h.T @ h).double() / len(h))
    # only the tensors asked for; a tensor the loss does not run (another object) has none
    assert set(linear_input_grams(loss, state, batches, names=["c.weight"])) == {"c.weight"}
    assert set(linear_input_grams(loss, state, batches, max_inputs=6)) == {"a.weight", "b.weight"}
    other = {**state, "a.weight": state["a.weight"].to(torch.float64)}
    assert "a.weight" not in linear_input_grams(loss, other, batches)


class _Teacher(WarmTeacher):
    """`test_warm`'s self-distilled MLP, 32-64-10, on correlated inputs."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(3.0)
        self.state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        x = _correlated(2048 + 256, 32, 5)  # one distribution, split
        self.x, self.val = x[:2048], [x[2048:]]


def test_vae_rd_warm_start_rounds_with_feedback() -> None:
    t = _Teacher()
    ctx = CodecContext(finetune=Finetuner(t.loss, t.batches, 16, validation=t.val))
    out = {}
    for rounding in ("feedback", "nearest"):
        res = compress(dict(t.state), "vae-rd", ctx=ctx, snr=10.0, epochs=1 / 16,
                       rounding=rounding)
        assert res.rebuilt is not None
        back = decompress(res.data)
        assert all(torch.equal(back[k], res.rebuilt[k]) for k in back)
        out[rounding] = res
    fed, near = out["feedback"], out["nearest"]
    assert fed.report["feedback_tensors"] == 2 and near.report["feedback_tensors"] == 0
    # the warm start's task loss (before any step) on the validation batches is lower
    d_fed, d_near = fed.report["history"]["distortion"][0], near.report["history"]["distortion"][0]
    assert d_fed < 0.7 * d_near
    # at about the same size
    assert abs(len(fed.data) - len(near.data)) < 0.1 * len(near.data)


def test_bad_rounding_values_are_one_line() -> None:
    t = _Teacher()
    ctx = CodecContext(finetune=Finetuner(t.loss, t.batches, 16))
    with pytest.raises(UserError, match="rounding must be one of"):
        compress(dict(t.state), "vae-rd", ctx=ctx, snr=10.0, rounding="trellis")
    with pytest.raises(UserError, match="gram_batches"):
        compress(dict(t.state), "vae-rd", ctx=ctx, snr=10.0, gram_batches=0)


def test_the_warm_model_starts_at_the_given_latents_and_lets_them_go() -> None:
    from vaecompress.methods.rd.model import RDConfig, RDModel

    w = {"a": torch.randn(6, 5), "b": torch.randn(4)}
    z = torch.arange(30, dtype=torch.int8).reshape(6, 5) - 15
    given = {0: z.clone()}
    model = RDModel(w, RDConfig(), init_steps=[0.1, 0.2], init_latents=given)
    assert given == {}  # read and let go: not held beside the model's latents
    assert torch.equal(model.latents[0].detach(), z.float())
    torch.testing.assert_close(model.latents[1].detach(), w["b"] / 0.2)


def test_a_stream_shorter_than_gram_batches_gives_what_it_has() -> None:
    t = _Teacher()
    few = [t.x[:64], t.x[64:128]]
    ctx = CodecContext(finetune=Finetuner(t.loss, lambda: iter(few), 2, validation=t.val))
    res = compress(dict(t.state), "vae-rd", ctx=ctx, snr=10.0, epochs=0.5, gram_batches=16)
    assert res.report["feedback_tensors"] == 2
