"""The command line as a user meets it: exit codes, one-line errors, no half-written files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import mnist_accuracy
from vaecompress.cli import main
from vaecompress.format import FORMAT_VERSION

FAST = ["--codec", "vae-paper", "--set", "epochs=8", "--set", "n_variants=10",
        "--set", "hidden=[64]", "--quiet"]


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("vaecompress: error:")
    return err


@pytest.fixture(scope="module", autouse=True)
def toy_data_by_default(toy_mnist_dir: Path) -> Iterator[None]:
    """compress measures a zoo model's accuracy on MNIST: the toy set here, never a download."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAECOMPRESS_DATA_DIR", str(toy_mnist_dir))
        yield


@pytest.fixture(scope="module")
def data(toy_mnist_dir: Path) -> list[str]:
    return ["--data-dir", str(toy_mnist_dir)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, data: list[str]) -> Path:
    path = tmp_path_factory.mktemp("w") / "rnn.safetensors"
    assert main(["train", "rnn", "-o", str(path), "--epochs", "1", "--quiet", *data]) == 0
    return path


@pytest.fixture(scope="module")
def packed(weights: Path) -> Path:
    out = weights.with_suffix(".vaec")
    assert main(["compress", str(weights), "-o", str(out), "--model", "rnn", *FAST]) == 0
    return out


