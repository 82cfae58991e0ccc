"""The library picks torch's thread count itself (issue 12), overridable."""

from __future__ import annotations

import os

import pytest
import torch

from vaecompress.errors import UserError
from vaecompress.runinfo import auto_threads


@pytest.fixture(autouse=True)
def _restore_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAECOMPRESS_THREADS", "1")
    assert auto_threads(force=True) == 1 and torch.get_num_threads() == 1


def test_bad_override_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAECOMPRESS_THREADS", "many")
    with pytest.raises(UserError, match="VAECOMPRESS_THREADS"):
        auto_threads(force=True)


def test_default_leaves_a_core_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAECOMPRESS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert auto_threads(force=True) == max(1, min(8, cores - 1))


def test_omp_num_threads_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAECOMPRESS_THREADS", raising=False)
    # torch read OMP_NUM_THREADS itself; auto_threads must leave its count alone (2 here,
    # where the default rule would pick cores - 1).
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert auto_threads(force=True) == 2 and torch.get_num_threads() == 2


def _mib_kept(script: str, mode: str) -> float:
    """The MiB a script run in a fresh process reports as kept (its last line), glibc's
    threshold variable unset."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", script, mode], check=True,
                         capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


_RSS_AFTER_FREES = """
import sys
import numpy as np
from vaecompress.runinfo import release_large_frees

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "cli":
    assert release_large_frees()
start = rss()
for _ in range(3):
    a = np.ones(2**21)  # 16 MiB, every page touched, then freed
    del a
print((rss() - start) / 2**20)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.uname().sysname != "Linux",
                    reason="resident memory read from /proc, glibc's allocator")
def test_the_command_lines_allocator_policy_gives_large_frees_back() -> None:
    """`runinfo.release_large_frees` (what the command line sets): a freed 16 MiB block goes
    back to the system; under glibc's default its heap keeps it (the control, in a process of
    its own as well, shows that the measure tells them apart)."""
    def kept(mode: str) -> float:
        return _mib_kept(_RSS_AFTER_FREES, mode)

    assert kept("cli") < 2.0
    assert kept("glibc") > 8.0


_RSS_AFTER_HOLES = """
import sys
import numpy as np
from vaecompress.runinfo import COMPRESS_MMAP_THRESHOLD, release_large_frees

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "compress":
    assert release_large_frees(COMPRESS_MMAP_THRESHOLD)
elif sys.argv[1] == "cli":
    assert release_large_frees()
a = np.ones(2**21)  # 16 MiB freed first: glibc's default then serves blocks under it from the heap
del a
start = rss()
blocks = [np.ones(2**16) for _ in range(64)]  # 64 blocks of 512 KiB, every page touched
del blocks[::2]  # half of them freed, each between two that live
print((rss() - start) / 2**20)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.uname().sysname != "Linux",
                    reason="resident memory read from /proc, glibc's allocator")
def test_freed_blocks_between_live_ones_go_back_too() -> None:
    """Blocks of 128 KiB to 1 MiB (MiniLM's 384 x 384 matrices) freed between live ones: under
    `compress`'s policy each had a mapping of its own and goes back (16 MiB resident, the live
    half); under the other commands' (1 MiB) and glibc's default, once a large block was freed,
    they come from the heap, which keeps the holes (32 MiB)."""
    def kept(mode: str) -> float:
        return _mib_kept(_RSS_AFTER_HOLES, mode)

    assert kept("compress") < 20.0
    assert kept("cli") > 28.0
    assert kept("glibc") > 28.0


def test_a_command_that_computes_sets_the_allocator_policy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    import vaecompress.runinfo as runinfo
    from vaecompress.cli import main
    from vaecompress.io import save_weights_file

    calls: list[int] = []
    monkeypatch.setattr(runinfo, "release_large_frees",
                        lambda threshold=runinfo.MMAP_THRESHOLD: calls.append(threshold) or True)
    src = os.path.join(tmp_path, "m.safetensors")
    save_weights_file(src, {"w": torch.randn(8, 8)}, {})
    assert main(["compress", src, "-o", os.path.join(tmp_path, "m.vaec"), "--codec", "int8",
                 "--quiet"]) == 0
    assert calls == [runinfo.COMPRESS_MMAP_THRESHOLD]  # compress: smaller blocks given back too
    assert main(["inspect", os.path.join(tmp_path, "m.vaec")]) == 0
    assert calls == [runinfo.COMPRESS_MMAP_THRESHOLD]  # reading a header computes nothing
    assert main(["decompress", os.path.join(tmp_path, "m.vaec"), "-o",
                 os.path.join(tmp_path, "r.safetensors")]) == 0
    assert calls[-1] == runinfo.MMAP_THRESHOLD  # the other commands keep 1 MiB (time)


_RSS_AFTER_LINALG = """
import sys
import torch
from vaecompress.methods.rd.feedback import round_with_feedback
from vaecompress.runinfo import release_large_frees, trim_memory
import vaecompress.runinfo as runinfo

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

torch.set_num_threads(1)
release_large_frees()
if sys.argv[1] == "keep":
    runinfo.free_linalg_buffers = lambda: False
# the code the rounding runs, loaded before the count starts (its pages are not a buffer)
round_with_feedback(torch.randn(4, 8), 0.1, torch.eye(8))
torch.randn(256, 256, dtype=torch.float64) @ torch.randn(256, 256, dtype=torch.float64)
trim_memory()
start = rss()
for cols, rows in [(1536, 384), (384, 1536)] * 3:  # MiniLM's widest layers
    x = torch.randn(2000, cols)
    round_with_feedback(torch.randn(rows, cols) * 0.05, 0.01, x.T @ x / 2000)
    del x
runinfo.trim_memory()
print((rss() - start) / 2**20)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or os.uname().sysname != "Linux",
                    reason="resident memory read from /proc, glibc's allocator")
def test_trimming_gives_back_what_the_linear_algebra_kept() -> None:
    """After the rounding with feedback's float64 factorizations and products, `trim_memory`
    leaves next to nothing resident; without MKL's buffers freed (the control) about 15 MiB
    stay. Where torch has no MKL there is nothing to measure."""
    from vaecompress.runinfo import free_linalg_buffers

    if not free_linalg_buffers():
        pytest.skip("this torch has no MKL service layer")

    def kept(mode: str) -> float:
        return _mib_kept(_RSS_AFTER_LINALG, mode)

    assert kept("free") < 4.0
    assert kept("keep") > 8.0
