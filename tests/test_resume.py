"""Checkpoints of long trainings: a run interrupted midway and started again ends exactly as an
uninterrupted one; a checkpoint of another run, or a damaged one, is ignored with a warning."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import vaecompress.checkpoint as ckmod
import vaecompress.experiments.reproduce as rep
from vaecompress.data import load_mnist
from vaecompress.methods.paper.model import VAEArch
from vaecompress.methods.paper.train import VAETrainConfig, train_vae
from vaecompress.methods.paper.vae_paper import VAEPaperSettings
from vaecompress.methods.rd.model import RDConfig
from vaecompress.methods.rd.train import RDResult, train_rd
from vaecompress.params.variants import NoiseConfig, VariantStream
from vaecompress.zoo.train import TrainConfig, train_model

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Stands for a kill: raised right after the n-th checkpoint is written."""


@pytest.fixture
def stop_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def arm(n: int) -> None:
        real = ckmod.Checkpoint.save
        saves = {"n": 0}

        def save(self: ckmod.Checkpoint, state: dict) -> None:
            real(self, state)
            saves["n"] += 1
            if saves["n"] == n:
                monkeypatch.setattr(ckmod.Checkpoint, "save", real)
                raise Stop

        monkeypatch.setattr(ckmod.Checkpoint, "save", save)

    return arm


class Steps:
    """Counts optimizer steps (every optimizer, through torch's global post-step hook), so
    that a resumed run is seen to skip the work its checkpoint holds: the steps of the killed
    run and of the resumed one add up to the steps of an uninterrupted run."""

    def __init__(self) -> None:
        self.n = 0
        self._handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, *args: object) -> None:
        self.n += 1

    def take(self) -> int:
        n, self.n = self.n, 0
        return n

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def steps() -> Iterator[Steps]:
    counter = Steps()
    yield counter
    counter.close()


def _skipped(steps: Steps, ref: int, killed: int) -> None:
    """The resumed run did exactly the steps the killed run had not done."""
    resumed = steps.take()
    assert 0 < killed < ref, (killed, ref)
    assert resumed == ref - killed, f"resumed run took {resumed} steps, {ref - killed} were left"


# ------------------------------------------------------------------ the three loops


def test_train_model_resumes_bit_identical(tmp_path: Path, toy_mnist_dir: Path,
                                           stop_after: Callable[[int], None],
                                           steps: Steps) -> None:
    train, _ = load_mnist(toy_mnist_dir)
    cfg = TrainConfig(epochs=3, batch_size=64, limit=300, seed=1)
    ref = train_model("fnn", train, cfg, progress=False)
    n_ref = steps.take()
    ck = tmp_path / "fnn.ckpt"
    stop_after(1)
    with pytest.raises(Stop):
        train_model("fnn", train, cfg, progress=False, checkpoint=ck, checkpoint_every_s=0)
    assert ck.is_file()
    n_killed = steps.take()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid checkpoint is resumed without a word
        res = train_model("fnn", train, cfg, progress=False, checkpoint=ck, checkpoint_every_s=0)
    assert not ck.exists()
    _skipped(steps, n_ref, n_killed)
    assert res.epoch_loss == ref.epoch_loss and len(res.epoch_loss) == 3
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def _vae_inputs() -> tuple[VariantStream, VAEArch]:
    torch.manual_seed(3)
    chunks = torch.randn(4, 64)
    return VariantStream(chunks, NoiseConfig(n_variants=10), seed=0), VAEArch(64, 8, (32,))


def _vae_equal(a: tuple, b: tuple) -> None:
    (vae_a, hist_a), (vae_b, hist_b) = a, b
    for k, v in vae_a.state_dict().items():
        assert torch.equal(v, vae_b.state_dict()[k]), k
    ja, jb = hist_a.to_json(), hist_b.to_json()
    for k in ("epoch_s", "train_s"):  # wall times differ between runs
        ja.pop(k), jb.pop(k)
    assert ja == jb


