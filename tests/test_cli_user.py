"""The command line for a new user (issue 13): help that is enough to use each command, the
total size in `inspect`, the rebuilt model's accuracy beside the ratios, and a fast start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import mnist_accuracy
from vaecompress.cli import build_parser, main
from vaecompress.io import save_weights_file


def _help(*argv: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return ""


def test_help_describes_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert "Typical session" in parser.description and "docstring" not in parser.description
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.dest} has no help"
        assert sp.description, name
    _help("compress")
    out = capsys.readouterr().out
    assert "vae-rd-free (default" in out and "embedded" not in out
    assert "--no-eval" in out


def test_inspect_prints_the_total_size(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"w": torch.randn(64, 64) * 0.1})
    out = tmp_path / "m.vaec"
    assert main(["compress", str(src), "-o", str(out), "--codec", "vae-paper", "--quiet",
                 "--set", "epochs=1", "--set", "n_variants=4", "--set", "chunk_size=256",
                 "--set", "hidden=[8]", "--latent", "4", "--decoder-out",
                 str(tmp_path / "d.safetensors")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    ext = (tmp_path / "d.safetensors").stat().st_size
    size = out.stat().st_size
    assert f"file {size:,} B + externals {ext:,} B = {size + ext:,} B" in text


def test_compress_reports_the_rebuilt_accuracy(tmp_path: Path, toy_mnist_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(toy_mnist_dir)]
    weights = tmp_path / "fnn.safetensors"
    assert main(["train", "fnn", "-o", str(weights), "--epochs", "1", "--quiet", *data]) == 0
    out = tmp_path / "fnn.vaec"
    argv = ["compress", str(weights), "-o", str(out), "--codec", "kmeans", "--set", "bits=1",
            "--quiet", *data]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_test"] == 200
    rebuilt = tmp_path / "rebuilt.safetensors"
    assert main(["decompress", str(out), "-o", str(rebuilt)]) == 0
    capsys.readouterr()
    assert res["accuracy_rebuilt"] == pytest.approx(
        mnist_accuracy(rebuilt, "fnn", toy_mnist_dir), abs=1e-6)
    assert res["accuracy_original"] == pytest.approx(
        mnist_accuracy(weights, "fnn", toy_mnist_dir), abs=1e-6)
    assert main(["evaluate", str(weights), "--json", *data]) == 0
    assert res["accuracy_original"] == json.loads(capsys.readouterr().out)["accuracy"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "rebuilt from the file" in text and "points lost" in text
    assert main([*argv, "--no-eval", "--json"]) == 0
    assert "accuracy_rebuilt" not in json.loads(capsys.readouterr().out)


def test_help_and_zoo_do_not_import_torch() -> None:
    code = ("import sys\nfrom vaecompress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['zoo'])\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'vaecompress.codecs') "
            "if m in sys.modules]\nprint('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out and "185,300" in out


def test_compress_without_reachable_mnist_still_compresses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Measuring the rebuilt accuracy is a courtesy: offline without MNIST, the file is still
    written, with one warning line (with --finetune the data is required)."""
    from vaecompress.io import save_weights_file
    from vaecompress.zoo import build_model

    weights = tmp_path / "fnn.safetensors"
    save_weights_file(weights, {k: v.detach() for k, v in build_model("fnn").state_dict().items()},
                      {})
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    out = tmp_path / "fnn.vaec"
    argv = ["compress", str(weights), "-o", str(out), "--model", "fnn", "--codec", "int8",
            "--quiet", "--data-dir", str(empty)]
    assert main(argv) == 0 and out.is_file()
    assert "will not be measured" in capsys.readouterr().err
    assert main([*argv, "--finetune", "--codec", "prune"]) == 2


def test_inspect_shows_what_the_codec_chose(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The SNR reached and the weighting of vae-rd-free, read from the header by `inspect` (in
    a line, and whole in --json); a state a file was given by anyone is shown, cut short."""
    from vaecompress.cli.decompress import STATE_SHOWN, _state_line

    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"w": torch.randn(64, 64) * 0.1, "b": torch.randn(64) * 0.01})
    out = tmp_path / "m.vrd"
    assert main(["compress", str(src), "-o", str(out), "--snr", "20", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("codec state: "))
    assert "snr_db 20" in line and "weighting relative" in line
    assert main(["inspect", str(out), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)["codec_state"]
    assert state["weighting"] == "relative" and abs(state["snr_db"] - 20) < 0.5
    hostile = {f"k{i}": i for i in range(STATE_SHOWN + 3)} | {"nested": {"a": 1},
                                                               "long": "x" * 500}
    shown = _state_line(hostile)
    assert "nested" not in shown and shown.endswith("(4 more)")  # 12 scalars, 8 shown
    assert "x" * 80 in _state_line({"long": "x" * 500}) and "x" * 81 not in _state_line(
        {"long": "x" * 500})
    assert _state_line(["not", "a", "dict"]) == "" and _state_line({}) == ""
