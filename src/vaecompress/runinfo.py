"""The environment block written beside every result: versions, git revision, device, seed, time.

A number without the code and machine that made it cannot be trusted or reproduced, so every
results file carries this block.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.errors import UserError


def git_revision(path: Path | None = None) -> str | None:
    """The commit of the source tree this package runs from ("+dirty" when modified), or None."""
    here = path or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present; an unavailable device is a user error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device '{name}' requested but CUDA is not available here; use --device cpu"
        )
    return dev


_THREADS_CHOSEN = False


def auto_threads(force: bool = False) -> int:
    """Choose torch's intra-op thread count once per process, unless the user has:
    `VAECOMPRESS_THREADS=N` wins, then `OMP_NUM_THREADS` (torch reads it itself); otherwise one
    core is left to the rest of the machine (1 thread on 2 cores, at most 8).

    Why: with as many threads as cores, PyTorch's OpenMP threads spin against any other busy
    process: on this project's 2-core machine with one other job running, `vae-rd-free` on the
    FNN ran more than ten times slower with 2 threads than with 1, and the zoo models are too
    small for a second thread to pay even on an idle machine."""
    global _THREADS_CHOSEN
    if _THREADS_CHOSEN and not force:
        return torch.get_num_threads()
    _THREADS_CHOSEN = True
    env = os.environ.get("VAECOMPRESS_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"VAECOMPRESS_THREADS must be a positive integer, got {env!r}")
        n = int(env)
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        n = max(1, min(8, cores - 1))
    torch.set_num_threads(n)
    return n


# Allocations of this size or more get a mapping of their own, given back when freed.
MMAP_THRESHOLD = 2**20
# `compress`'s: glibc's own starting threshold (128 KiB), held there. At 1 MiB, tensors of
# 128 KiB to 1 MiB (MiniLM's 384 x 384 attention matrices, their decoded weights and gradients,
# a step's temporaries) come from the heap, which keeps what they freed between live blocks:
# at the task-aware codec's peak on MiniLM 24.5 bytes a parameter at 1 MiB, 23.0 at 128 KiB,
# for about 11% more time (`benchmarks/results/warm_memory.json`, the policies interleaved).
# Every allocation of that size is then a mapping of its own, faulted in page by page: a zoo
# model's training took about 12% longer in a side run, so the other commands keep 1 MiB.
COMPRESS_MMAP_THRESHOLD = 2**17
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def release_large_frees(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc serve every allocation of `threshold` bytes or more with a mapping of
    its own, unmapped when freed (`mallopt(M_MMAP_THRESHOLD)`, which also stops glibc from
    moving the threshold). By default glibc raises the threshold to the largest block freed so
    far (up to 32 MiB on 64-bit), so that after the first large tensors are freed the next ones
    come from the heap, and the heap keeps what a training step freed under what the next
    step allocates. On MiniLM's warm-started `vae-rd` the peak is 23.0 bytes a parameter above
    the loaded model with it at `COMPRESS_MMAP_THRESHOLD` (24.5 at `MMAP_THRESHOLD`) and 39.5
    without, the same bytes out (`benchmarks/results/warm_memory.json`). Process-wide: the
    command line sets it when it starts (`compress` at `COMPRESS_MMAP_THRESHOLD`); a program
    that uses the library may call it. Nothing where glibc is not the
    allocator, or where `MALLOC_MMAP_THRESHOLD_` is set (the user's choice). True when it was
    set."""
    import contextlib
    import ctypes

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    return False


def trim_memory() -> None:
    """Give the memory the C allocator keeps after frees back to the system (glibc's
    `malloc_trim`; elsewhere nothing), and MKL's workspace (`free_linalg_buffers`). After a
    training, the many tensors it freed would otherwise stay resident under everything
    allocated next."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    free_linalg_buffers()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to give back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_linalg_buffers() -> bool:
    """Give back the workspace that MKL (torch's BLAS and LAPACK on x86 CPUs, linked into
    `libtorch_cpu`) keeps after a large product or factorization, for the next one of its size
    (`mkl_free_buffers`). The warm start's rounding with error feedback factorizes and
    multiplies float64 matrices of the widest linear layer's size; on MiniLM MKL then kept
    about 15 MiB that no later phase used, under the training's peak. MKL allocates again when
    it is next needed, so nothing but a little time is lost. Nothing where torch has no MKL
    (another CPU, another build). True when buffers were given back."""
    import contextlib
    import ctypes

    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(lib):
        return False
    with contextlib.suppress(OSError, AttributeError):  # a torch without MKL's service layer
        ctypes.CDLL(lib).mkl_serv_free_buffers()
        return True
    return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo): a model trained with the same seed and
    settings on another processor can come out different in its last bits, and so can every
    figure measured on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(
    device: torch.device | str | None = None, seed: int | None = None
) -> dict[str, Any]:
    from vaecompress import __version__

    dev = torch.device(device) if device is not None else None
    info: dict[str, Any] = {
        "vaecompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev) if dev is not None else None,
        "git_revision": git_revision(),
        "seed": seed,
        "argv": sys.argv,
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if dev is not None and dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info