# To the end; stopped early (at epoch 4, the best epoch 2 restored: a learning rate at which
# the validation loss turns up), killed before the stop and resumed through it.
@pytest.mark.parametrize(("patience", "lr", "early"), [(6, 3e-2, False), (2, 0.3, True)])
def test_train_vae_resumes_bit_identical(tmp_path: Path, stop_after: Callable[[int], None],
                                         patience: int, lr: float, early: bool,
                                         steps: Steps) -> None:
    stream, arch = _vae_inputs()
    cfg = VAETrainConfig(epochs=6, patience=patience, batch_size=8, lr=lr, seed=2)
    ref = train_vae(stream.train, stream.val, arch, cfg, progress=False)
    assert ref[1].to_json()["stopped_early"] is early
    assert (ref[1].epochs < cfg.epochs) is early
    n_ref = steps.take()
    ck = tmp_path / "vae.ckpt"
    stop_after(2)
    with pytest.raises(Stop):
        train_vae(stream.train, stream.val, arch, cfg, progress=False, checkpoint=ck,
                  checkpoint_every_s=0)
    n_killed = steps.take()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = train_vae(stream.train, stream.val, arch, cfg, progress=False, checkpoint=ck,
                        checkpoint_every_s=0)
    assert not ck.exists()
    _skipped(steps, n_ref, n_killed)
    assert res[1].epochs == ref[1].epochs >= 3
    _vae_equal(ref, res)


def _rd_equal(a: RDResult, b: RDResult) -> None:
    assert a.names == b.names
    for x, y in zip(a.ints + a.steps, b.ints + b.steps, strict=True):
        assert torch.equal(x, y)
    assert a.history == b.history


def _rd_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    return {"fc.weight": torch.randn(8, 16) * 0.2, "fc.bias": torch.randn(8) * 0.1}


def test_train_rd_free_resumes_bit_identical(tmp_path: Path,
                                             stop_after: Callable[[int], None],
                                             steps: Steps) -> None:
    cfg = RDConfig(steps=30, distortion="weights", seed=5)
    tensors = _rd_tensors()
    ref = train_rd(tensors, cfg)
    n_ref = steps.take()
    ck = tmp_path / "rd.ckpt"
    stop_after(11)
    with pytest.raises(Stop):
        train_rd(tensors, cfg, checkpoint=ck, checkpoint_every_s=0)
    n_killed = steps.take()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = train_rd(tensors, cfg, checkpoint=ck, checkpoint_every_s=0)
    assert not ck.exists()
    _skipped(steps, n_ref, n_killed)
    _rd_equal(ref, res)


