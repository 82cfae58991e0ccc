"""`compress --distill` and `--sentences` (issue 19): fine-tuning without labels from the command
line, the input model as the teacher, for a zoo model, an `--arch` classifier and MiniLM; every
bad input one line and exit 2, before any work."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from test_cli import _err_line
from vaecompress.cli import main
from vaecompress.io import save_weights_file
from vaecompress.zoo import minilm

needs_minilm = pytest.mark.skipif(minilm.missing() is not None,
                                  reason="optional extra 'minilm' not installed")
PRUNE = ["--codec", "prune", "--set", "sparsity=0.8", "--set", "finetune_epochs=2"]


@pytest.fixture(scope="module")
def data(toy_mnist_dir: Path) -> list[str]:
    return ["--data-dir", str(toy_mnist_dir)]


@pytest.fixture(scope="module")
def fnn(tmp_path_factory: pytest.TempPathFactory, data: list[str]) -> Path:
    path = tmp_path_factory.mktemp("w") / "fnn.safetensors"
    assert main(["train", "fnn", "-o", str(path), "--epochs", "1", "--quiet", *data]) == 0
    return path


def test_distill_a_zoo_model_prints_what_it_uses(fnn: Path, tmp_path: Path, data: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    out = tmp_path / "fnn.prune"
    assert main(["compress", str(fnn), "-o", str(out), *PRUNE, "--distill", *data]) == 0
    cap = capsys.readouterr()
    assert ("vaecompress: distilling fnn from the input model (the teacher): KL divergence of "
            "the predictions, on 600 MNIST training images, labels unused (4 steps an epoch)"
            in cap.err)
    assert "rebuilt from the file" in cap.out and "loss" in cap.err  # the retraining ran
    assert main(["compress", str(fnn), "-o", str(tmp_path / "j.prune"), *PRUNE, "--distill",
                 "--json", "--quiet", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["finetune"].startswith("distilling fnn") and res["codec"] == "prune"
    assert "accuracy_rebuilt" in res
    assert main(["decompress", str(out), "-o", str(tmp_path / "r.safetensors")]) == 0


def test_distillation_recovers_what_pruning_lost(fnn: Path, tmp_path: Path, data: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The retraining is the distiller's: the rebuilt predictions are closer to the input
    model's than without retraining, and plain --finetune is unchanged beside it."""
    from vaecompress.data import load_mnist
    from vaecompress.data.mnist import to_tensors
    from vaecompress.io import load_weights_file
    from vaecompress.zoo.arch import load_network, zoo_arch

    arch = zoo_arch("fnn")
    _, test = load_mnist(Path(data[1]))
    x, _ = to_tensors(test, normalize=arch.normalize)
    with torch.no_grad():
        want = load_network(arch, load_weights_file(fnn)[0], source="t")(x).log_softmax(-1)

    def kl(flags: list[str]) -> float:
        out = tmp_path / f"m{len(flags)}.prune"
        assert main(["compress", str(fnn), "-o", str(out), *PRUNE, "--quiet", "--no-eval",
                     *flags, *data]) == 0
        rebuilt = tmp_path / f"m{len(flags)}.safetensors"
        assert main(["decompress", str(out), "-o", str(rebuilt)]) == 0
        with torch.no_grad():
            got = load_network(arch, load_weights_file(rebuilt)[0], source="r")(x)
        return float(torch.nn.functional.kl_div(got.log_softmax(-1), want, log_target=True,
                                                reduction="batchmean"))

    assert kl(["--distill"]) < 0.5 * kl([])
    kl(["--finetune"])  # labels, as before
    assert "distilling" not in capsys.readouterr().err


@pytest.fixture
def user_mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"distill_mlp_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(
        "from torch import nn\n\n"
        "class MLP(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16),\n"
        "                                 nn.ReLU(), nn.Linear(16, 10))\n\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n")
    yield f"{name}:MLP"
    sys.modules.pop(name, None)


