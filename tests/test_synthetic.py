"""`vae-rd` without data (`synthetic`): inputs made from the classifier by inversion
(`tasks.inversion`), made once per model (`Probe.synthesize`), distilled on
(`tasks.probe.probe_distiller`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext, Finetuner, get_codec_class
from vaecompress.errors import UserError
from vaecompress.experiments.bench_zoo import grid
from vaecompress.tasks.inversion import Inversion, invert, total_variation
from vaecompress.tasks.probe import Probe, classifier_probe, probe_distiller

SHAPE = (1, 8, 8)
NORM = (0.5, 0.25)
SMALL = Inversion(images=640, steps=60)  # five batches of the made inputs


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return _net().eval()


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_inverted_images_get_the_classes_they_were_assigned(net: nn.Module) -> None:
    cfg = Inversion(images=100, steps=60)
    with torch.no_grad():
        before = net((torch.rand(100, *SHAPE) - NORM[0]) / NORM[1]).argmax(1)
    x = invert(net, SHAPE, classes=5, normalize=NORM, cfg=cfg, seed=3)
    assert x.shape == (100, *SHAPE) and not x.requires_grad
    pixels = x * NORM[1] + NORM[0]
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6  # in range
    want = torch.arange(100) % 5
    with torch.no_grad():
        hit = float((net(x).argmax(1) == want).float().mean())
    assert hit >= 0.9 > float((before == want).float().mean())
    assert torch.equal(x, invert(net, SHAPE, classes=5, normalize=NORM, cfg=cfg, seed=3))
    assert not torch.equal(x, invert(net, SHAPE, classes=5, normalize=NORM, cfg=cfg, seed=4))
    assert all(p.grad is None for p in net.parameters())  # only the images were moved


def test_the_prior_smooths_the_images(net: nn.Module) -> None:
    rough = invert(net, SHAPE, classes=5, normalize=None, cfg=Inversion(images=40, tv=0.0))
    smooth = invert(net, SHAPE, classes=5, normalize=None, cfg=Inversion(images=40, tv=1.0))
    assert float(total_variation(smooth)) < 0.5 * float(total_variation(rough))


def test_a_probe_makes_its_inputs_once_per_state(net: nn.Module) -> None:
    probe = classifier_probe(net, SHAPE, normalize=NORM, batches=2, batch_size=16,
                             inversion=SMALL)
    assert probe.synthesize is not None
    state = _state(net)
    made = probe.synthesize(state, 0)
    assert made.kind == "logits" and made.synthesize is None
    assert made.batches == 5
    assert probe.synthesize({k: v.clone() for k, v in state.items()}, 0) is made  # by content
    other = {k: v * 1.5 for k, v in state.items()}
    assert probe.synthesize(other, 0) is not made
    assert probe.synthesize(state, 1) is not made
    assert made.outputs(state, 0).shape == (128, 5)


def test_distillation_on_a_probe_is_zero_at_the_original_and_keeps_batches_apart(
        net: nn.Module) -> None:
    probe = classifier_probe(net, SHAPE, normalize=NORM, batches=6, batch_size=8)
    state = _state(net)
    task = probe_distiller(probe, state, validation=2, steps_per_epoch=50)
    assert task.steps_per_epoch == 50
    assert task.validation == [4, 5]
    stream = task.batches()
    seen = {next(stream).index for _ in range(40)}
    assert seen == {0, 1, 2, 3}  # the validation batches are never trained on
    for b in [0, *task.validation]:
        assert float(task.loss(state, b)) == pytest.approx(0.0, abs=1e-7)
    moved = {k: v + 0.3 * torch.randn_like(v) for k, v in state.items()}
    assert float(task.loss(moved, 0)) > 1e-4
    with pytest.raises(ValueError, match="leaves none"):
        probe_distiller(probe, state, validation=6)


def test_vae_rd_distils_on_made_inputs_without_data(net: nn.Module) -> None:
    state = _state(net)
    probe = classifier_probe(net, SHAPE, normalize=NORM, batches=2, batch_size=16,
                             inversion=SMALL)
    ctx = CodecContext(progress=False, probe=probe)
    res = compress(state, "vae-rd", ctx=ctx, synthetic=True, snr=6.0, epochs=0.2)
    assert res.report["synthesize_s"] >= 0 and res.report["synthetic_batches"] == 5
    assert 0 < res.report["steps_run"] <= 40
    rebuilt = decompress(res.data)
    assert rebuilt.keys() == state.keys()
    # the rebuilt network agrees with the original on the inputs it was distilled on
    made = probe.synthesize(state, 0)
    with torch.no_grad():
        a = made.outputs(state, 0).argmax(1)
        b = made.outputs(rebuilt, 0).argmax(1)
    assert float((a == b).float().mean()) >= 0.8
    again = compress(state, "vae-rd", ctx=ctx, synthetic=True, snr=6.0, epochs=0.2)
    assert again.data == res.data  # the same input, settings and seed give the same bytes


def test_batchnorm_statistics_are_kept_exactly() -> None:
    """As for a distillation on data: the made inputs only read BatchNorm's running statistics,
    so the codec keeps them as they are (a coded running variance could reach zero)."""
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                       nn.Linear(32, 5))
    with torch.no_grad():
        bn[2].running_mean.uniform_(-1, 1)
        bn[2].running_var.uniform_(0.5, 2)
    bn.eval()
    state = _state(bn)
    probe = classifier_probe(bn, SHAPE, normalize=NORM, batches=2, batch_size=16,
                             inversion=SMALL)
    assert probe.synthesize is not None
    made = probe.synthesize(state, 0)
    assert made.outputs.buffers >= {"2.running_mean", "2.running_var"}
    res = compress(state, "vae-rd", ctx=CodecContext(progress=False, probe=probe),
                   synthetic=True, snr=6.0, epochs=0.1)
    back = decompress(res.data)
    for k in ("2.running_mean", "2.running_var"):
        assert torch.equal(back[k], state[k]), k
    assert not torch.equal(back["1.weight"], state["1.weight"])  # the weights are coded


def test_the_setting_is_in_the_header_only_when_set() -> None:
    """Added after vae-rd files and bench records were written: at its default the header
    and the records' keys are what they were (the golden digests pin the default's)."""
    from vaecompress.codecs import make_codec

    assert "synthetic" not in make_codec("vae-rd").settings_json()
    assert "rounding" in make_codec("vae-rd").settings_json()  # the others all are
    assert make_codec("vae-rd", synthetic=True, snr=3.0).settings_json()["synthetic"] is True


def test_synthetic_is_a_data_free_method_of_its_own() -> None:
    cls = get_codec_class("vae-rd")
    assert cls.method({"synthetic": True, "snr": 3.0}) == ("vae-rd (synthetic inputs)", False)
    assert cls.method({"snr": 3.0}) == ("vae-rd", True)
    points = grid("vae-rd", "datafree")
    assert points and all(p["synthetic"] is True and p["snr"] > 0 for p in points)
    assert all(not p.get("synthetic") for p in grid("vae-rd", "full"))


def _finetuner() -> Finetuner:
    x = torch.randn(32, *SHAPE)
    return Finetuner(lambda s, b: F.mse_loss(b, b), lambda: iter([x] * 1000), 4)


@pytest.mark.parametrize(("settings", "ctx", "want"), [
    ({"synthetic": True}, "probe", "give it a fidelity to start from"),
    ({"synthetic": True, "snr": 3.0}, "none", "needs its architecture"),
    ({"synthetic": True, "snr": 3.0}, "noise-only", "needs its architecture"),
    ({"synthetic": True, "snr": 3.0}, "data", "not on data"),
    ({"synthetic": True, "snr": 3.0}, "base", "not its change from a base"),
])
def test_bad_synthetic_uses_are_bad_input(net: nn.Module, settings: dict, ctx: str,
                                          want: str) -> None:
    state = _state(net)
    probe = classifier_probe(net, SHAPE, normalize=NORM, batches=2, batch_size=16,
                             inversion=SMALL)
    contexts = {
        "probe": CodecContext(progress=False, probe=probe),
        "none": CodecContext(progress=False),
        "noise-only": CodecContext(progress=False,
                                   probe=Probe(probe.outputs, probe.batches, "logits")),
        "data": CodecContext(progress=False, probe=probe, finetune=_finetuner()),
        "base": CodecContext(progress=False, probe=probe),
    }
    base = {k: v * 0.9 for k, v in state.items()} if ctx == "base" else None
    with pytest.raises(UserError, match=want):
        compress(state, "vae-rd", ctx=contexts[ctx], base=base, **settings)


def test_records_are_keyed_by_the_weights_not_only_the_training_config(tmp_path) -> None:
    """The zoo's training is not bit-reproducible across machines: the same configuration can
    give other weights, whose measurements must not be reused for these."""
    from vaecompress.experiments.common import TrainedModel

    state = _state(_net())
    a = TrainedModel("fnn", state, 97.0, 1.0, tmp_path / "a", "cfg")
    same = TrainedModel("fnn", {k: v.clone() for k, v in state.items()}, 97.0, 1.0,
                        tmp_path / "b", "cfg")
    other = TrainedModel("fnn", {k: v + 1e-6 for k, v in state.items()}, 97.0, 1.0,
                         tmp_path / "a", "cfg")
    assert a.identity == same.identity != other.identity
    assert a.identity != TrainedModel("fnn", state, 97.0, 1.0, tmp_path / "a", "cfg2").identity


def test_the_held_out_benchmark_sweeps_and_reports_every_method() -> None:
    from conftest import load_script

    bench = load_script("benchmarks/synthetic_heldout.py")
    points = bench._points()
    methods = {m for m, _, _ in points}
    assert {"vae-rd (synthetic inputs)", "vae-rd-free"} <= methods
    assert all(s["synthetic"] and s["snr"] > 0 for m, c, s in points if c == "vae-rd")
    if _nncodec_installed():
        qps = [s["qp"] for m, c, s in points if c == "nncodec"]
        assert qps == list(range(-10, -61, -1))  # every step, coarse to fine

    drops = {-10: 5.0, -11: 2.0, -12: 0.3, -13: 0.08, -14: 0.01}
    specs = [("vae-rd-free", "vae-rd-free", {"snr": 9.0}),
             *(("nncodec", "nncodec", {"qp": q}) for q in range(-10, -20, -1))]
    got = bench.sweep(specs, lambda codec, s: {"acc_drop": drops.get(s.get("qp"), 9.0)})
    assert [g["method"] for g in got] == ["vae-rd-free", *["nncodec"] * 4]  # stops at -13
    assert got[-1]["acc_drop"] == 0.08

    def p(method: str, ratio: float, drop: float, **settings: float) -> dict:
        return {"method": method, "ratio_honest": ratio, "acc_drop": drop,
                "settings": settings, "compress_s": 1.0}

    pts = [p("vae-rd (synthetic inputs)", 30.0, 0.4, snr=2.0),
           p("vae-rd (synthetic inputs)", 40.0, 1.5, snr=1.0),
           p("vae-rd-free", 20.0, 0.05, snr=8.0), p("nncodec", 25.0, 0.3, qp=-14)]
    assert bench.best(pts, "vae-rd (synthetic inputs)", 1.0)["ratio_honest"] == 30.0
    assert bench.best(pts, "nncodec", 0.1) is None
    text = bench.render({"environment": {"git_revision": "a" * 40, "torch": "t",
                                         "device": "cpu", "torch_threads": 1,
                                         "time_utc": "now"},
                         "models": [{"model": "m", "acc_orig": 98.0, "points": pts}]})
    assert "| m (98.00%) | 0.5 | 30.0x (snr 2; +0.40) | 20.0x (snr 8; +0.05) | " \
           "25.0x (qp -14; +0.30) | 1.20 | 1.20 |" in text
    assert "| m (98.00%) | 0.1 | - | 20.0x (snr 8; +0.05) | - | - | - |" in text


def _nncodec_installed() -> bool:
    from vaecompress.codecs import REGISTRY

    return "nncodec" in REGISTRY and REGISTRY["nncodec"].available() is None


def test_max_drop_moves_the_warm_starts_snr_from_the_value_given(net: nn.Module) -> None:
    """A warm start's file is the closed form's at its SNR (the rate's weight hardly moves
    it), so `--max-drop` searches `snr`, starting where the user put it."""
    from vaecompress.target import compress_within
    from vaecompress.tasks.validation import Validation

    state = _state(net)
    probe = classifier_probe(net, SHAPE, normalize=NORM, batches=2, batch_size=16,
                             inversion=SMALL)
    ctx = CodecContext(progress=False, probe=probe)
    x = probe.synthesize(state, 0)
    with torch.no_grad():
        want = x.outputs(state, 1).argmax(1)

    def agree(s: dict[str, torch.Tensor]) -> float:  # percent of the original's classes kept
        with torch.no_grad():
            return 100.0 * float((x.outputs(s, 1).argmax(1) == want).float().mean())

    val = Validation(agree, "points", "a made batch")
    res = compress_within(state, "vae-rd", max_drop=10.0, validation=val, ctx=ctx,
                          synthetic=True, snr=6.0, epochs=0.1)
    tries = res.report["target"]["all"]
    assert res.report["target"]["knob"] == "snr"
    assert tries[0]["value"] == 6.0  # the value given is where the search starts
    sizes = {t["value"]: t["bytes"] for t in tries}
    assert len(set(sizes.values())) > 1  # the knob moves the file
    coarse, fine = min(sizes), max(sizes)
    assert sizes[coarse] < sizes[fine]
    assert res.report["target"]["drop"] <= 10.0
    chosen = res.report["target"]["value"]
    assert sizes[chosen] == min(t["bytes"] for t in tries if t["drop"] <= 10.0)
