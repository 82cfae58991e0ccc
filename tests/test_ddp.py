"""Data-parallel VAE training: `torchrun --nproc_per_node=2 -m vaecompress.cli compress` with the
gloo backend on CPU gives the file one process gives, within the float-sum tolerance of
docs/distributed.md. Every launch has a deadline and its whole process group is killed past it,
so a stuck rendezvous fails the test instead of hanging CI."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vaecompress.api import decompress_file
from vaecompress.cli import main
from vaecompress.format import load
from vaecompress.io import state_from_bytes
from vaecompress.training.distributed import Group

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 180

# The tolerance of docs/distributed.md: two processes sum the gradient and the losses in another
# order than one, so the weights drift apart by float rounding (measured: 3e-8 on the decoder,
# 1e-7 on the latents after 80 steps); 1e-5 leaves room for other CPUs, while noise drawn per
# process instead of per batch moved the decoder by 1e-2 and the latents by 0.1.
ATOL = 1e-5


def _launch(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "vaecompress.cli", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every worker it started
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {DEADLINE_S} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_share_splits_rows_contiguously() -> None:
    for n in (0, 1, 5, 16, 17):
        for size in (1, 2, 3):
            parts = [Group(r, size).share(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


def _one_and_two(tmp_path: Path, args: list[str], suffix: str) -> tuple[Path, Path]:
    """The files of `compress ARGS` run by one process and by two under torchrun."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 4))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    args = ["compress", "m.safetensors", *args, "--no-eval", "--quiet"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*args, "-o", f"one{suffix}"]) == 0
    finally:
        os.chdir(cwd)
    done = _launch([*args, "-o", f"two{suffix}"], 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"two{suffix}:") == 1  # rank 0 alone reports ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", f"one{suffix}",
                                                         f"two{suffix}"]  # ... and writes
    return tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"


def test_vae_paper_two_processes_match_one(tmp_path: Path) -> None:
    # 16 rows a batch: 8 per process; 10 steps an epoch, 8 epochs.
    a, b = _one_and_two(tmp_path, ["--codec", "vae-paper", "--set", "chunk_size=64",
                                   "--set", "latent=8", "--set", "hidden=[32]",
                                   "--set", "n_variants=20", "--set", "batch_size=16",
                                   "--set", "epochs=8", "--set", "patience=8"], ".vaec")
    one, two = load(a), load(b)
    za = np.frombuffer(one.payload("latents").data, "<f4")
    zb = np.frombuffer(two.payload("latents").data, "<f4")
    assert za.shape == zb.shape and np.abs(za - zb).max() <= ATOL
    assert not np.array_equal(za, np.zeros_like(za))
    da = state_from_bytes(one.payload("decoder").data)
    db = state_from_bytes(two.payload("decoder").data)
    for k in da:
        torch.testing.assert_close(da[k], db[k], atol=ATOL, rtol=0)
    ra, rb = decompress_file(a), decompress_file(b)
    for k in ra:
        torch.testing.assert_close(ra[k], rb[k], atol=ATOL, rtol=0)


def test_vae_rd_free_two_processes_match_one(tmp_path: Path) -> None:
    """The four tensors split 512 | 64 + 16 + 4 between the processes. The integer latents
    round the float drift away: at most a few of them (measured: none) fall into the next
    bin, which moves a weight by one step."""
    a, b = _one_and_two(tmp_path, ["--codec", "vae-rd-free", "--set", "solver=adam",
                                     "--set", "steps=80"], ".vrd")
    ra, rb = decompress_file(a), decompress_file(b)
    moved = sum(int((ra[k] != rb[k]).sum()) for k in ra)
    assert moved <= 0.01 * sum(t.numel() for t in ra.values())
    assert abs(a.stat().st_size - b.stat().st_size) <= 0.01 * a.stat().st_size


def test_other_commands_refuse_several_processes(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["inspect", "nothing.vaec"]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err


WARM_WORKER = '''
import json, sys
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from vaecompress.api import compress
from vaecompress.codecs import CodecContext, Finetuner
from vaecompress.training.distributed import session

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
state = {k: v.detach().clone() for k, v in net.state_dict().items()}
g = torch.Generator().manual_seed(0)
x = torch.randn(2048, 16, generator=g)
seen = []

def loss(s, batch):
    i, xb = batch
    if torch.is_grad_enabled():  # a training step's (the warm start's rounding reads the
        seen.append(i)           # first batches without gradients, in every process)
    with torch.no_grad():
        t = functional_call(net, state, (xb,)).log_softmax(1)
    out = functional_call(net, dict(s), (xb,)).log_softmax(1)
    return F.kl_div(out, t, log_target=True, reduction="batchmean")

def batches():
    for i in range(10**6):
        yield i, x[(64 * i) % 2048:(64 * i) % 2048 + 64]

out = Path(sys.argv[1])
with session("cpu") as grp:
    ft = Finetuner(loss, batches, 16, validation=[(-1, x[:256])])
    res = compress(state, "vae-rd", ctx=CodecContext(progress=False, finetune=ft),
                   snr=14.0, epochs=2.0, patience=0)
    (out / f"rank{grp.rank}.bin").write_bytes(res.data)
    (out / f"rank{grp.rank}.json").write_text(json.dumps(
        {"seen": sorted(set(i for i in seen if i >= 0)), "size": grp.size}))
'''


def test_task_aware_codec_shards_its_batches_under_torchrun(tmp_path: Path) -> None:
    """Two processes distil the warm-started vae-rd (`methods.rd.warm`) on different batches of the
    same stream (each its own of every pair), average the task's gradients and end with the
    same file; one process alone sees the first batches."""
    (tmp_path / "worker.py").write_text(WARM_WORKER)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "worker.py", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("torchrun did not finish in time")
    assert proc.returncode == 0, err[-3000:]
    import json

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["size"] == r1["size"] == 2
    steps = 32  # epochs 2 x 16 steps
    assert r0["seen"] == list(range(0, 2 * steps, 2))  # rank 0 the even batches ...
    assert r1["seen"] == list(range(1, 2 * steps, 2))  # ... rank 1 the odd ones
    assert (tmp_path / "rank0.bin").read_bytes() == (tmp_path / "rank1.bin").read_bytes()
    rebuilt = decompress_file(tmp_path / "rank0.bin")
    assert set(rebuilt) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_max_drop_two_processes_match_one(tmp_path: Path, toy_mnist_dir: Path) -> None:
    """`--max-drop` under torchrun: every process searches the same knob on the same validation
    data and so makes the same choices; one report, one file, and it is the one a single
    process writes (byte for byte: the data-free codec's closed form has no float sums that
    the processes split)."""
    assert main(["train", "fnn", "-o", str(tmp_path / "fnn.safetensors"), "--epochs", "1",
                 "--quiet", "--data-dir", str(toy_mnist_dir)]) == 0
    args = ["compress", "fnn.safetensors", "--model", "fnn", "--max-drop", "1",
            "--data-dir", str(toy_mnist_dir)]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*args, "--quiet", "-o", "one.vrd"]) == 0
    finally:
        os.chdir(cwd)
    done = _launch([*args, "-o", "two.vrd"], 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("--max-drop 1: chose snr ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fnn.safetensors", "one.vrd",
                                                         "two.vrd"]
    assert (tmp_path / "one.vrd").read_bytes() == (tmp_path / "two.vrd").read_bytes()