def test_distill_an_arch_classifier_with_a_wrapper_prefix(
        user_mlp: str, tmp_path: Path, data: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 10))
    weights = tmp_path / "mlp.safetensors"  # names as DataParallel saves them
    save_weights_file(weights, {f"module.net.{k}": v for k, v in mlp.state_dict().items()})
    out = tmp_path / "mlp.prune"
    capsys.readouterr()
    assert main(["compress", str(weights), "-o", str(out), *PRUNE, "--distill", "--arch",
                 user_mlp, "--normalize", "mnist", "--json", *data]) == 0
    cap = capsys.readouterr()
    assert f"distilling {user_mlp} from the input model" in cap.err
    assert json.loads(cap.out)["n_test"] == 200


def test_bad_distill_inputs_are_one_line_and_exit_2(
        fnn: Path, tmp_path: Path, data: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.safetensors"
    save_weights_file(plain, {"w": torch.randn(8, 8)})
    sentences = tmp_path / "s.txt"
    sentences.write_text("One sentence.\n")
    out = str(tmp_path / "o.vaec")
    cases = [
        (["compress", str(plain), "-o", out, "--codec", "prune", "--distill"],
         "--distill needs the model's architecture"),
        (["compress", str(fnn), "-o", out, "--codec", "prune", "--sentences", str(sentences)],
         "--sentences goes with --model minilm"),
        (["compress", str(fnn), "-o", out, "--model", "minilm", "--arch", "x:Y"],
         "--model minilm knows its own network"),
        (["compress", str(fnn), str(plain), "-o", out, "--distill"],
         "--distill does not apply to a checkpoint series"),
    ]
    for argv, want in cases:
        capsys.readouterr()
        assert main([*argv, *data]) == 2, argv
        assert want in _err_line(capsys)
    assert not Path(out).exists()


@pytest.mark.parametrize(("content", "want"), [
    (b"", "holds no sentences"),
    (b"# only a comment\n\n   \n", "holds no sentences"),
    (b"\xff\xfe not text\n", "is not UTF-8 text"),
    (None, "does not exist"),
    ("folder", "is a folder"),
])
def test_bad_sentence_file_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str | None,
        want: str) -> None:
    weights = tmp_path / "m.safetensors"
    save_weights_file(weights, {"w": torch.randn(4, 4)})
    path = tmp_path / "s.txt"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    out = tmp_path / "m.vaec"
    assert main(["compress", str(weights), "-o", str(out), "--model", "minilm", "--codec",
                 "prune", "--sentences", str(path)]) == 2
    err = _err_line(capsys)
    assert want in err and str(path) in err
    assert not out.exists()


def test_minilm_without_the_extra_gives_the_install_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.PACKAGE else real(name, *a))
    weights = tmp_path / "m.safetensors"
    save_weights_file(weights, {"w": torch.randn(4, 4)})
    sentences = tmp_path / "s.txt"
    sentences.write_text("A sentence.\n")
    for extra in ([], ["--sentences", str(sentences)]):
        assert main(["compress", str(weights), "-o", str(tmp_path / "o"), "--model", "minilm",
                     "--distill", "--codec", "prune", *extra]) == 2
        assert "scripts/setup.sh minilm" in _err_line(capsys)


@needs_minilm
def test_minilm_weights_that_do_not_fit_are_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    state = minilm.load_state()
    del state["pooler.dense.bias"]
    weights = tmp_path / "m.safetensors"
    save_weights_file(weights, state)
    sentences = tmp_path / "s.txt"
    sentences.write_text("A sentence.\n")
    assert main(["compress", str(weights), "-o", str(tmp_path / "o"), "--model", "minilm",
                 "--codec", "prune", "--sentences", str(sentences), "--quiet"]) == 2
    assert "does not hold minilm weights: missing 'pooler.dense.bias'" in _err_line(capsys)


