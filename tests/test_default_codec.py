"""The default codec (issue 18): a fidelity knob that reaches its target, a default that holds on
a model it was not chosen on, the library and the command line choosing alike, bad knob values
as one line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vaecompress
from vaecompress.api import compress, decompress
from vaecompress.cli import main, parse_size
from vaecompress.codecs import DEFAULT_CODEC, LOSSLESS_CODEC, CodecContext, make_codec
from vaecompress.errors import UserError
from vaecompress.fidelity import weights_fidelity
from vaecompress.format import loads
from vaecompress.io import save_weights_file
from vaecompress.methods.rd.allocate import allocate, relative_sensitivities, snr_db
from vaecompress.methods.rd.vae_rd_free import DEFAULT_SNR
from vaecompress.tasks.probe import Probe, classifier_probe, fisher

CTX = CodecContext(progress=False)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP()
    with torch.no_grad():  # weights of a trained-looking spread, not init's uniform box
        for p in net.parameters():
            p.normal_(0, 0.3 / math.sqrt(p.shape[-1]))
    return net


def _rescaled(net: MLP, a: float) -> MLP:
    """The same function with the first layer scaled by `a` and the second by 1 / a (ReLU is
    positively homogeneous): a layer of another scale than the model's others."""
    out = MLP()
    out.load_state_dict(net.state_dict())
    with torch.no_grad():
        out.l1.weight.mul_(a)
        out.l1.bias.mul_(a)
        out.l2.weight.div_(a)
    return out


def _output_nsr(net: MLP, state: dict[str, torch.Tensor]) -> float:
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))
    other = MLP()
    other.load_state_dict(state)
    with torch.no_grad():
        y, z = net(x), other(x)
    return float((z - y).square().sum() / (y - y.mean(0)).square().sum())


@pytest.mark.parametrize("snr", [-3.0, 0.0, 12.0, 20.0, 30.0, 45.0])
def test_the_knob_reaches_its_target_and_no_more_than_needed(snr: float) -> None:
    state = _mlp().state_dict()
    res = compress(state, snr=snr, ctx=CTX)
    assert res.codec == DEFAULT_CODEC
    got = weights_fidelity(state, decompress(res.data))["snr_db"]
    assert snr <= got <= snr + 0.5  # the coarsest quantization that meets it
    assert loads(res.data).codec_state["snr_db"] == pytest.approx(got, abs=1e-3)


