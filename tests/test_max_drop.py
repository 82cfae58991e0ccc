"""`--max-drop` (issue 18): the smallest file whose rebuilt model loses at most a given amount on
the task's validation data, found by a search over the codec's fidelity knob (`target`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from vaecompress.api import compress, decompress
from vaecompress.cli import main
from vaecompress.codecs import CodecContext, Knob, get_codec_class
from vaecompress.errors import UserError
from vaecompress.format import loads
from vaecompress.target import TARGET_KEY, _search, compress_within, knob_of
from vaecompress.tasks.validation import Validation

CTX = CodecContext(progress=False)


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(64, 48, generator=gen) * 0.1,
            "a.bias": torch.randn(64, generator=gen) * 0.01,
            "b.weight": torch.randn(10, 64, generator=gen) * 0.3}


def _error_points(original: Mapping[str, torch.Tensor]) -> Validation:
    """A task whose score falls with the relative error of the weights: 100 points minus 100
    times the summed relative squared error (monotone in the default codec's SNR)."""
    def score(state: Mapping[str, torch.Tensor]) -> float:
        err = sum(float((state[k] - v).pow(2).sum() / v.pow(2).sum())
                  for k, v in original.items())
        return 100.0 - 100.0 * err

    return Validation(score, "points", "the weights' relative error")


@pytest.mark.parametrize("max_drop", [0.5, 5.0, 30.0, 150.0])
def test_reaches_the_target_and_no_coarser(max_drop: float) -> None:
    """The file kept loses at most `max_drop`; a value of the knob within its resolution
    coarser was tried and loses more; it is the smallest of the files that keep it."""
    state = _state()
    val = _error_points(state)
    res = compress_within(state, max_drop=max_drop, validation=val, ctx=CTX)
    t = res.report["target"]
    assert t["knob"] == "snr" and t["unit"] == "points"
    assert res.rebuilt is not None
    drop = 100.0 - val.score(res.rebuilt)
    assert drop <= max_drop and math.isclose(drop, t["drop"], rel_tol=1e-9, abs_tol=1e-9)
    knob = get_codec_class("vae-rd-free").fidelity_knob({})
    assert knob is not None
    fails = [a for a in t["all"] if a["drop"] > max_drop]
    assert any(0 < t["value"] - a["value"] <= knob.resolution for a in fails)
    passing = [a["bytes"] for a in t["all"] if a["drop"] <= max_drop]
    assert len(res.data) - min(passing) < 400  # the same file, and the search's record
    if max_drop > 100:  # the tensors' relative errors may sum to 1.5: below 0 dB, not at a floor
        assert -1.8 < t["value"] < 0
    # what the file says, and that it decodes to the model that was measured
    c = loads(res.data)
    assert c.meta[TARGET_KEY]["value"] == t["value"] == c.codec["settings"]["snr"]
    assert c.meta[TARGET_KEY]["max_drop"] == max_drop
    back = decompress(res.data)
    assert all(torch.equal(back[k], res.rebuilt[k]) for k in state)
    assert res.accounting.file_bytes == len(res.data)


def test_a_tighter_target_gives_a_larger_file() -> None:
    state = _state()
    val = _error_points(state)
    sizes = [len(compress_within(state, max_drop=d, validation=val, ctx=CTX).data)
             for d in (20.0, 2.0, 0.2)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_unreachable_target_is_one_line() -> None:
    state = _state()

    def never(st: Mapping[str, torch.Tensor]) -> float:
        return 0.0 if st is not state else 1.0  # any rebuilt model loses a point

    with pytest.raises(UserError, match="no snr of vae-rd-free keeps it; the finest tried"):
        compress_within(state, max_drop=0.5, validation=Validation(never, "points", "x"),
                        ctx=CTX)


def test_bad_requests_are_user_errors() -> None:
    state = _state()
    val = _error_points(state)
    with pytest.raises(UserError, match="not both"):
        compress_within(state, max_drop=1, validation=val, ctx=CTX, snr=20)
    with pytest.raises(UserError, match="two targets"):
        compress_within(state, max_drop=1, validation=val, ctx=CTX, size=10_000)
    with pytest.raises(UserError, match="int8 has no fidelity setting"):
        compress_within(state, "int8", max_drop=1, validation=val, ctx=CTX)
    with pytest.raises(UserError, match=">= 0"):
        compress_within(state, max_drop=-1, validation=val, ctx=CTX)
    with pytest.raises(UserError, match=">= 0"):
        compress_within(state, max_drop=math.nan, validation=val, ctx=CTX)
    cos = Validation(lambda st: 1.0, "cosine", "x")
    with pytest.raises(UserError, match="less than 1"):
        compress_within(state, max_drop=1.5, validation=cos, ctx=CTX)
    with pytest.raises(ValueError):
        Validation(lambda st: 1.0, "percent", "x")


def test_knobs_of_the_codecs() -> None:
    free = get_codec_class("vae-rd-free")
    assert free.fidelity_knob({}).name == "snr"
    assert free.fidelity_knob({"solver": "adam"}).name == "lam"
    # against a base: the change's own SNR, the weights' out of the way unless set
    against = free.fidelity_knob({}, delta=True)
    assert against.name == "change_snr" and dict(against.alongside) == {"snr": 1.0}
    assert free.fidelity_knob({"snr": 20}, delta=True).name == "change_snr"  # theirs kept
    assert free.fidelity_knob({"change_snr": 3}, delta=True).name == "snr"
    rd = get_codec_class("vae-rd")
    assert rd.fidelity_knob({}).name == "lam"
    # warm-started: the start's SNR, from the value given (it chose the warm start)
    warm = rd.fidelity_knob({"snr": 18})
    assert warm.name == "snr" and warm.given and warm.finer == 1 and warm.lo > 0
    assert knob_of("vae-rd", {"snr": 18}).name == "snr"  # given, not a conflict
    with pytest.raises(UserError, match="not both"):
        knob_of("vae-rd", {"lam": 3.0})
    nnc = get_codec_class("nncodec").fidelity_knob({})
    assert nnc is not None and nnc.integer and nnc.finer == -1
    assert get_codec_class("nncodec").fidelity_knob({"bitdepth": 8}) is None
    assert get_codec_class("int8").fidelity_knob({}) is None


@pytest.mark.parametrize("threshold", [-47.3, -31.0, -20.6, -3.0])
def test_search_on_an_integer_knob_that_gets_coarser_upwards(threshold: float) -> None:
    """NNCodec's qp: integers, finer downwards. The search ends next to the threshold, at the
    coarsest integer that passes, and never asks for a value twice or out of range."""
    knob = Knob("qp", -60, -2, finer=-1, step=6, resolution=1, integer=True)
    asked: list[float] = []

    def ok(v: float) -> bool:
        assert isinstance(v, int) and knob.lo <= v <= knob.hi and v not in asked
        asked.append(v)
        return v <= threshold

    _search(knob, -32, ok)
    passing = [v for v in asked if v <= threshold]
    assert max(passing) == math.floor(threshold)
    assert len(asked) <= 9


def test_search_on_a_log_knob_brackets_within_its_resolution() -> None:
    knob = Knob("lam", 0.05, 500.0, finer=-1, step=1.0, resolution=0.5, log=True)
    asked: list[float] = []

    def ok(v: float) -> bool:
        asked.append(v)
        return v <= 23.0

    _search(knob, 7.0, ok)
    good = max(v for v in asked if v <= 23.0)
    bad = min(v for v in asked if v > 23.0)
    assert math.log2(bad) - math.log2(good) <= 0.5
    assert len(asked) <= 6  # a training a try: few of them


def test_the_coarsest_value_when_everything_passes() -> None:
    knob = Knob("snr", 1.0, 60.0, finer=1, step=8.0, resolution=0.5)
    asked: list[float] = []
    _search(knob, 30.0, lambda v: asked.append(v) is None)
    assert asked[-1] == 1.0 and len(asked) <= 4


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def fnn_file(tmp_path_factory: pytest.TempPathFactory, toy_mnist_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("md") / "fnn.safetensors"
    assert main(["train", "fnn", "-o", str(path), "--epochs", "1", "--quiet",
                 "--data-dir", str(toy_mnist_dir)]) == 0
    return path


def test_command_line_searches_and_says_so(fnn_file: Path, toy_mnist_dir: Path,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fnn.vrd"
    capsys.readouterr()
    assert main(["compress", str(fnn_file), "-o", str(out), "--model", "fnn", "--quiet",
                 "--max-drop", "1", "--data-dir", str(toy_mnist_dir)]) == 0
    text = capsys.readouterr().out
    assert "--max-drop 1: chose snr " in text and "MNIST training images" in text
    meta = loads(out.read_bytes()).meta[TARGET_KEY]
    assert meta["drop"] <= 1 and meta["unit"] == "points"
    assert main(["inspect", str(out)]) == 0
    assert f"chosen by --max-drop 1: snr {meta['value']}" in capsys.readouterr().out
    assert main(["compress", str(fnn_file), "-o", str(tmp_path / "j.vrd"), "--model", "fnn",
                 "--quiet", "--json", "--max-drop", "1",
                 "--data-dir", str(toy_mnist_dir)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["target"]["value"] == meta["value"]  # the same search, the same choice
    assert got["target"]["tries"] == len(got["target"]["all"])
    # the search's record (resumed by a killed run) is gone once it has ended
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fnn.vrd", "j.vrd"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "fnn", "--max-drop", "-2"], ">= 0"),
    (["--model", "fnn", "--max-drop", "0.5", "--snr", "20"], "not both"),
    (["--model", "fnn", "--max-drop", "0.5", "--size", "20KB"], "two targets"),
    (["--model", "fnn", "--max-drop", "0.5", "--codec", "zstd"], "no fidelity setting"),
])
def test_command_line_bad_requests(fnn_file: Path, toy_mnist_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], argv: list[str],
                                   message: str) -> None:
    capsys.readouterr()
    out = tmp_path / "x.vrd"
    assert main(["compress", str(fnn_file), "-o", str(out), "--quiet",
                 "--data-dir", str(toy_mnist_dir), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_command_line_without_a_task(fnn_file: Path, toy_mnist_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A file that names its model (`vaecompress train` writes it) has its task; a bare one
    needs --model or --arch."""
    from vaecompress.io import load_weights_file, save_weights_file

    state, meta = load_weights_file(fnn_file)
    assert meta.get("vaecompress.model") == "fnn"
    bare = tmp_path / "bare.safetensors"
    save_weights_file(bare, state)
    capsys.readouterr()
    out = tmp_path / "x.vrd"
    assert main(["compress", str(bare), "-o", str(out), "--quiet", "--max-drop", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the model's task" in err[0] and not out.exists()
    assert main(["compress", str(fnn_file), "-o", str(out), "--quiet", "--no-eval",
                 "--max-drop", "2", "--data-dir", str(toy_mnist_dir)]) == 0
    assert loads(out.read_bytes()).meta[TARGET_KEY]["knob"] == "snr"


def test_command_line_series_refuses(fnn_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["compress", str(fnn_file), str(fnn_file), "-o", str(tmp_path / "s.vrd"),
                 "--max-drop", "0.5", "--quiet"]) == 2
    assert "one model" in capsys.readouterr().err


def test_library_and_command_line_alike(fnn_file: Path, toy_mnist_dir: Path,
                                        tmp_path: Path) -> None:
    """compress_within with the task the command line builds gives the command line's file."""
    from vaecompress.data import load_mnist
    from vaecompress.io import load_weights_file
    from vaecompress.tasks.mnist import mnist_probe, mnist_validation
    from vaecompress.zoo.arch import load_network, zoo_arch

    out = tmp_path / "cli.vrd"
    assert main(["compress", str(fnn_file), "-o", str(out), "--model", "fnn", "--quiet",
                 "--no-eval", "--max-drop", "2", "--data-dir", str(toy_mnist_dir)]) == 0
    state, _ = load_weights_file(fnn_file)
    arch = zoo_arch("fnn")
    train, _ = load_mnist(toy_mnist_dir)
    val = mnist_validation(lambda st: load_network(arch, st, source="x"), train,
                           normalize=arch.normalize)
    res = compress_within(state, max_drop=2, validation=val,
                          ctx=CodecContext(progress=False, probe=mnist_probe(arch.build())),
                          meta={"vaecompress.model": "fnn"})
    assert loads(res.data).codec == loads(out.read_bytes()).codec
    assert loads(res.data).payloads[0].data == loads(out.read_bytes()).payloads[0].data


def test_against_a_base() -> None:
    """With --base the search moves the change's SNR and measures the model rebuilt with the
    base added back; it finds a smaller file than the default's near-lossless one."""
    base = _state()
    gen = torch.Generator().manual_seed(1)
    ft = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    val = _error_points(ft)
    res = compress_within(ft, max_drop=1.0, validation=val, ctx=CTX, base=base)
    assert res.rebuilt is not None and 100.0 - val.score(res.rebuilt) <= 1.0
    back = decompress(res.data, base=base)
    assert all(torch.equal(back[k], res.rebuilt[k]) for k in ft)
    t = res.report["target"]
    assert t["knob"] == "change_snr" and loads(res.data).codec["settings"]["snr"] == 1.0
    plain = compress(ft, ctx=CTX, base=base)  # the default, near-lossless: larger
    assert len(res.data) < len(plain.data)


def test_command_line_task_aware_codec_searches_lam(fnn_file: Path, toy_mnist_dir: Path,
                                                    tmp_path: Path) -> None:
    """`--codec vae-rd --finetune --max-drop D`: the search moves lam, each try a training."""
    out = tmp_path / "rd.vrd"
    assert main(["compress", str(fnn_file), "-o", str(out), "--model", "fnn", "--quiet",
                 "--codec", "vae-rd", "--finetune", "--set", "epochs=0.2", "--max-drop", "3",
                 "--data-dir", str(toy_mnist_dir)]) == 0
    c = loads(out.read_bytes())
    meta = c.meta[TARGET_KEY]
    assert meta["knob"] == "lam" and meta["drop"] <= 3
    assert c.codec["settings"]["lam"] == meta["value"] and meta["tries"] <= 8


def test_top_level_names() -> None:
    import vaecompress

    assert vaecompress.compress_within is compress_within
    assert vaecompress.Validation is Validation
    assert {"compress_within", "Validation"} <= set(vaecompress.__all__)


def _fine_tune(base_file: Path, folder: Path, *, scale: float, seed: int) -> Path:
    """A stand-in fine-tune of the model in `base_file`: each tensor moved by Gaussian noise of
    `scale` times its own spread, saved as `folder/ft.safetensors`."""
    from vaecompress.io import load_weights_file, save_weights_file

    base, _ = load_weights_file(base_file)
    gen = torch.Generator().manual_seed(seed)
    ft = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    path = folder / "ft.safetensors"
    save_weights_file(path, ft)
    return path


def test_command_line_against_a_base(fnn_file: Path, toy_mnist_dir: Path,
                                     tmp_path: Path) -> None:
    """`--base --max-drop`: the change's own SNR searched; the file decodes with the base."""
    ft_file = _fine_tune(fnn_file, tmp_path, scale=0.1, seed=3)
    out = tmp_path / "ft.vrd"
    assert main(["compress", str(ft_file), "-o", str(out), "--model", "fnn", "--quiet",
                 "--base", str(fnn_file), "--max-drop", "1",
                 "--data-dir", str(toy_mnist_dir)]) == 0
    meta = loads(out.read_bytes()).meta[TARGET_KEY]
    assert meta["knob"] == "change_snr" and meta["drop"] <= 1
    back = tmp_path / "back.safetensors"
    assert main(["decompress", str(out), "--base", str(fnn_file), "-o", str(back)]) == 0


def test_lost_change_under_max_drop_names_max_drop(fnn_file: Path, toy_mnist_dir: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A generous `--max-drop` against a base may keep little of the change; the warning then
    points at `--max-drop`, not at `--set change_snr` (which would replace the search's knob)."""
    ft_file = _fine_tune(fnn_file, tmp_path, scale=0.01, seed=4)
    out = tmp_path / "ft.vrd"
    assert main(["compress", str(ft_file), "-o", str(out), "--model", "fnn",
                 "--base", str(fnn_file), "--max-drop", "50",
                 "--data-dir", str(toy_mnist_dir)]) == 0
    printed = capsys.readouterr().out
    assert "warning: most of the change from the base is lost" in printed
    assert "a smaller --max-drop keeps more of the change" in printed
    assert "--set change_snr" not in printed


class _Killed(Exception):
    """Stands for the kill of a search in the middle of a try."""


def _killed_after(val: Validation, scores: int) -> Validation:
    """`val`, whose score raises after `scores` calls (the first is the original's)."""
    calls = [0]

    def score(state: Mapping[str, torch.Tensor]) -> float:
        calls[0] += 1
        if calls[0] > scores:
            raise _Killed
        return val.score(state)

    return Validation(score, val.unit, val.data)


def _counting(val: Validation) -> tuple[Validation, list[int]]:
    calls = [0]

    def score(state: Mapping[str, torch.Tensor]) -> float:
        calls[0] += 1
        return val.score(state)

    return Validation(score, val.unit, val.data), calls


@pytest.mark.parametrize("when", ["first", "middle", "after the best"])
def test_a_killed_search_resumes_and_gives_the_same_file(tmp_path: Path, when: str) -> None:
    """Killed in its first try, a middle one, or one after the try of the file it keeps, the
    search run again takes the tries before from its record, runs only the others, and writes
    the uninterrupted search's file (in the last case the value it keeps was measured before
    the kill, and is compressed again); the record is gone at the end."""
    state = _state()
    val = _error_points(state)
    for max_drop in (5.0, 0.5, 30.0, 2.0, 10.0, 1.0, 60.0):  # one that tries on after its best
        whole = compress_within(state, max_drop=max_drop, validation=val, ctx=CTX)
        target = whole.report["target"]
        best = [a["value"] for a in target["all"]].index(target["value"])
        if when != "after the best" or best < target["tries"] - 1:
            break
    else:
        raise AssertionError("every search here ends on the file it keeps")
    tries = target["tries"]
    kill_after = {"first": 1, "middle": tries // 2, "after the best": best + 2}[when]
    ctx = CodecContext(progress=False, checkpoint=tmp_path / ".m.vrd.checkpoint")
    record = tmp_path / ".m.vrd.checkpoint.search"
    with pytest.raises(_Killed):
        compress_within(state, max_drop=max_drop, validation=_killed_after(val, kill_after),
                        ctx=ctx)
    assert record.is_file() == (kill_after > 1)  # a try measured, recorded
    counted, calls = _counting(val)
    res = compress_within(state, max_drop=max_drop, validation=counted, ctx=ctx)
    assert res.data == whole.data
    assert res.report["target"]["all"] == target["all"]
    # the original's score, and the tries the killed run had not measured
    assert calls[0] == 1 + tries - (kill_after - 1)
    assert not record.exists() and not list(tmp_path.iterdir())


def test_a_record_of_another_search_is_ignored(tmp_path: Path) -> None:
    state = _state()
    val = _error_points(state)
    ctx = CodecContext(progress=False, checkpoint=tmp_path / ".m.vrd.checkpoint")
    with pytest.raises(_Killed):
        compress_within(state, max_drop=5.0, validation=_killed_after(val, 4), ctx=ctx)
    counted, calls = _counting(val)
    with pytest.warns(UserWarning, match="other settings or inputs"):
        res = compress_within(state, max_drop=0.5, validation=counted, ctx=ctx)
    assert calls[0] == 1 + res.report["target"]["tries"]  # every try run afresh
    assert res.data == compress_within(state, max_drop=0.5, validation=val, ctx=CTX).data
    # the same search, said by its caller to read other data (the command line: other flags)
    with pytest.raises(_Killed):
        compress_within(state, max_drop=5.0, validation=_killed_after(val, 4), ctx=ctx,
                        identity={"distill": False})
    counted, calls = _counting(val)
    with pytest.warns(UserWarning, match="other settings or inputs"):
        res = compress_within(state, max_drop=5.0, validation=counted, ctx=ctx,
                              identity={"distill": True})
    assert calls[0] == 1 + res.report["target"]["tries"]


@pytest.mark.parametrize("damage", ["garbage", "not a list", "nan", "negative"])
def test_a_damaged_record_is_ignored(tmp_path: Path, damage: str) -> None:
    from vaecompress.checkpoint import Checkpoint, fingerprint
    from vaecompress.target import _search_record

    state = _state()
    val = _error_points(state)
    ctx = CodecContext(progress=False, checkpoint=tmp_path / ".m.vrd.checkpoint")
    record = tmp_path / ".m.vrd.checkpoint.search"
    if damage == "garbage":
        record.write_bytes(b"\x80\x02not a checkpoint")
    else:
        # a record of this very search (its fingerprint), holding what no run writes
        good = _search_record(ctx, "vae-rd-free", {}, 5.0, val, 100.0, state, None, None)
        rows: object = {"not a list": "tries", "nan": [{"value": math.nan, "drop": 0.0,
                                                        "bytes": 10}],
                        "negative": [{"value": 20.0, "drop": 0.0, "bytes": -1}]}[damage]
        Checkpoint(record, kind="max_drop", fingerprint=good.fingerprint).save({"tries": rows})
        assert good.fingerprint != fingerprint("max_drop", {})
    counted, calls = _counting(val)
    with pytest.warns(UserWarning, match="ignoring checkpoint"):
        res = compress_within(state, max_drop=5.0, validation=counted, ctx=ctx)
    assert calls[0] == 1 + res.report["target"]["tries"]
    assert not record.exists()


def test_an_unreachable_target_removes_the_record(tmp_path: Path) -> None:
    state = _state()

    def score(s: Mapping[str, torch.Tensor]) -> float:
        return 100.0 if all(torch.equal(s[k], v) for k, v in state.items()) else 0.0

    ctx = CodecContext(progress=False, checkpoint=tmp_path / ".m.vrd.checkpoint")
    with pytest.raises(UserError, match="no snr"):
        compress_within(state, max_drop=1.0, validation=Validation(score, "points", "exact"),
                        ctx=ctx)
    assert not list(tmp_path.iterdir())
