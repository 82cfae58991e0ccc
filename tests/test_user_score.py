"""`compress --score module:function`: the user's own measure of the weights, printed for the
rebuilt model, and the judge of --max-drop on any model."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vaecompress.cli import main
from vaecompress.format import loads
from vaecompress.target import TARGET_KEY


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small weights file, and in the working directory a module of score functions named
    after the test (so that no two tests import the same module name)."""
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(64, 48, generator=gen) * 0.1,
               "a.bias": torch.randn(64, generator=gen) * 0.01,
               "b.weight": torch.randn(10, 64, generator=gen) * 0.3}, str(path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def _module(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    name = "score_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import torch
        from safetensors.torch import load_file

        REF = load_file({str(tmp_path / "m.safetensors")!r})
        CALLS = []

        def accuracy(state):
            # 100 points minus 100 times the summed relative squared error
            CALLS.append(1)
            return 100.0 - 100.0 * sum(float((state[k] - v).pow(2).sum() / v.pow(2).sum())
                                       for k, v in REF.items())

        def as_tensor(state):
            return torch.tensor(accuracy(state))

        def broken(state):
            raise ValueError("my data is missing\\nsecond line")

        def nan(state):
            return float("nan")

        def text(state):
            return "high"

        NOT_A_FUNCTION = 3
    """))
    sys.modules.pop(name, None)
    return name


def test_prints_the_rebuilt_models_score(model: Path, tmp_path: Path,
                                         request: pytest.FixtureRequest,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module(tmp_path, request)
    assert main(["compress", str(model), "-o", "o.vrd", "--score", f"{mod}:accuracy",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"your score ({mod}:accuracy) of the rebuilt model: " in out
    assert "the input's 100 (lost 0.1" in out  # the default's 30 dB: 1e-3 of the energy
    assert main(["compress", str(model), "-o", "j.vrd", "--score", f"{mod}:as_tensor",
                 "--quiet", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["score_input"] == 100.0 and got["score_function"] == f"{mod}:as_tensor"
    assert got["score_drop"] == pytest.approx(got["score_input"] - got["score"])
    assert 0 < got["score_drop"] < 0.2


@pytest.mark.parametrize("codec", [None, "nncodec"])
def test_max_drop_is_judged_by_the_score(model: Path, tmp_path: Path,
                                         request: pytest.FixtureRequest,
                                         capsys: pytest.CaptureFixture[str],
                                         codec: str | None) -> None:
    from vaecompress.codecs import REGISTRY

    if codec is not None and REGISTRY[codec].available() is not None:
        pytest.skip(f"{codec} is not installed")
    mod = _module(tmp_path, request)
    argv = ["compress", str(model), "-o", "o.vrd", "--score", f"{mod}:accuracy",
            "--max-drop", "2", "--quiet"] + (["--codec", codec] if codec else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    meta = loads((tmp_path / "o.vrd").read_bytes()).meta[TARGET_KEY]
    assert meta["validation"] == f"your score {mod}:accuracy" and meta["unit"] == "score"
    assert 0 < meta["drop"] <= 2
    assert f"lost on your score {mod}:accuracy" in out
    # the printed score is the searched one: the same function on the same rebuilt weights
    assert f"(lost {meta['drop']:.4g})" in out
    # the input was scored once, each try once; the file kept is printed with the score its
    # try measured, not scored again
    assert len(sys.modules[mod].CALLS) == 1 + meta["tries"]
    assert main(["inspect", "o.vrd"]) == 0
    assert (f"({meta['drop']:.4g} lost on your score {mod}:accuracy, {meta['tries']} files tried)"
            in capsys.readouterr().out)


@pytest.mark.parametrize(("function", "message"), [
    ("broken", "--score {m}:broken raised ValueError: my data is missing"),
    ("nan", "--score {m}:nan returned float 'nan', not a finite number"),
    ("text", "--score {m}:text returned str 'high', not a finite number"),
    ("NOT_A_FUNCTION", "--score: '{m}:NOT_A_FUNCTION' is a int, not a function of a "
                       "state_dict"),
    ("missing", "--score: cannot import '{m}:missing': {m} has no 'missing'"),
])
def test_a_bad_score_is_one_line_before_the_work(model: Path, tmp_path: Path,
                                                 request: pytest.FixtureRequest,
                                                 capsys: pytest.CaptureFixture[str],
                                                 function: str, message: str) -> None:
    mod = _module(tmp_path, request)
    capsys.readouterr()
    assert main(["compress", str(model), "-o", "o.vrd", "--score", f"{mod}:{function}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vaecompress: error: " + message.format(m=mod)
    assert not (tmp_path / "o.vrd").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--score", "nomodule_xyz:f"], "no module named 'nomodule_xyz'"),
    (["--score", "justaname"], "module.path:function"),
    (["--score", "x:f", "--no-eval"], "give one"),
    (["--max-drop", "1"], "--score module:function"),
])
def test_bad_requests(model: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                      message: str) -> None:
    assert main(["compress", str(model), "-o", "o.vrd", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_series_refuses_a_score(model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(model), str(model), "-o", "s.vrd", "--score", "x:f",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--score measures one model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.vrd").exists()


def test_a_score_is_remembered_only_for_the_same_tensors() -> None:
    """The same tensor objects are not scored twice; equal values in other tensors are, and a
    state that was freed leaves nothing behind."""
    from vaecompress.tasks.user import UserScore

    calls: list[int] = []

    def fn(state: dict) -> float:
        calls.append(1)
        return float(sum(v.sum() for v in state.values()))

    original = {"w": torch.ones(3)}
    user = UserScore("m:fn", fn, original)
    rebuilt = {"w": torch.full((3,), 0.5)}
    assert user.score(rebuilt) == 1.5 and user.score(dict(rebuilt)) == 1.5
    assert len(calls) == 1
    assert user.score({"w": torch.full((3,), 0.5)}) == 1.5  # equal values, other tensors
    assert len(calls) == 2
    rebuilt["w"].fill_(0.25)  # the same tensor changed in place: remembered (documented)
    assert user.score(rebuilt) == 1.5 and len(calls) == 2
    del rebuilt
    import gc

    gc.collect()
    kept = {"w": torch.zeros(2)}
    user.score(kept)
    assert len(user._seen) == 1 and user._seen[0][0][0]() is kept["w"]
    assert user.score(original) == 3.0 and user.score(original) == 3.0 and len(calls) == 4
