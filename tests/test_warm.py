"""The task-aware `vae-rd` at scale (`methods.rd.warm`): warm start from the closed form,
distillation without labels, the sampled rate, early stopping on validation batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext, Finetuner
from vaecompress.errors import UserError
from vaecompress.methods.rd.model import RDConfig, RDModel, _RoundScale
from vaecompress.methods.rd.warm import train_warm


class _Teacher:
    """A 16-48-8 MLP distilled from itself: the loss is the KL divergence of the student's
    predictions from the original's, on unlabelled random inputs."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # the same network in every run
        self.net = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 8))
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(3.0)
        self.state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.x = torch.randn(1024, 16, generator=g)
        self.val = [torch.randn(128, 16, generator=g)]

    def loss(self, state: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = functional_call(self.net, self.state, (x,)).log_softmax(1)
        out = functional_call(self.net, dict(state), (x,)).log_softmax(1)
        return F.kl_div(out, target, log_target=True, reduction="batchmean")

    def batches(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        while True:
            yield self.x[torch.randperm(len(self.x), generator=g)[:64]]

    def finetuner(self, validation: bool = True) -> Finetuner:
        return Finetuner(self.loss, self.batches, 16,
                         validation=self.val if validation else None)


@pytest.fixture(scope="module")
def teacher() -> _Teacher:
    return _Teacher()


def test_distillation_loss_is_zero_at_the_original_weights(teacher: _Teacher) -> None:
    assert float(teacher.loss(teacher.state, teacher.val[0])) == pytest.approx(0.0, abs=1e-7)


def test_round_scale_has_the_straight_through_gradient() -> None:
    z = torch.randn(50, requires_grad=True)
    s = torch.tensor([0.3], requires_grad=True)
    g = torch.randn(50)
    (_RoundScale.apply(z, s) * g).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    ((z2 + (torch.round(z2) - z2).detach()) * s2 * g).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    torch.testing.assert_close(s.grad, s2.grad)
    assert torch.equal(_RoundScale.apply(z, s).detach(), torch.round(z.detach()) * 0.3)


def test_sampled_rate_is_an_unbiased_estimate() -> None:
    torch.manual_seed(0)
    w = {"big": torch.randn(300_000)}
    full = RDModel(w, RDConfig(rate_sample=1.0), init_steps=[0.05])
    part = RDModel(w, RDConfig(rate_sample=0.25), init_steps=[0.05])
    with torch.no_grad():
        exact = float(full.rate(0))
        draws = [float(part.rate(0)) for _ in range(20)]
    assert abs(sum(draws) / len(draws) - exact) < 0.002 * exact
    assert max(draws) != min(draws)  # a sample, not the whole


def test_warm_start_begins_at_the_closed_form_steps() -> None:
    w = {"a": torch.randn(40, 30), "b": torch.randn(30)}
    m = RDModel(w, RDConfig(), init_steps=[0.01, 0.2])
    assert float(m.step(0).detach()) == pytest.approx(0.01, rel=1e-6)
    torch.testing.assert_close(m.latents[1].detach() * 0.2, w["b"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        RDModel(w, RDConfig(decoder="row"), init_steps=[0.01, 0.2])


def test_distillation_lowers_the_loss_at_the_same_rate(teacher: _Teacher) -> None:
    live = {k: v for k, v in teacher.state.items()}
    cfg = RDConfig(steps=64, slope=1.0, validate_every=8, patience=0, lr_prior=1e-2)
    from vaecompress.methods.rd.allocate import allocate, relative_sensitivities

    arrays = [v.numpy() for v in live.values()]
    alloc = allocate(arrays, relative_sensitivities(arrays), snr=12.0)
    res = train_warm(live, cfg, [float(d[0]) for d in alloc.steps], task_loss=teacher.loss,
                     batches=teacher.batches(), validation=teacher.val)
    h = res.history
    assert h["step"][0] == 0 and h["lam"][0] == pytest.approx(2 * math.log(2) * h["distortion"][0])
    best = h["best_step"][0]
    assert best > 0  # training found a better state than the warm start ...
    i = h["step"].index(best)
    assert h["distortion"][i] < 0.8 * h["distortion"][0]  # ... by lowering the distortion
    assert h["bits_per_param"][i] < 1.1 * h["bits_per_param"][0]  # at about its rate
    assert {"task_s", "rate_s", "validation_s"} <= set(h)


def test_early_stopping_keeps_the_warm_start_when_nothing_improves(teacher: _Teacher) -> None:
    """Training batches that pull towards another model (its output layer negated) while the
    validation batches measure the distance to the teacher: every check is worse than the
    warm start, so the run stops after `patience` checks and returns the warm start's
    latents."""
    live = dict(teacher.state)
    other = {k: (-v if k.startswith("2.") else v) for k, v in teacher.state.items()}

    def loss(state: Mapping[str, torch.Tensor], batch: tuple[str, torch.Tensor]) -> torch.Tensor:
        kind, x = batch
        ref = teacher.state if kind == "val" else other
        with torch.no_grad():
            target = functional_call(teacher.net, ref, (x,)).log_softmax(1)
        out = functional_call(teacher.net, dict(state), (x,)).log_softmax(1)
        return F.kl_div(out, target, log_target=True, reduction="batchmean")

    train = (("train", x) for x in teacher.batches())
    from vaecompress.methods.rd.allocate import allocate, relative_sensitivities

    arrays = [v.numpy() for v in live.values()]
    alloc = allocate(arrays, relative_sensitivities(arrays), snr=12.0)
    cfg = RDConfig(steps=40, slope=1.0, validate_every=4, patience=2)
    res = train_warm(live, cfg, [float(d[0]) for d in alloc.steps], task_loss=loss,
                     batches=train, validation=[("val", teacher.val[0])])
    h = res.history
    assert h["best_step"][0] == 0 and h["steps_run"][0] == 8  # two checks, both worse
    assert all(d > h["distortion"][0] for d in h["distortion"][1:])
    for a, d, z in zip(arrays, alloc.steps, res.ints, strict=True):
        assert torch.equal(z, torch.round(torch.from_numpy(a) / float(d[0])).to(torch.int64))


def test_task_aware_codec_warm_start_round_trip(teacher: _Teacher) -> None:
    ctx = CodecContext(progress=False, finetune=teacher.finetuner())
    res = compress(teacher.state, "vae-rd", ctx=ctx, snr=14.0, epochs=3.0)
    rebuilt = decompress(res.data)
    assert list(rebuilt) == list(teacher.state)
    assert res.accounting.ratio_honest > 3
    loss = float(teacher.loss(rebuilt, teacher.val[0]))
    free = decompress(compress(teacher.state, "vae-rd-free", snr=14.0).data)
    assert loss <= float(teacher.loss(free, teacher.val[0])) + 1e-6
    for k in ("warm_start_s", "task_s", "rate_s", "best_step"):
        assert k in res.report
    again = compress(teacher.state, "vae-rd", ctx=ctx, snr=14.0, epochs=3.0)
    assert again.data == res.data  # same input, settings and seed: same bytes


@pytest.mark.parametrize("bad", [{"snr": -1.0}, {"snr": 500.0}, {"slope": -1.0},
                                 {"rate_sample": 0.0}, {"rate_sample": 1.5},
                                 {"patience": -1}, {"snr": 20.0, "decoder": "row"}])
def test_bad_warm_settings_are_bad_input(teacher: _Teacher, bad: dict) -> None:
    with pytest.raises(UserError):
        compress(teacher.state, "vae-rd", ctx=CodecContext(progress=False,
                                                           finetune=teacher.finetuner()), **bad)


def test_a_short_run_moves_no_latent_far(teacher: _Teacher) -> None:
    """Two steps may not move a latent by `1 / steps` (half a bin, quantization noise's own
    size) at once: the learning rate is capped at MAX_LR_BINS a step."""
    from vaecompress.methods.rd.allocate import allocate, relative_sensitivities

    live = dict(teacher.state)
    arrays = [v.numpy() for v in live.values()]
    alloc = allocate(arrays, relative_sensitivities(arrays), snr=12.0)
    init = [float(d[0]) for d in alloc.steps]
    cfg = RDConfig(steps=2, slope=1.0, validate_every=2, lr=1.0)
    res = train_warm(live, cfg, init, task_loss=teacher.loss, batches=teacher.batches(),
                     validation=teacher.val)
    h = res.history
    assert h["distortion"][1] < 1.5 * h["distortion"][0]


def test_a_warm_start_on_a_delta_is_weighed_against_the_model(teacher: _Teacher) -> None:
    """Coding a fine-tune against its base, the warm start's closed form keeps `snr` relative
    to the model (`CodecContext.reference`), as vae-rd-free does: not relative to the small
    change, which would spend bits on an error far below the model's (here 17 dB finer)."""
    g = torch.Generator().manual_seed(3)
    base = {k: v - 0.1 * v.std() * torch.randn(v.shape, generator=g) if v.dim() > 1 else v
            for k, v in teacher.state.items()}  # the change: 17 dB below the weights
    ctx = CodecContext(progress=False, finetune=teacher.finetuner(validation=False))
    res = compress(teacher.state, "vae-rd", ctx=ctx, base=base, snr=24.0, epochs=0.25)
    assert 24.0 <= res.report["warm_snr_db"] <= 24.5
    assert res.fidelity["snr_db"] < 30.0  # weighed against the delta: about 41 dB
    assert decompress(res.data, base=base).keys() == teacher.state.keys()


def test_a_step_frees_each_layers_decoded_weights_during_the_backward_pass(
        teacher: _Teacher) -> None:
    """The decoded weights live only in the step's graph (issue 19): when the gradient of the
    first layer's weight arrives, at the end of the backward pass, the last layer's decoded
    weight has already been freed (held by the step, every one would still be alive)."""
    import weakref

    refs: dict[str, weakref.ref] = {}
    alive_at_first_layer: list[bool] = []
    inner = teacher.loss

    def watched(state: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and state["0.weight"].requires_grad:
            refs.update({k: weakref.ref(v) for k, v in state.items()})
            state["0.weight"].register_hook(
                lambda g: alive_at_first_layer.append(refs["2.weight"]() is not None))
        return inner(state, x)

    ft = Finetuner(watched, teacher.batches, 16, validation=None)
    compress(teacher.state, "vae-rd", ctx=CodecContext(progress=False, finetune=ft), snr=14.0,
             epochs=0.25, patience=0)
    assert alive_at_first_layer and not any(alive_at_first_layer)
