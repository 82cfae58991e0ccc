"""A user's own model (issue 10): `--arch module:Class` on evaluate and compress, the example of
`examples/my_mlp.py` from training to the rebuilt model's accuracy, every bad input as one line
and exit 2, and the public API fine-tuning a model on a task that is not MNIST."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaecompress
from test_cli import _err_line
from vaecompress.cli import main
from vaecompress.io import load_weights_file, save_weights_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module of the user's into the working directory; returns its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # sys.path is restored after the test
    names: list[str] = []

    def write(source: str) -> str:
        name = f"usercode_{tmp_path.name}_{len(names)}".replace("-", "_")
        (tmp_path / f"{name}.py").write_text("import torch\nfrom torch import nn\n\n" + source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


MLP = """
class MLP(nn.Module):
    def __init__(self, hidden=16, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)
"""


@pytest.fixture
def mlp(user_code: Callable[[str], str], tmp_path: Path) -> tuple[str, Path]:
    """(the --arch of a small MLP in the working directory, a .pt of its weights)."""
    name = user_code(MLP)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    path = tmp_path / "mlp.pt"
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, path)
    return f"{name}:MLP", path


def test_example_model_end_to_end(examples: None, tmp_path: Path, toy_mnist_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Train examples/my_mlp.py briefly, then evaluate, compress with fine-tuning, decompress
    and evaluate the rebuilt file, all through the command line."""
    import my_mlp

    data = ["--data-dir", str(toy_mnist_dir)]
    ckpt = tmp_path / "my_mlp.pt"
    my_mlp.main(["-o", str(ckpt), "--epochs", "2", "--hidden", "32", *data])
    original, _ = load_weights_file(ckpt)  # found under "model", "epoch" and "hidden" beside it
    assert "net.2.num_batches_tracked" in original
    arch = ["--arch", "my_mlp:MyMLP", "--arch-kwargs", '{"hidden": 32}']
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), *arch, "--json", *data]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["model"] == "my_mlp:MyMLP" and before["n"] == 200
    assert before["accuracy"] > 50  # the toy digits are easy: it learned them

    packed = tmp_path / "my_mlp.vrd"
    assert main(["compress", str(ckpt), "-o", str(packed), "--codec", "vae-rd", "--finetune",
                 "--set", "epochs=1", *arch, "--json", "--quiet", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy_original"] == before["accuracy"]
    assert res["accuracy_rebuilt"] > 50 and res["ratio_honest"] > 5

    rebuilt = tmp_path / "rebuilt.safetensors"
    assert main(["decompress", str(packed), "-o", str(rebuilt)]) == 0
    state, _ = load_weights_file(rebuilt)
    assert [(k, v.shape, v.dtype) for k, v in state.items()] == \
        [(k, v.shape, v.dtype) for k, v in original.items()]
    assert torch.equal(state["net.2.num_batches_tracked"], original["net.2.num_batches_tracked"])
    capsys.readouterr()
    assert main(["evaluate", str(rebuilt), *arch, "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["accuracy_rebuilt"]


def test_finetune_keeps_accuracy_of_a_pruned_user_model(
        examples: None, tmp_path: Path, toy_mnist_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """prune 90 %: fine-tuning on MNIST (BatchNorm statistics frozen) wins back accuracy."""
    import my_mlp

    data = ["--data-dir", str(toy_mnist_dir)]
    ckpt = tmp_path / "m.pt"
    my_mlp.main(["-o", str(ckpt), "--epochs", "2", "--hidden", "16", *data])
    arch = ["--arch", "my_mlp:MyMLP", "--arch-kwargs", '{"hidden": 16}']
    runs = {}
    for finetune in ([], ["--finetune"]):
        capsys.readouterr()
        assert main(["compress", str(ckpt), "-o", str(tmp_path / f"m{len(finetune)}.p"),
                     "--codec", "prune", "--set", "sparsity=0.95", "--set", "finetune_epochs=3",
                     *finetune, *arch, "--json", "--quiet", *data]) == 0
        runs[bool(finetune)] = json.loads(capsys.readouterr().out)["accuracy_rebuilt"]
    assert runs[True] > runs[False] + 5


def test_normalize_is_applied(user_code: Callable[[str], str], tmp_path: Path,
                              toy_mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model that answers class 0 for images in [0, 1] and class 1 otherwise."""
    name = user_code("""
class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10) + self.w
        out[:, 0 if float(x.min()) >= 0 and float(x.max()) <= 1 else 1] = 1
        return out
""")
    weights = tmp_path / "p.safetensors"
    save_weights_file(weights, {"w": torch.zeros(1)})
    from vaecompress.data import load_mnist

    test = load_mnist(toy_mnist_dir)[1]
    share = {k: 100.0 * float((test.labels == k).mean()) for k in (0, 1)}
    assert share[0] != share[1]
    flags = ([], ["--normalize", "0.1307,0.3081"], ["--normalize", "mnist"])
    for flag, cls in zip(flags, (0, 1, 1), strict=True):
        capsys.readouterr()
        assert main(["evaluate", str(weights), "--arch", f"{name}:Probe", *flag, "--json",
                     "--data-dir", str(toy_mnist_dir)]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(share[cls])


def test_checkpoint_layouts_are_found(mlp: tuple[str, Path], tmp_path: Path,
                                      toy_mnist_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Nested under a key, with a DDP `module.` prefix, two candidates chosen by --key: each
    gives the same accuracy as the flat file; the rebuilt file keeps the names of its input."""
    arch, flat = mlp
    state = torch.load(flat, weights_only=True)
    data = ["--data-dir", str(toy_mnist_dir)]
    capsys.readouterr()
    assert main(["evaluate", str(flat), "--arch", arch, "--json", *data]) == 0
    want = json.loads(capsys.readouterr().out)["accuracy"]
    ddp = {f"module.{k}": v for k, v in state.items()}
    layouts = {
        "nested": ({"epoch": 3, "state_dict": state, "optimizer": {"state": {0: {
            "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}}, []),
        "ddp": ({"model": ddp}, []),
        "two": ({"model": state, "ema": {"deep": ddp}}, ["--key", "ema.deep"]),
    }
    for name, (obj, key) in layouts.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        capsys.readouterr()
        assert main(["evaluate", str(path), "--arch", arch, "--json", *key, *data]) == 0, name
        assert json.loads(capsys.readouterr().out)["accuracy"] == want, name
    out = tmp_path / "two.vaec"
    assert main(["compress", str(tmp_path / "two.pth"), "-o", str(out), "--key", "ema.deep",
                 "--codec", "int8", "--arch", arch, "--quiet", *data]) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "r.safetensors")]) == 0
    assert list(load_weights_file(tmp_path / "r.safetensors")[0]) == list(ddp)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "two.pth"), "--arch", arch, *data]) == 2
    assert "holds 2 state_dicts: 'model', 'ema.deep'; choose one with --key" in _err_line(capsys)


BAD_CODE = {
    "no_class": ("x = 1\n", "has no 'Net'"),
    "not_module": ("class Net:\n    pass\n", "not a torch.nn.Module"),
    "raises_on_import": ("raise RuntimeError('broken on purpose')\n",
                         "RuntimeError: broken on purpose"),
    "ctor_needs_args": ("class Net(nn.Module):\n    def __init__(self, width):\n"
                        "        super().__init__()\n", "building"),
    "wrong_output": (MLP + "\nclass Net(MLP):\n    def forward(self, x):\n"
                     "        return self.net(x)[:, :5]\n", "returns (2, 5)"),
    "forward_fails": (MLP + "\nclass Net(MLP):\n    def forward(self, x):\n"
                      "        return self.net(x[:, :, :10])\n", "fails on MNIST images"),
}


@pytest.mark.parametrize("case", sorted(BAD_CODE))
def test_bad_architecture_is_one_line_exit_2(case: str, user_code: Callable[[str], str],
                                             mlp: tuple[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source, fragment = BAD_CODE[case]
    name = user_code(source)
    _, weights = mlp
    for cmd in (["evaluate", str(weights)], ["compress", str(weights), "-o", "out.vaec"]):
        capsys.readouterr()
        assert main([*cmd, "--arch", f"{name}:Net", "--quiet"]) == 2, cmd
        assert fragment in _err_line(capsys), cmd
        assert not Path("out.vaec").exists()


def test_bad_weights_and_flags_are_one_line_exit_2(mlp: tuple[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    arch, weights = mlp
    state = torch.load(weights, weights_only=True)
    wrong = dict(state)
    wrong["net.1.weight"] = torch.zeros(16, 783)
    del wrong["net.3.bias"]
    wrong["extra"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "object.pt")  # a pickled module, not a state_dict
    cases = [
        (["evaluate", str(tmp_path / "wrong.pt"), "--arch", arch],
         "missing 'net.3.bias'; unexpected 'extra'; shape of 'net.1.weight' (16, 783) where "
         "the model has (16, 784)"),
        (["compress", str(tmp_path / "wrong.pt"), "-o", "o.vaec", "--arch", arch],
         "missing 'net.3.bias'"),
        (["evaluate", str(weights), "--arch", "nosuchmodule_xyz:Net"],
         "no module named 'nosuchmodule_xyz'"),
        (["evaluate", str(weights), "--arch", "MLP"], "module.path:ClassName"),
        (["evaluate", str(weights), "--arch", arch, "--model", "fnn"], "once"),
        (["evaluate", str(weights), "--arch", arch, "--arch-kwargs", "{bad"], "not valid JSON"),
        (["evaluate", str(weights), "--arch", arch, "--arch-kwargs", "[16]"], "JSON object"),
        (["evaluate", str(weights), "--arch", arch, "--normalize", "0.5"], "MEAN,STD"),
        (["evaluate", str(weights), "--arch", arch, "--normalize", "0.5,0"], "positive std"),
        (["evaluate", str(weights), "--normalize", "mnist"], "go with --arch"),
        (["evaluate", str(weights)], "pass --model (a zoo model) or --arch"),
        (["evaluate", str(weights), "--arch", arch, "--key", "nothere"], "has no 'nothere'"),
        (["evaluate", str(tmp_path / "object.pt"), "--arch", arch],
         "holds a torch.nn.modules.linear.Linear object"),
        (["compress", str(weights), "-o", "o.vaec", "--finetune", "--codec", "prune"],
         "--finetune needs the model's architecture"),
    ]
    for argv, fragment in cases:
        capsys.readouterr()
        assert main([*argv, "--quiet"]) == 2, argv
        assert fragment in _err_line(capsys), argv
    assert not Path("o.vaec").exists()


def test_api_finetunes_any_model_on_any_task() -> None:
    """A regression net with its own loss, through the public API: pruning 80 % of it and
    fine-tuning on its task gets its loss back down; vae-rd keeps it close to the original."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 2, generator=g) * 4 - 2
    y = torch.sin(x[:, :1] * 2) * torch.cos(x[:, 1:])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(),
                        nn.Linear(48, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()

    def mse(state: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(F.mse_loss(torch.func.functional_call(net, state, (x,)), y))

    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    base = mse(state)
    assert base < 0.01
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    task = vaecompress.Finetuner(vaecompress.ModuleLoss(net, F.mse_loss), batches)
    quiet = vaecompress.CodecContext(progress=False)
    pruned = {}
    for finetune in (None, task):
        res = vaecompress.compress(state, "prune", ctx=quiet, finetune=finetune, sparsity=0.8,
                                   finetune_epochs=30.0, lr=3e-3)
        pruned[finetune is not None] = mse(vaecompress.decompress(res.data))
    assert pruned[True] < pruned[False] / 3
    res = vaecompress.compress(state, "vae-rd", ctx=quiet, finetune=task, epochs=40.0, lam=0.05)
    assert mse(vaecompress.decompress(res.data)) < base + 0.02
    assert res.accounting.ratio_honest > 3


def test_vae_rd_keeps_batchnorm_statistics_exactly() -> None:
    """vae-rd codes what the task trains and keeps what it only reads (BatchNorm's running
    statistics, the Finetuner's `frozen`) bit for bit: a coded running variance could reach
    zero or below at a high lam and turn every output into NaN."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    net.train()
    with torch.no_grad():
        for i in range(0, 256, 32):
            net(x[i : i + 32])  # running statistics away from their (0, 1) start
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    task = vaecompress.Finetuner(vaecompress.ModuleLoss(net, F.cross_entropy),
                                 [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)])
    assert task.frozen == {"1.running_mean", "1.running_var"}
    res = vaecompress.compress(state, "vae-rd", ctx=vaecompress.CodecContext(progress=False),
                               finetune=task, epochs=2.0, lam=50.0)
    out = vaecompress.decompress(res.data)
    assert list(out) == list(state)
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(out[k], state[k]), k
    assert not torch.equal(out["0.weight"], state["0.weight"])  # the weights are coded
