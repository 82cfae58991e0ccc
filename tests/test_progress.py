"""vaecompress.progress: plain short lines when the stream is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import re

import pytest
import torch

import vaecompress.progress as prog
from vaecompress.methods.paper.model import VAEArch
from vaecompress.methods.paper.train import VAETrainConfig, train_vae
from vaecompress.progress import progress

ESCAPE = re.compile(r"\x1b\[|\r")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(prog.time, "monotonic", c)
    return c


def test_not_a_terminal_prints_a_line_per_tenth(clock: FakeClock) -> None:
    out = io.StringIO()
    bar = progress(1000, desc="train cnn", unit="step", stream=out)
    for i in range(1000):
        clock.t = i * 0.1  # 100 s in all
        bar.set_status(f"loss {1 / (i + 1):.4f}")
        bar.update()
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert not ESCAPE.search(text)
    assert len(lines) == 11  # one per tenth and the last
    assert lines[0].startswith("train cnn: step 100/1000 (10%), loss 0.0100, 10 s")
    assert lines[-1] == "train cnn: step 1000/1000 (100%), loss 0.0010, 100 s, done"


def test_unknown_length_prints_every_interval(clock: FakeClock) -> None:
    out = io.StringIO()
    with progress(None, desc="vae fnn", unit="epoch", stream=out, every_s=30) as bar:
        for i in range(200):
            clock.t = i * 1.0
            bar.set_status(f"best {i // 2}, patience {20 - i % 20} left")
            bar.update()
    lines = out.getvalue().splitlines()
    assert 6 <= len(lines) <= 8
    assert lines[0] == "vae fnn: epoch 31, best 15, patience 10 left, 30 s"
    assert "/" not in lines[0] and "%" not in lines[0]  # no count towards the epoch cap


def test_fast_loop_prints_one_line(clock: FakeClock) -> None:
    out = io.StringIO()
    bar = progress(50, desc="finetune", stream=out)
    for _ in range(50):
        bar.update()
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["finetune: it 50/50 (100%), 0 s, done"]


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    bar = progress(10, stream=out, enabled=False)
    bar.update()
    bar.set_postfix(loss=1)
    bar.close()
    assert out.getvalue() == ""


def test_terminal_gets_a_tqdm_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = progress(None, desc="vae cnn", unit="epoch", stream=out)
    bar.set_status("best 3, patience 7 left")
    bar.update()
    bar.close()
    assert "\r" in out.getvalue() and "vae cnn: epoch" in out.getvalue()


def test_vae_training_log_is_short_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    """The VAE with early stopping, stderr not a terminal: plain lines, the best epoch and the
    patience left, never a count towards the epoch cap."""
    torch.manual_seed(0)
    data = torch.randn(64, 32)
    cfg = VAETrainConfig(epochs=40, patience=5, batch_size=32)
    _, hist = train_vae(data[:48], data[48:], VAEArch(32, 4, (16,)), cfg, desc="vae toy")
    err = capsys.readouterr().err
    assert not ESCAPE.search(err)
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3 and len(err) < 400
    last = lines[-1]
    assert last.startswith(f"vae toy: epoch {hist.epochs}, best {hist.best_epoch} ")
    assert "patience" in last and "/40" not in last
    # the recorded split: -ELBO = reconstruction term + KL, per epoch
    assert len(hist.train_kl) == len(hist.train_mse) == len(hist.val_mse) == hist.epochs
    assert all(m > 0 for m in hist.val_mse + hist.train_mse)