def test_train_then_evaluate_json(
    weights: Path, data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(weights), "--json", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "rnn" and res["n"] == 200
    assert res["accuracy"] == pytest.approx(mnist_accuracy(weights, "rnn", Path(data[1])),
                                            abs=1e-6)


def test_compress_decompress_evaluate(
    packed: Path, weights: Path, tmp_path: Path, data: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert main(["inspect", str(packed), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accounting"]
    for field in (
        "params",
        "orig_bytes",
        "payload_bytes",
        "file_bytes",
        "external_bytes",
        "ratio_paper",
        "ratio_honest",
        "ratio_amortized",
    ):
        assert field in acc
    assert acc["params"] == 54_538 and acc["ratio_paper"] > 30
    rebuilt = tmp_path / "rebuilt.safetensors"
    assert main(["decompress", str(packed), "-o", str(rebuilt)]) == 0
    assert main(["evaluate", str(rebuilt), "--model", "rnn", "--json", *data]) == 0


def test_external_decoder_flow(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, dec = tmp_path / "m.vaec", tmp_path / "dec.safetensors"
    assert main(["compress", str(weights), "-o", str(out), "--decoder-out", str(dec), *FAST]) == 0
    assert dec.is_file()
    assert main(["decompress", str(out), "-o", str(tmp_path / "r.safetensors")]) == 2
    assert "--decoder" in _err_line(capsys)
    assert (
        main(["decompress", str(out), "-o", str(tmp_path / "r.safetensors"), "--decoder", str(dec)])
        == 0
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(dec.read_bytes()[:-1] + b"\x00")
    target = tmp_path / "never.safetensors"
    assert main(["decompress", str(out), "-o", str(target), "--decoder", str(bad)]) == 2
    assert "does not match" in _err_line(capsys)
    assert not target.exists()
    # The generic spelling, and an external that lies beside the file under its default name.
    assert main(["decompress", str(out), "-o", str(target), "--external", f"decoder={dec}"]) == 0
    (tmp_path / "m.vaec.decoder.safetensors").write_bytes(dec.read_bytes())
    assert main(["decompress", str(out), "-o", str(tmp_path / "r2.safetensors")]) == 0


def test_external_out_default_path_and_unknown_names(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.vaec"
    ext = ["--set", "external_decoder=true"]
    assert main(["compress", str(weights), "-o", str(out), *ext, *FAST]) == 0
    assert (tmp_path / "e.vaec.decoder.safetensors").is_file()
    argv = ["decompress", str(out), "-o", str(tmp_path / "r.safetensors")]
    assert main([*argv, "--external", f"prior={out}"]) == 2
    assert "references no external 'prior'" in _err_line(capsys)
    argv = ["compress", str(weights), "-o", str(tmp_path / "z.vaec"), "--codec", "zstd"]
    assert main([*argv, "--decoder-out", str(tmp_path / "d")]) == 2
    assert "writes no external 'decoder'" in _err_line(capsys)
    assert main([*argv, "--external-out", "decoder"]) == 2
    assert "NAME=VALUE" in _err_line(capsys)


def test_latent_is_checked_against_the_chosen_codec(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never.vaec"
    argv = ["compress", str(weights), "-o", str(out), "--codec", "int8", "--latent", "8"]
    assert main(argv) == 2
    assert "no setting 'latent'" in _err_line(capsys)
    assert main(["compress", str(weights), "-o", str(out), "--codec", "vae-paper",
                 "--latent", "0"]) == 2
    assert "latent must be a positive integer" in _err_line(capsys)
    assert main(["compress", str(weights), "-o", str(out), "--codec", "int8",
                 "--set", "granularity=row"]) == 2
    assert "granularity" in _err_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "magic"])
def test_damaged_files_exit_2_and_write_nothing(
    packed: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(packed.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF
    elif damage == "version":
        data[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    else:
        data[:4] = b"PK\x03\x04"
    bad = tmp_path / "bad.vaec"
    bad.write_bytes(bytes(data))
    target = tmp_path / "out.safetensors"
    assert main(["decompress", str(bad), "-o", str(target)]) == 2
    err = _err_line(capsys)
    expected = {
        "truncate": "truncated",
        "flip": "corrupt",
        "version": "version",
        "magic": "not a vaecompress file",
    }[damage]
    assert expected in err
    assert not target.exists() and not list(tmp_path.glob(".out*"))
    assert main(["inspect", str(bad)]) == 2


def test_wrong_architecture_is_exit_2(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(weights), "--model", "lstm"]) == 2
    assert "lstm" in _err_line(capsys)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["evaluate", "/nonexistent.safetensors", "--model", "fnn"], "no such file"),
        (["train", "resnet", "-o", "x.safetensors"], "unknown model"),
        (["compress", "/nonexistent.safetensors", "-o", "x.vaec"], "no such file"),
        (["frobnicate"], "invalid choice"),
        (["train", "fnn"], "required"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert fragment in _err_line(capsys)


def test_usage_error_names_the_command_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "fnn"]) == 2
    assert _err_line(capsys) == ("vaecompress: error: train: the following arguments are "
                                 "required: -o/--output")
    assert main(["zoo", "--frob"]) == 2  # reported by the top-level parser
    assert _err_line(capsys) == "vaecompress: error: unrecognized arguments: --frob"


def test_not_safetensors_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["evaluate", str(junk), "--model", "fnn"]) == 2
    assert "safetensors" in _err_line(capsys)


def test_missing_data_dir_says_how_to_supply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "--data-dir", str(tmp_path)]) == 2
    assert "--data-dir" in _err_line(capsys)


def test_internal_error_is_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vaecompress.cli import models

    def boom(args: object) -> int:
        raise RuntimeError("bug")

    monkeypatch.setattr(models, "cmd_zoo", boom)  # the parser looks its handlers up there
    assert main(["zoo"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_compress_with_a_baseline_and_finetune(
    weights: Path, tmp_path: Path, data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.vaec"
    argv = [
        "compress",
        str(weights),
        "-o",
        str(out),
        "--codec",
        "prune",
        "--finetune",
        "--set",
        "sparsity=0.5",
        "--set",
        "finetune_epochs=0.05",
        "--json",
        "--quiet",
        *data,
    ]
    assert main(argv) == 0
    acc = json.loads(capsys.readouterr().out)
    assert acc["codec"] == "prune" and acc["ratio_honest"] > 1.0
    assert main(["decompress", str(out), "-o", str(tmp_path / "p.safetensors")]) == 0


def test_default_codec_needs_no_data_and_never_makes_the_file_larger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --codec: the data-free RD codec; a model it cannot shrink falls back to lossless."""
    from vaecompress.io import load_weights_file, save_weights_file

    torch.manual_seed(0)
    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"w": torch.randn(64, 64) * 0.05, "b": torch.randn(64) * 0.01}, {})
    out = tmp_path / "m.vaec"
    assert main(["compress", str(src), "-o", str(out), "--set", "steps=30", "--quiet"]) == 0
    from vaecompress.format import load as load_container

    assert load_container(out).codec["name"] == "vae-rd-free"
    assert out.stat().st_size < src.stat().st_size
    tiny = tmp_path / "t.safetensors"
    save_weights_file(tiny, {"w": torch.randn(3)}, {})
    out2 = tmp_path / "t.vaec"
    assert main(["compress", str(tiny), "-o", str(out2), "--set", "steps=5", "--quiet"]) == 0
    assert load_container(out2).codec["name"] == "zstd"
    assert "lossless" in capsys.readouterr().err
    assert load_weights_file(src)[0].keys() == {"w", "b"}


def test_task_codec_without_data_warns_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vaecompress.io import save_weights_file

    src = tmp_path / "m.safetensors"
    save_weights_file(src, {"w": torch.randn(16, 16)}, {})
    assert main(["compress", str(src), "-o", str(tmp_path / "o"), "--codec", "prune"]) == 0
    assert "without --finetune" in capsys.readouterr().err
    assert main(["compress", str(src), "-o", str(tmp_path / "o2"), "--codec", "vae-rd"]) == 2
    assert "needs its data" in capsys.readouterr().err


def test_the_retraining_warning_is_for_settings_that_retrain(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kmeans and bitdelta retrain on the task only with finetune_epochs > 0: without it there
    is nothing to warn of; with it and without --finetune, the warning says so."""
    capsys.readouterr()
    assert main(["compress", str(weights), "-o", str(tmp_path / "k.vaec"),
                 "--codec", "kmeans"]) == 0
    assert "retrains on the task" not in capsys.readouterr().err
    assert main(["compress", str(weights), "-o", str(tmp_path / "b.vaec"), "--codec",
                 "bitdelta", "--set", "finetune_epochs=1"]) == 0
    assert "bitdelta retrains on the task" in capsys.readouterr().err