@pytest.mark.slow
@needs_minilm
def test_minilm_distilled_on_a_sentence_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """About 30 s on 2 cores: MiniLM pruned, retrained for two steps on four sentences."""
    sentences = tmp_path / "s.txt"
    sentences.write_text("# mine\nThe cat sat on the mat.\n\nRivers flow to the sea.\n"
                         "Compression makes files smaller.\nA fox jumps over the dog.\n")
    out = tmp_path / "m.prune"
    assert main(["compress", str(minilm.weights_path()), "-o", str(out), "--model", "minilm",
                 "--codec", "prune", "--set", "sparsity=0.3", "--set", "finetune_epochs=2",
                 "--sentences", str(sentences), "--no-eval"]) == 0
    cap = capsys.readouterr()
    assert (f"distilling minilm from the input model (the teacher): 1 - cosine of the "
            f"embeddings, on 4 sentences of {sentences} (1 step an epoch)") in cap.err
    assert "step 2/2" in cap.err and "ratio_honest" in cap.out


def test_bitdelta_refined_by_distillation_against_a_base(fnn: Path, tmp_path: Path,
                                                         data: list[str],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """BitDelta's own recipe from the command line: a fine-tune's delta from its base as sign
    bits and scales, the scales refined by distilling the fine-tune (the input model, the
    teacher) into base + delta (`--distill --base`). The refined file has the same bytes
    but for its settings, and rebuilds predictions closer to the fine-tune's."""
    from vaecompress.data import load_mnist
    from vaecompress.data.mnist import to_tensors
    from vaecompress.io import load_weights_file
    from vaecompress.zoo.arch import load_network, zoo_arch

    base, _ = load_weights_file(fnn)
    g = torch.Generator().manual_seed(0)
    tuned = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=g) if v.dim() == 2 else v
             for k, v in base.items()}  # a dense change of every matrix, as a fine-tune's
    ft = tmp_path / "ft.safetensors"
    save_weights_file(ft, tuned)
    arch = zoo_arch("fnn")
    _, test = load_mnist(Path(data[1]))
    x, _ = to_tensors(test, normalize=arch.normalize)
    with torch.no_grad():
        want = load_network(arch, tuned, source="t")(x).log_softmax(-1)

    def kl(epochs: int) -> tuple[float, int]:
        out = tmp_path / f"e{epochs}.bd"
        extra = ["--distill"] if epochs else []
        assert main(["compress", str(ft), "-o", str(out), "--model", "fnn", "--base", str(fnn),
                     "--codec", "bitdelta", "--set", f"finetune_epochs={epochs}", "--set",
                     "lr=0.05", "--quiet", *extra, *data]) == 0
        rebuilt = tmp_path / f"e{epochs}.safetensors"
        assert main(["decompress", str(out), "-o", str(rebuilt), "--base", str(fnn)]) == 0
        with torch.no_grad():
            got = load_network(arch, load_weights_file(rebuilt)[0], source="r")(x)
        return (float(torch.nn.functional.kl_div(got.log_softmax(-1), want, log_target=True,
                                                 reduction="batchmean")), out.stat().st_size)

    (refined, n_refined), (plain, n_plain) = kl(5), kl(0)
    assert refined < 0.9 * plain, (refined, plain)
    assert abs(n_refined - n_plain) <= 8  # the same payloads; the settings differ


def test_vae_rd_without_data_distils_on_inputs_made_from_the_model(
        fnn: Path, tmp_path: Path, data: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--set synthetic=true`: no --distill, no warning that it runs without retraining, the
    rebuilt model measured; a bare weights file has no classifier to invert: one line, exit 2."""
    out = tmp_path / "fnn.vrd"
    capsys.readouterr()
    assert main(["compress", str(fnn), "-o", str(out), "--codec", "vae-rd", "--set",
                 "synthetic=true", "--set", "snr=4", *data]) == 0
    cap = capsys.readouterr()
    assert "retrains on the task" not in cap.err and "distilling" not in cap.err
    assert "distilled without data, on 18 batches of inputs made from the model" in cap.out
    assert "rebuilt from the file" in cap.out  # the rebuilt model's accuracy, measured
    plain = tmp_path / "plain.safetensors"
    save_weights_file(plain, {"w": torch.randn(8, 8)})
    assert main(["compress", str(plain), "-o", str(tmp_path / "p.vrd"), "--codec", "vae-rd",
                 "--set", "synthetic=true", "--set", "snr=4", *data]) == 2
    assert "needs its architecture" in _err_line(capsys)