def _task() -> tuple[Callable, Callable[[], Iterator]]:
    def loss(state: dict, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((x @ state["fc.weight"].T + state["fc.bias"] - y) ** 2).mean()

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(6)
        while True:
            x = torch.randn(5, 16, generator=gen)
            yield x, torch.randn(5, 8, generator=gen)

    return loss, batches


def test_train_rd_task_resumes_bit_identical(tmp_path: Path,
                                             stop_after: Callable[[int], None],
                                             steps: Steps) -> None:
    """With a task loss the batch stream is replayed to where the killed run stopped."""
    cfg = RDConfig(steps=100, seed=5)  # a history point every 2 steps: stopped mid-window
    tensors = _rd_tensors()
    loss, batches = _task()
    ref = train_rd(tensors, cfg, task_loss=loss, batches=batches())
    n_ref = steps.take()
    ck = tmp_path / "rd.ckpt"
    stop_after(37)
    with pytest.raises(Stop):
        train_rd(tensors, cfg, task_loss=loss, batches=batches(), checkpoint=ck,
                 checkpoint_every_s=0)
    n_killed = steps.take()
    res = train_rd(tensors, cfg, task_loss=loss, batches=batches(), checkpoint=ck,
                   checkpoint_every_s=0)
    _skipped(steps, n_ref, n_killed)
    _rd_equal(ref, res)


# ------------------------------------------------------------------ checkpoints not to resume


def _interrupted_rd(ck: Path, stop_after: Callable[[int], None], cfg: RDConfig) -> None:
    stop_after(7)
    with pytest.raises(Stop):
        train_rd(_rd_tensors(), cfg, checkpoint=ck, checkpoint_every_s=0)
    assert ck.is_file()


@pytest.mark.parametrize("change", ["settings", "inputs"])
def test_checkpoint_of_another_run_is_ignored(tmp_path: Path, stop_after: Callable[[int], None],
                                              change: str) -> None:
    cfg = RDConfig(steps=20, distortion="weights")
    ck = tmp_path / "rd.ckpt"
    _interrupted_rd(ck, stop_after, cfg)
    tensors = _rd_tensors()
    if change == "settings":
        cfg = replace(cfg, lam=0.2)
    else:
        tensors["fc.bias"][0] += 1e-3
    ref = train_rd(tensors, cfg)
    with pytest.warns(UserWarning, match="other settings or inputs"):
        res = train_rd(tensors, cfg, checkpoint=ck)
    _rd_equal(ref, res)
    assert not ck.exists()


class Evil:
    """Pickled into a checkpoint: loading it with a plain unpickler would create a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.target,))


def _valid_checkpoint(tmp_path: Path, stop_after: Callable[[int], None]) -> dict:
    ck = tmp_path / "good.ckpt"
    _interrupted_rd(ck, stop_after, RDConfig(steps=20, distortion="weights"))
    return torch.load(ck, weights_only=True)


def _damage(kind: str, obj: dict, tmp_path: Path) -> bytes:
    """The bytes of a checkpoint damaged in one way."""
    buf = io.BytesIO()
    state = obj["state"]
    if kind == "garbage":
        return b"\x00not a checkpoint" * 10
    if kind == "truncated":
        torch.save(obj, buf)
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    if kind == "pickle-global":
        obj = obj | {"state": {"evil": Evil(tmp_path / "pwned")}}
    elif kind == "step-out-of-range":
        state["step"] = 10**6
    elif kind == "wrong-shape":
        state["model"]["latents.0"] = torch.zeros(3, 3)
    elif kind == "optimizer":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(2)
    elif kind == "rng":
        state["rng"]["torch"] = torch.zeros(5, dtype=torch.uint8)
    elif kind == "history":
        state["history"]["loss"] = ["x"]
    elif kind == "version":
        obj["version"] = 99
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "pickle-global", "step-out-of-range",
                                  "wrong-shape", "optimizer", "rng", "history", "version"])
def test_damaged_checkpoint_is_ignored(tmp_path: Path, stop_after: Callable[[int], None],
                                       kind: str) -> None:
    """Never unpickled, never a crash: a warning, then a run from the start."""
    obj = _valid_checkpoint(tmp_path, stop_after)
    ck = tmp_path / "rd.ckpt"
    ck.write_bytes(_damage(kind, obj, tmp_path))
    cfg = RDConfig(steps=20, distortion="weights")
    ref = train_rd(_rd_tensors(), cfg)
    with pytest.warns(UserWarning, match="ignoring checkpoint"):
        res = train_rd(_rd_tensors(), cfg, checkpoint=ck)
    _rd_equal(ref, res)
    assert not (tmp_path / "pwned").exists()


def test_finish_removes_the_file_and_its_leftover_temp_files(tmp_path: Path) -> None:
    """A kill during a save leaves the atomic write's temp file: the end of training takes it."""
    ck = ckmod.Checkpoint(tmp_path / "run.ckpt", kind="k", fingerprint="f", every_s=0)
    ck.save({"step": 1})
    assert ck.load() == {"step": 1}
    (tmp_path / ".run.ckpt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.ckpt.x1y2.tmp").write_bytes(b"not ours")
    ck.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.x1y2.tmp"]


def test_bad_interval_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaecompress.errors import UserError

    monkeypatch.setenv(ckmod.EVERY_S_ENV, "soon")
    with pytest.raises(UserError, match=ckmod.EVERY_S_ENV):
        ckmod.checkpoint_every_s()
    monkeypatch.setenv(ckmod.EVERY_S_ENV, "2.5")
    assert ckmod.checkpoint_every_s() == 2.5


# ------------------------------------------------------------------ commands


def test_reproduce_resumes_a_killed_vae_training(tmp_path: Path, toy_mnist_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 stop_after: Callable[[int], None],
                                                 steps: Steps) -> None:
    """reproduce keeps the VAE's checkpoint under OUT/checkpoints/, keyed by the record; the
    same command run again resumes it and writes the same file as an uninterrupted run."""
    from vaecompress.experiments import common

    cfg = rep.ReproduceConfig(
        "quick", models=("rnn",), sweep_model="none",
        vae=VAEPaperSettings(epochs=4, patience=4, n_variants=10, hidden=(32,)),
        train_overrides={"epochs": 1, "limit": 300},
    )
    monkeypatch.setattr(rep, "trained_model",
                        lambda *a, **kw: common.trained_model(*a, root=tmp_path / "cache", **kw))
    monkeypatch.setenv(ckmod.EVERY_S_ENV, "0")
    kw = {"device": torch.device("cpu"), "data_dir": str(toy_mnist_dir), "progress": False}
    rep.reproduce(cfg, tmp_path / "ref", **kw)  # trains the zoo model too, then cached
    steps.take()
    out = tmp_path / "run"
    stop_after(2)
    with pytest.raises(Stop):
        rep.reproduce(cfg, out, **kw)
    assert len(list((out / "checkpoints").glob("*.pt"))) == 1
    n_killed = steps.take()
    rep.reproduce(cfg, out, **kw)
    n_resumed = steps.take()
    rep.reproduce(cfg, tmp_path / "again", **kw)  # uninterrupted, the model cached as above
    n_fresh = steps.take()
    assert 0 < n_killed < n_fresh and n_resumed == n_fresh - n_killed, \
        (n_killed, n_resumed, n_fresh)
    assert not (out / "checkpoints").exists()
    name = "files/rnn-latent64.vaec"
    assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def _tiny_model(path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 4))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def _saved_step(ck: Path) -> int:
    try:
        return int(torch.load(ck, weights_only=True)["state"]["step"])
    except (OSError, RuntimeError, KeyError):
        return 0


