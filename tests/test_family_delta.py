"""`family.delta`: a model coded against a base, through every codec, the API and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from test_cli import _err_line
from test_codec_contract import TINY_SETTINGS, TinyTask, _all_codecs
from vaecompress.api import compress, decompress, decompress_file, save
from vaecompress.cli import main
from vaecompress.codecs import REGISTRY, Finetuner
from vaecompress.errors import FormatError, UserError
from vaecompress.family import delta
from vaecompress.format import dumps, loads
from vaecompress.methods.rd.vae_rd_free import DEFAULT_SNR


def _fine_tune(base: dict[str, torch.Tensor], scale: float = 0.02,
               seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1
            for k, v in base.items()}


def test_base_sha256_covers_names_dtypes_shapes_and_bytes() -> None:
    a = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.tensor([1, 2])}
    ref = delta.base_sha256(a)
    assert delta.base_sha256(dict(reversed(list(a.items())))) == ref  # the order of names
    variants = [
        {"z": a["x"], "y": a["y"]},  # a name
        {"x": a["x"].double(), "y": a["y"]},  # a dtype
        {"x": a["x"].reshape(3, 2), "y": a["y"]},  # a shape
        {"x": a["x"] + torch.tensor(1e-6), "y": a["y"]},  # a value
        {"x": a["x"]},  # a tensor fewer
    ]
    assert len({ref, *(delta.base_sha256(v) for v in variants)}) == len(variants) + 1


@pytest.mark.parametrize("codec", _all_codecs())
def test_every_codec_codes_against_a_base(codec: str) -> None:
    task = TinyTask()
    base = task.state
    model = _fine_tune(base)
    ctx = task.ctx() if REGISTRY[codec].uses_task else None
    res = compress(model, codec, base=base, ctx=ctx, **TINY_SETTINGS.get(codec, {}))
    c = loads(res.data)
    assert c.meta[delta.BASE_KEY] == {"sha256": delta.base_sha256(base),
                                      "op": "xor" if REGISTRY[codec].lossless else "sub"}
    assert c.tensors == [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)[6:]}
                         for k, v in model.items()]
    out = decompress(res.data, base=base)
    assert res.rebuilt is not None and list(out) == list(model)
    for k, v in model.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], res.rebuilt[k])
    assert torch.equal(out["steps"], model["steps"])  # integers as they are
    if REGISTRY[codec].lossless:
        assert all(torch.equal(out[k], v) for k, v in model.items())


@pytest.mark.parametrize("codec", _all_codecs())
def test_every_codec_codes_a_model_equal_to_its_base(codec: str) -> None:
    """A fine-tune that changed nothing (or a checkpoint saved twice): its change is all zeros,
    which every codec codes and rebuilds as the base (vae-rd-free wrote its infinite SNR into
    the header and failed, an internal error)."""
    task = TinyTask()
    base = task.state
    model = {k: v.clone() for k, v in base.items()}
    ctx = task.ctx() if REGISTRY[codec].uses_task else None
    res = compress(model, codec, base=base, ctx=ctx, **TINY_SETTINGS.get(codec, {}))
    out = decompress(res.data, base=base)
    assert res.rebuilt is not None and list(out) == list(model)
    for k, v in model.items():
        assert torch.equal(out[k], res.rebuilt[k])
        assert torch.isfinite(out[k]).all() if v.is_floating_point() else torch.equal(out[k], v)


def test_an_all_zero_model_is_coded_exactly_by_the_default() -> None:
    """Nothing to quantize: the default's file says so (an exact copy, its SNR stored as null)
    instead of failing to write an infinite SNR."""
    model = {"w": torch.zeros(8, 5), "b": torch.zeros(8)}
    res = compress(model)
    assert loads(res.data).codec_state["snr_db"] is None
    out = decompress(res.data)
    assert all(torch.equal(out[k], v) for k, v in model.items())


def test_lossless_delta_is_bit_exact_with_nan_inf_and_half_dtypes() -> None:
    base = {"a": torch.randn(5, 7), "h": torch.randn(9).half(), "b": torch.randn(4).bfloat16(),
            "d": torch.randn(3, 3, dtype=torch.float64), "new": torch.randn(3)}
    model = {k: v * 1.001 for k, v in base.items()}
    model["a"][0, 0], model["a"][1, 1] = float("nan"), float("inf")
    model["extra"] = torch.randn(2)  # not in the base: coded as it is
    del base["new"]  # not in the base either
    res = compress(model, "zstd", base=base)
    out = decompress(res.data, base=base)
    for k, v in model.items():
        assert out[k].dtype == v.dtype
        assert torch.equal(out[k].view(torch.uint8), v.contiguous().view(torch.uint8))


def test_a_small_delta_costs_less_than_the_model_alone_at_no_more_error() -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(128, 64), "b": torch.randn(128)}
    model = _fine_tune(base, scale=0.01)
    def rms(rebuilt: dict[str, torch.Tensor] | None) -> float:
        assert rebuilt is not None
        return float(sum((rebuilt[k] - v).pow(2).sum() for k, v in model.items()).sqrt())

    for settings in ({}, {"solver": "adam", "steps": 200}):  # the closed form and the trained
        alone = compress(model, "vae-rd-free", **settings)
        against = compress(model, "vae-rd-free", base=base, **settings)
        assert len(against.data) < len(alone.data) / 2
        assert rms(against.rebuilt) <= 1.05 * rms(alone.rebuilt)
        # The rate-distortion codec keeps its error relative to the model, not to the delta:
        # the trained form through its lam, the closed form by measuring against the model.
        ratio = 1 / against.report["delta_energy_ratio"]
        assert against.report["lam_scale"] == pytest.approx(ratio, rel=1e-6)
        if not settings:  # (a delta this small rounds to zeros well above the target)
            assert against.fidelity["snr_db"] >= DEFAULT_SNR


def test_a_delta_is_weighed_against_the_model_tensor_by_tensor() -> None:
    """A tensor the fine-tune barely moved costs nothing: its error is measured against its
    weights (as when the model is coded alone), not against its tiny change."""
    torch.manual_seed(0)
    base = {"moved": torch.randn(64, 64), "kept": torch.randn(64, 64)}
    model = {"moved": base["moved"] + 0.1 * torch.randn(64, 64),
             "kept": base["kept"] + 1e-4 * torch.randn(64, 64)}
    res = compress(model, "vae-rd-free", base=base, snr=20.0, change_snr=0.0)
    assert 20.0 <= res.fidelity["snr_db"] <= 20.5
    assert res.rebuilt is not None
    assert torch.equal(res.rebuilt["kept"], base["kept"])  # its delta coded as all zeros
    assert not torch.equal(res.rebuilt["moved"], base["moved"])


def test_by_default_the_change_keeps_a_fidelity_of_its_own() -> None:
    """A change 60 dB under the weights, which the weights' 30 dB alone codes as zeros (the
    test above), is kept by the default at `DEFAULT_CHANGE_SNR` of its own, measured as the
    fidelity reports it (to 1e-3 dB: the rebuilt model adds the decoded change to the base in
    the model's precision); the file is still far smaller than the model coded alone. A barely
    moved tensor beside a moved one still costs nothing (the change's SNR is pooled), and a
    change the weights' target keeps already is coded exactly as without the floor."""
    from vaecompress.methods.rd.vae_rd_free import DEFAULT_CHANGE_SNR

    torch.manual_seed(0)
    base = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    small = _fine_tune(base, scale=1e-3)
    res = compress(small, base=base)
    assert res.codec == "vae-rd-free" and res.rebuilt is not None
    assert res.fidelity["snr_db"] >= 30.0
    assert DEFAULT_CHANGE_SNR - 1e-3 <= res.fidelity["change_snr_db"] <= DEFAULT_CHANGE_SNR + 1.0
    assert res.report["change_snr_db"] == pytest.approx(res.fidelity["change_snr_db"], abs=1e-3)
    assert len(res.data) < len(compress(small).data) / 2
    rdoq = compress(small, "vae-rd-free", base=base, rounding="rdoq")
    assert rdoq.fidelity["change_snr_db"] >= DEFAULT_CHANGE_SNR - 1e-3
    assert compress(small, "vae-rd-free", base=base,
                    change_snr=25.0).fidelity["change_snr_db"] >= 25.0 - 1e-3

    mixed = {"moved": torch.randn(64, 64), "kept": torch.randn(64, 64)}
    model = {"moved": mixed["moved"] + 1e-3 * torch.randn(64, 64),
             "kept": mixed["kept"] + 1e-7 * torch.randn(64, 64)}
    got = compress(model, base=mixed)
    assert got.rebuilt is not None and got.fidelity["change_snr_db"] >= DEFAULT_CHANGE_SNR - 1e-3
    assert torch.equal(got.rebuilt["kept"], mixed["kept"])
    assert not torch.equal(got.rebuilt["moved"], mixed["moved"])

    large = _fine_tune(base, scale=0.3)  # kept at far more than the floor by 30 dB alone
    plain = compress(large, "vae-rd-free", base=base, change_snr=0.0)
    floor = compress(large, base=base)
    assert plain.fidelity["change_snr_db"] > DEFAULT_CHANGE_SNR + 3.0
    assert plain.rebuilt is not None and floor.rebuilt is not None
    assert all(torch.equal(plain.rebuilt[k], floor.rebuilt[k]) for k in large)


def test_wrong_missing_and_unwanted_base_are_refused() -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(8, 4)}
    model = _fine_tune(base)
    res = compress(model, "int8", base=base)
    with pytest.raises(UserError, match=r"coded against a base model .* give that model"):
        decompress(res.data)
    other = {"w": base["w"].clone()}
    other["w"][0, 0] += 1
    with pytest.raises(UserError, match="is not the model this file was coded against"):
        decompress(res.data, base=other)
    alone = compress(model, "int8")
    with pytest.raises(UserError, match="coded alone"):
        decompress(alone.data, base=base)


def test_a_base_of_another_shape_or_dtype_or_no_common_tensor_is_refused() -> None:
    model = {"w": torch.randn(8, 4), "b": torch.randn(8)}
    with pytest.raises(UserError, match=r"base's tensor 'w' is float32 \[4, 8\].*\[8, 4\]"):
        compress(model, "int8", base={"w": torch.randn(4, 8)})
    with pytest.raises(UserError, match="base's tensor 'b' is float64"):
        compress(model, "int8", base={"b": torch.randn(8, dtype=torch.float64)})
    with pytest.raises(UserError, match="shares no floating tensor"):
        compress(model, "int8", base={"v": torch.randn(8)})
    with pytest.raises(UserError, match="base's tensor 'w' holds NaN"):
        compress(model, "int8", base={"w": torch.full((8, 4), float("nan"))})


def test_a_reader_that_ignores_the_base_fails_the_checksum() -> None:
    """The recorded checksum is of the model, base added: a reader that decodes the delta and
    forgets the base (an older vaecompress) gets a FormatError, never the delta as weights."""
    torch.manual_seed(0)
    base = {"w": torch.randn(16, 8)}
    res = compress(_fine_tune(base), "int8", base=base)
    c = loads(res.data)
    del c.meta[delta.BASE_KEY]
    with pytest.raises(FormatError, match="do not match the checksum"):
        decompress(dumps(c))
    c.meta[delta.BASE_KEY] = {"sha256": "x", "op": "sub"}
    with pytest.raises(FormatError, match="malformed"):
        decompress(dumps(c), base=base)


def test_task_aware_codec_trains_the_delta_on_the_models_task() -> None:
    base = {"w": torch.zeros(3)}
    seen: list[torch.Tensor] = []

    def loss(state: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        seen.append(state["w"].detach().clone())
        return (state["w"] - 1).pow(2).sum()

    base = {"w": torch.full((3,), 5.0)}
    shifted = delta.shifted_finetuner(Finetuner(loss, [0]), base, ["w"])
    shifted.loss({"w": torch.ones(3)}, 0)
    assert torch.equal(seen[-1], torch.full((3,), 6.0))  # the model, base + delta


def test_cli_compress_and_decompress_with_base(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(32, 16), "b": torch.randn(32)}
    model = _fine_tune(base)
    other = {"w": torch.randn(16, 32), "b": torch.randn(32)}
    paths = {}
    for name, state in (("base", base), ("model", model), ("other", other)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(state, str(paths[name]))
    out, rebuilt = tmp_path / "m.vaec", tmp_path / "r.safetensors"
    assert main(["compress", str(paths["model"]), "-o", str(out), "--codec", "zstd",
                 "--base", str(paths["base"]), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["decompress", str(out), "-o", str(rebuilt)]) == 2
    assert "coded against a base model" in _err_line(capsys)
    assert main(["decompress", str(out), "-o", str(rebuilt), "--base", str(paths["other"])]) == 2
    assert "is not the model this file was coded against" in _err_line(capsys)
    assert not rebuilt.exists()
    assert main(["decompress", str(out), "-o", str(rebuilt), "--base", str(paths["base"])]) == 0
    assert torch.equal(decompress_file(out, base=base)["w"], model["w"])
    assert main(["compress", str(paths["model"]), "-o", str(tmp_path / "x.vaec"), "--codec",
                 "int8", "--base", str(paths["other"]), "--quiet"]) == 2
    assert "base's tensor 'w' is float32 [16, 32]" in _err_line(capsys)
    assert main(["compress", str(paths["model"]), "-o", str(paths["base"]), "--codec", "int8",
                 "--base", str(paths["base"]), "--quiet"]) == 2  # never overwrites the base
    _err_line(capsys)
    assert main(["compress", str(paths["model"]), "-o", str(tmp_path / "y.vaec"), "--base",
                 str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "missing.safetensors" in _err_line(capsys)


def test_save_writes_a_file_that_decodes_with_its_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = {"w": torch.randn(8, 8)}
    model = _fine_tune(base)
    res = compress(model, "int8", base=base)
    save(res, tmp_path / "m.vaec")
    assert res.rebuilt is not None
    assert torch.equal(decompress_file(tmp_path / "m.vaec", base=base)["w"], res.rebuilt["w"])


def test_a_change_lost_under_the_weights_snr_is_measured_and_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fine-tune whose change is smaller than the error the weights may take comes back as its
    base at the weights' SNR alone (`change_snr=0`); the change's own SNR says so, and the
    command line warns. By default the change keeps its own target (the next test)."""
    torch.manual_seed(0)
    base = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    small = _fine_tune(base, scale=1e-3)  # 60 dB under the weights
    lost = compress(small, "vae-rd-free", base=base, snr=30.0, change_snr=0.0)
    assert lost.fidelity["snr_db"] >= 30.0  # the weights' target is met...
    assert lost.rebuilt is not None and torch.equal(lost.rebuilt["w"], base["w"])
    assert abs(lost.fidelity["change_snr_db"]) < 1e-6  # ...and the whole change is lost: 0 dB
    kept = compress(small, "int8", base=base)
    assert kept.fidelity["change_snr_db"] > 20.0
    assert compress(small, "zstd", base=base).fidelity["change_snr_db"] == float("inf")
    assert "change_snr_db" not in compress(small, "vae-rd-free", snr=30.0).fidelity  # alone
    paths = {}
    for name, state in (("base", base), ("model", small)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(state, str(paths[name]))
    out = tmp_path / "m.vaec"
    for args, warned in ((["--snr", "30", "--set", "change_snr=0"], True),
                         (["--snr", "90", "--set", "change_snr=0"], False), ([], False)):
        assert main(["compress", str(paths["model"]), "-o", str(out), "--base",
                     str(paths["base"]), "--quiet", *args]) == 0
        printed = capsys.readouterr().out
        assert "the change from the base kept at SNR" in printed
        assert ("warning: most of the change from the base is lost" in printed) == warned
    assert main(["compress", str(paths["model"]), "-o", str(out), "--base", str(paths["base"]),
                 "--quiet", "--snr", "30", "--set", "change_snr=0", "--json"]) == 0
    assert '"change_snr_db": 0.0' in capsys.readouterr().out