def test_a_higher_target_costs_more_bytes() -> None:
    state = _mlp().state_dict()
    sizes = [len(compress(state, snr=s, ctx=CTX).data) for s in (15.0, 25.0, 35.0)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_size_budget_is_met_and_spent() -> None:
    state = _mlp().state_dict()
    for budget in (6_000, 12_000):
        res = compress(state, size=budget, ctx=CTX)
        assert len(res.data) <= budget
        assert len(res.data) >= 0.8 * budget  # the budget is used, not wasted
    with pytest.raises(UserError, match="smaller than the file's header"):
        compress(state, size=100, ctx=CTX)


def test_a_size_budget_is_met_when_the_estimate_falls_short(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The search reads an estimate of the latents' bytes; where the coded latents come out
    above it (on the zoo's LSTM with other weightings, by 4 to 20 bytes in 100 kB), the codec
    searches again for less instead of saying that nothing fits."""
    from vaecompress.methods.rd import vae_rd_free

    state = _mlp().state_dict()
    honest = len(compress(state, size=12_000, ctx=CTX).data)
    real = vae_rd_free.estimate_model_bytes
    monkeypatch.setattr(vae_rd_free, "estimate_model_bytes",
                        lambda ints: int(0.9 * real(ints)))  # 10% short
    res = compress(state, size=12_000, ctx=CTX)
    assert len(res.data) <= 12_000
    assert len(res.data) >= 0.9 * honest  # coarser only by what the shortfall takes
    assert len(compress(state, size=6_000, ctx=CTX).data) <= 6_000


def test_allocation_meets_the_target_exactly_on_float32_weights() -> None:
    rng = np.random.default_rng(0)
    ws = [rng.normal(0, s, size=n).astype(np.float32) for s, n in ((1.0, 500), (1e-3, 50))]
    alloc = allocate(ws, relative_sensitivities(ws), snr=24.0)
    rel = [float(np.square(z.astype(np.float32) * d[0] - w).sum() / np.square(w).sum())
           for z, d, w in zip(alloc.ints, alloc.steps, ws, strict=True)]
    assert snr_db(sum(rel)) == pytest.approx(alloc.snr_db) and alloc.snr_db >= 24.0
    # Each tensor is judged relative to itself: the tiny one is not rounded away.
    assert np.count_nonzero(alloc.ints[1]) > 40


def test_the_default_holds_on_a_layer_of_another_scale() -> None:
    """The default is not chosen on this model; scaling one layer by 1e-3 and the next by 1e3
    (the same function) changes neither its fidelity nor its size much."""
    net = _mlp(3)
    base = compress(net.state_dict(), ctx=CTX)
    for a in (1e-3, 1e3):
        scaled = _rescaled(net, a)
        res = compress(scaled.state_dict(), ctx=CTX)
        assert _output_nsr(scaled, decompress(res.data)) < 10 ** (-DEFAULT_SNR / 10 + 1)
        assert abs(len(res.data) - len(base.data)) <= 0.02 * len(base.data)
    assert _output_nsr(net, decompress(base.data)) < 10 ** (-DEFAULT_SNR / 10 + 1)


def test_fisher_weighting_runs_the_model_and_needs_it() -> None:
    net = _mlp()
    probe = classifier_probe(net, (64,), normalize=None, batches=4, batch_size=16)
    state = net.state_dict()
    f = fisher(probe, state, list(state))
    assert set(f) == set(state) and all(v > 0 for v in f.values())
    # The Fisher of a layer scaled by `a` scales by 1 / a^2 (module docstring of tasks.probe).
    g = fisher(classifier_probe(_rescaled(net, 10.0), (64,), normalize=None, batches=4,
                                batch_size=16), _rescaled(net, 10.0).state_dict(), list(state))
    assert g["l1.weight"] == pytest.approx(f["l1.weight"] / 100, rel=1e-3)
    res = compress(state, ctx=CodecContext(progress=False, probe=probe))
    assert res.report["weighting"] == "fisher"
    with pytest.raises(UserError, match="architecture"):
        compress(state, weighting="fisher", ctx=CTX)


def test_a_probe_that_never_reaches_a_tensor_does_not_free_it() -> None:
    state = _mlp().state_dict()
    state["unused"] = torch.randn(32, 32)
    net = _mlp()
    inner = classifier_probe(net, (64,), normalize=None, batches=2, batch_size=8)
    probe = Probe(lambda s, i: inner.outputs({k: v for k, v in s.items() if k != "unused"}, i),
                  inner.batches, inner.kind)
    res = compress(state, ctx=CodecContext(progress=False, probe=probe))
    out = decompress(res.data)
    rel = float((out["unused"] - state["unused"]).square().sum() / state["unused"].square().sum())
    assert rel < 10 ** (-DEFAULT_SNR / 10)


def test_library_and_command_line_choose_the_same_default_and_fallback(tmp_path: Path) -> None:
    big = _mlp().state_dict()
    tiny = {"w": torch.randn(3)}  # a file header outweighs three floats: lossless instead
    for name, state, expect in (("big", big, DEFAULT_CODEC), ("tiny", tiny, LOSSLESS_CODEC)):
        res = vaecompress.compress(state, ctx=CTX)
        assert res.codec == expect and (res.fallback is not None) == (expect == LOSSLESS_CODEC)
        src, out = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.vrd"
        save_weights_file(src, state)
        assert main(["compress", str(src), "-o", str(out), "--quiet", "--no-eval"]) == 0
        written = loads(out.read_bytes())
        assert written.codec == loads(res.data).codec  # the same codec with the same settings
        rebuilt, ours = decompress(out.read_bytes()), decompress(res.data)
        assert all(torch.equal(rebuilt[k], ours[k]) for k in state)  # and the same result


def test_the_command_line_makes_its_codec_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are parsed, checked and turned into a codec once on their way to the encoder
    (docs/architecture.md, the path of one setting); the library takes that codec as it is."""
    from vaecompress.codecs import base

    made: list[str] = []
    real_init = base.Codec.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if args or kwargs:  # made from settings (the reader's decoder takes none)
            made.append(self.name)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(base.Codec, "__init__", counting)
    src, out = tmp_path / "m.safetensors", tmp_path / "m.vrd"
    save_weights_file(src, _mlp().state_dict())
    assert main(["compress", str(src), "-o", str(out), "--quiet", "--snr", "25"]) == 0
    assert made == [DEFAULT_CODEC]
    assert loads(out.read_bytes()).codec["settings"]["snr"] == 25


def test_the_library_takes_a_codec_made_beforehand() -> None:
    state = _mlp().state_dict()
    by_name = vaecompress.compress(state, "vae-rd-free", ctx=CTX, snr=25)
    made = vaecompress.compress(state, make_codec("vae-rd-free", snr=25), ctx=CTX)
    assert made.data == by_name.data and made.fallback is None
    with pytest.raises(TypeError, match="not both"):
        vaecompress.compress(state, make_codec("vae-rd-free"), ctx=CTX, snr=25)
    seen = vaecompress.compress(state, made_codec := make_codec("vae-rd-free", snr=25), ctx=CTX,
                                evaluate=lambda rebuilt: {"n": len(rebuilt)})
    assert seen.evaluation == {"n": len(state)} and made.evaluation is None  # what the CLI prints
    assert seen.data == by_name.data and made_codec.settings.snr == 25
    tiny = {"w": torch.randn(3)}  # the fallback is asked for, not implied by the codec's name
    assert vaecompress.compress(tiny, make_codec("vae-rd-free"), ctx=CTX).fallback is None
    res = vaecompress.compress(tiny, make_codec("vae-rd-free"), fallback=True, ctx=CTX)
    assert res.codec == LOSSLESS_CODEC and res.fallback is not None


def test_compress_prints_what_the_weights_lost(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src, out = tmp_path / "m.safetensors", tmp_path / "m.vrd"
    save_weights_file(src, _mlp().state_dict())
    assert main(["compress", str(src), "-o", str(out), "--snr", "20"]) == 0
    text = capsys.readouterr().out
    assert "weights SNR 20." in text and "worst tensor" in text


@pytest.mark.parametrize("argv, message", [
    (["--snr", "-31"], "snr is a fidelity in dB"),
    (["--snr", "500"], "snr is a fidelity in dB"),
    (["--snr", "nan"], "snr is a fidelity in dB"),
    (["--size", "12QB"], "--size expects a number of bytes"),
    (["--size", "0"], "--size must be more than 0"),
    (["--codec", "int8", "--snr", "30"], "has no setting 'snr'"),
    (["--set", "weighting=best"], "weighting must be one of"),
    (["--set", "change_snr=-3"], "change_snr is a fidelity in dB"),
    (["--set", "change_snr=nan"], "change_snr must be a number"),
    (["--set", "change_snr=500"], "change_snr is a fidelity in dB"),
])
def test_bad_knob_values_are_one_line_and_exit_2(tmp_path: Path, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "m.safetensors"
    save_weights_file(src, _mlp().state_dict())
    code = main(["compress", str(src), "-o", str(tmp_path / "m.vrd"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "m.vrd").exists()


def test_sizes_parse_with_their_units() -> None:
    assert parse_size("200KB") == 200_000 and parse_size("1.5MiB") == 1_572_864
    assert parse_size("50000") == 50_000 and parse_size(" 2 gb ") == 2_000_000_000


def test_adam_solver_is_kept_for_the_ablation() -> None:
    state = _mlp().state_dict()
    res = compress(state, "vae-rd-free", ctx=CTX, solver="adam", steps=20)
    assert "history" in res.report and decompress(res.data).keys() == state.keys()
    with pytest.raises(UserError, match="solver=closed"):
        make_codec("vae-rd-free", solver="adam", size=1000)


def test_the_datafree_bench_sweeps_every_data_free_method_and_the_default() -> None:
    from vaecompress.codecs import REGISTRY
    from vaecompress.experiments.bench_zoo import default_codecs, grid

    codecs = default_codecs("datafree")
    for c in codecs:
        assert all(not REGISTRY[c].method(p)[1] for p in grid(c, "datafree")), c
    assert {"prune", "deep-compression"}.isdisjoint(codecs)
    # vae-rd only in its data-free form: distilled on inputs made from the model
    assert all(p.get("synthetic") is True for p in grid("vae-rd", "datafree"))
    assert {"zstd", "int8", "kmeans", "vae-rd-free"} <= set(codecs)
    default = make_codec(DEFAULT_CODEC).settings_json()
    assert any(make_codec(DEFAULT_CODEC, **p).settings_json() == default
               for p in grid(DEFAULT_CODEC, "datafree"))  # the default's own point is swept
    if "nncodec" in REGISTRY:  # every qp step, not a sample of them
        qps = [p["qp"] for p in REGISTRY["nncodec"].operating_points("datafree")]
        assert qps == list(range(min(qps), max(qps) + 1))


def test_an_interrupted_training_says_where_its_checkpoint_is(tmp_path: Path, capsys,
                                                              monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The trained form keeps a checkpoint worth resuming, and says where; the default (the
    closed form, seconds) keeps none."""
    import vaecompress.checkpoint as ckmod

    src, out = tmp_path / "m.safetensors", tmp_path / "m.vrd"
    save_weights_file(src, _mlp().state_dict())
    monkeypatch.setenv(ckmod.EVERY_S_ENV, "0")
    real = ckmod.Checkpoint.save

    def save_then_stop(self, state):  # type: ignore[no-untyped-def]
        real(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckmod.Checkpoint, "save", save_then_stop)
    argv = ["compress", str(src), "-o", str(out), "--quiet", "--no-eval"]
    assert main([*argv, "--set", "solver=adam", "--set", "steps=30"]) == 130
    err = capsys.readouterr().err
    ck = ckmod.hidden_beside(out)
    assert ck.is_file() and str(ck) in err and "resumes" in err and not out.exists()
    ck.unlink()
    assert main(argv) == 0 and not ck.exists()


def test_the_weights_fidelity_sums_every_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor larger than a slice is summed slice by slice, to the same figure as at once."""
    from vaecompress import fidelity

    torch.manual_seed(0)
    w = {"big": torch.randn(50, 7), "small": torch.randn(3)}
    noisy = {k: v + 0.1 * torch.randn_like(v) for k, v in w.items()}
    whole = fidelity.weights_fidelity(w, noisy)
    monkeypatch.setattr(fidelity, "CHUNK", 16)  # 350 weights: 22 slices, the last one short
    sliced = fidelity.weights_fidelity(w, noisy)
    assert sliced["snr_db"] == pytest.approx(whole["snr_db"], abs=1e-9)
    assert sliced["worst_tensor"] == whole["worst_tensor"]
    assert sliced["worst_snr_db"] == pytest.approx(whole["worst_snr_db"], abs=1e-9)


def test_tensors_rebuilt_as_zeros_are_counted_apart() -> None:
    """The summed relative SNR counts a tiny tensor dropped as much as a large one; the
    fidelity says how many were lost, their share of the energy, and the others' SNR."""
    from vaecompress.fidelity import describe

    g = torch.Generator().manual_seed(0)
    orig = {"big": torch.randn(100, 100, generator=g), "tiny": 1e-4 * torch.randn(8, generator=g),
            "steps": torch.tensor(3)}
    rebuilt = {"big": orig["big"] * (1 + 1e-2), "tiny": torch.zeros(8), "steps": torch.tensor(3)}
    fid = weights_fidelity(orig, rebuilt)
    assert fid["worst_tensor"] == "tiny" and fid["snr_db"] < 0
    assert fid["lost_tensors"] == 1 and 0 < fid["lost_energy"] < 1e-9
    assert fid["others_snr_db"] == pytest.approx(40.0, abs=1e-3)
    line = describe(fid)
    assert "1 tensor holding under 0.0001% of the weights' energy rebuilt as zeros or worse" in line
    assert line.endswith("the others at 40.0 dB")
    kept = weights_fidelity(orig, {**rebuilt, "tiny": orig["tiny"]})
    assert kept["lost_tensors"] == 0 and "rebuilt as zeros" not in describe(kept)
    assert "warning" not in line  # a negligible share is reported, not warned about


def test_a_large_share_rebuilt_as_zeros_is_a_warning(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Over LOST_WARN of the weights' energy in tensors rebuilt as zeros, the fidelity line is
    followed by a warning (unless the task measured the damage, as --max-drop does); a byte
    budget far too small for the model says so on the command line."""
    from vaecompress.fidelity import LOST_WARN, describe

    g = torch.Generator().manual_seed(0)
    orig = {"a": torch.randn(50, 50, generator=g), "b": torch.randn(50, 50, generator=g)}
    fid = weights_fidelity(orig, {"a": orig["a"], "b": torch.zeros(50, 50)})
    assert fid["lost_energy"] > LOST_WARN
    assert "\nwarning: tensors holding 49% of the weights' energy" in describe(fid)
    assert "warning: tensors" not in describe(fid, measured=True)
    # a tensor far larger than the other, in a budget that cannot hold it: it is dropped
    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"big": torch.randn(300, 300, generator=g),
                            "small": torch.randn(20, 20, generator=g)})
    assert main(["compress", str(src), "-o", str(tmp_path / "m.vrd"), "--size", "450"]) == 0
    printed = capsys.readouterr().out
    assert "warning: tensors holding 100% of the weights' energy" in printed
    assert "e+" not in printed  # shares in per cent, never in exponent form


def test_a_tensor_too_small_for_a_float32_step_is_coded_as_zeros(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights below float32's normal range (1e-40: the finest step tried would be zero, every
    latent inf) are rebuilt as zeros and reported lost, the others kept at the target; it was
    an internal error. A model of nothing else says so and warns."""
    g = torch.Generator().manual_seed(0)
    model = {"a": torch.randn(64, 32, generator=g), "tiny": torch.randn(16, generator=g) * 1e-40,
             "b": torch.randn(64, generator=g)}
    res = compress(model)
    out = decompress(res.data)
    assert torch.equal(out["tiny"], torch.zeros(16))
    assert res.fidelity["worst_tensor"] == "tiny" and res.fidelity["lost_tensors"] == 1
    assert DEFAULT_SNR <= res.fidelity["others_snr_db"] <= DEFAULT_SNR + 0.5
    src = tmp_path / "tiny.safetensors"
    save_weights_file(src, {"tiny": torch.randn(32, 32, generator=g) * 1e-40})  # not zstd's
    assert main(["compress", str(src), "-o", str(tmp_path / "tiny.vrd")]) == 0
    printed = capsys.readouterr().out
    assert "nothing to quantize" in printed and "warning: tensors holding 100%" in printed


def test_the_full_sweep_of_the_default_goes_past_the_one_point_line() -> None:
    """bench-full's column of the default is its best within 0.5 and 1 point only if its sweep
    reaches SNRs where the zoo's classifiers lose more than that (about 0-4 dB, results/datafree):
    its lowest point is at or below 0 dB, and it keeps the near-lossless default's own point."""
    from vaecompress.experiments.bench_zoo import grid

    snrs = [p["snr"] for p in grid(DEFAULT_CODEC, "full")]
    assert min(snrs) <= 0.0 and DEFAULT_SNR in snrs
    assert snrs == sorted(snrs, reverse=True)