def test_killed_compress_resumes_to_the_same_file(tmp_path: Path) -> None:
    """SIGKILL a `vaecompress compress` midway (once its checkpoint exists), run the same
    command again: it resumes and writes the bytes an uninterrupted run writes."""
    from vaecompress.cli import main

    model = tmp_path / "m.safetensors"
    _tiny_model(model)
    args = ["compress", str(model), "--codec", "vae-rd-free", "--set", "solver=adam",
            "--set", "steps=60",
            "--quiet", "--no-eval"]
    assert main([*args, "-o", str(tmp_path / "ref.vrd")]) == 0
    out = tmp_path / "m.vrd"
    ck = ckmod.hidden_beside(out)
    env = os.environ | {"OMP_NUM_THREADS": "1", ckmod.EVERY_S_ENV: "0",
                        "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "vaecompress.cli", *args, "-o", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _saved_step(ck) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    assert ck.is_file() and not out.exists()
    assert 3 <= _saved_step(ck) < 60
    # The checkpoint is honoured: moved on to the last step, it leaves one step to do, and
    # the file differs from an uninterrupted run's (a run that ignored it would not differ).
    saved = ck.read_bytes()
    obj = torch.load(ck, weights_only=True)
    obj["state"]["step"] = 59
    torch.save(obj, ck)
    moved = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr
    assert "ignoring checkpoint" not in moved.stderr
    assert out.read_bytes() != (tmp_path / "ref.vrd").read_bytes()
    out.unlink()
    ck.write_bytes(saved)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ignoring checkpoint" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.vrd", "ref.vrd"]
    assert out.read_bytes() == (tmp_path / "ref.vrd").read_bytes()
