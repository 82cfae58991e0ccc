"""Data-parallel training over torch.distributed, for processes started by torchrun.

`torchrun --nproc_per_node=N -m vaecompress.cli compress ...` starts N processes with `RANK`,
`WORLD_SIZE`, `LOCAL_RANK` and the rendezvous address in their environment. `session()` joins
them into one process group (gloo on CPU; NCCL on CUDA, each process on GPU `LOCAL_RANK`) and
leaves it at the end; rank 0 alone prints and writes files. A training's step function shares
its work through `group()`; the loop's hooks (`training.loop`) use it to agree on a checkpoint
and on when to stop.

In a group, `methods.paper.train.train_vae` shards every batch. Each process draws the same batch
order
and the same reparameterization noise that one process would draw, and takes a contiguous share
of the batch's rows (`Group.share`); its loss is the mean over its rows weighted by their share
of the batch, so the gradients summed over the processes (`Group.sum_grads`, one all-reduce of
one flat buffer per step) are the gradient of the batch mean, as in one process, and every
process applies the same Adam step. Validation is sharded the same way and its sums are
all-reduced, so every process sees the same validation loss and early stopping ends all of them
at the same epoch. The result differs from one process's only by the order of float sums.

Outside a group `group()` is rank 0 of 1 and every collective is a no-op; `train_vae` then
keeps its single-process arithmetic, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from vaecompress.errors import UserError

# How long a process waits for the others at a rendezvous or a collective before it gives up:
# a process that died must not hang the rest for torch's default half hour.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Group:
    """This process's place in the group: rank `rank` of `size` (0 of 1 outside a group)."""

    rank: int = 0
    size: int = 1
    # Where the small tensors of `agree` live: the CPU for gloo, this process's GPU for NCCL.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [lo, hi) of n rows; sizes differ by at most one."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the group, in place (every process ends with the same values)."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over the group: one all-reduce of a flat buffer. A
        parameter without a gradient (no rows in this process's share) counts as zeros."""
        if self.size == 1:
            return
        ps = [p for p in params if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in ps])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in ps:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def agree(self, value: int) -> bool:
        """Whether every process holds the same `value`."""
        if self.size == 1:
            return True
        lo = torch.tensor([value], dtype=torch.int64, device=self.device)
        hi = lo.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return int(lo) == int(hi)

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give every process rank 0's values of `tensors`, in place."""
        if self.size > 1:
            for t in tensors:
                dist.broadcast(t, src=0)


def group() -> Group:
    """The group this process belongs to (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return Group(dist.get_rank(), dist.get_world_size(), device)


def is_main() -> bool:
    """Whether this process prints and writes files (rank 0, or the only process)."""
    return group().main


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise UserError(f"{name} must be a whole number, got {text!r} (set by torchrun)")
    return int(text)


def launched() -> bool:
    """Whether torchrun started this process as one of several (`WORLD_SIZE` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


@contextlib.contextmanager
def session(device: str | None = None) -> Iterator[Group]:
    """Join the group torchrun started (gloo, or NCCL when `device` is CUDA: `auto` with a GPU,
    `cuda`, `cuda:N`), yield this process's `Group`, and leave the group at the end. Outside
    torchrun (or with one process) it yields rank 0 of 1 and starts nothing. The processes
    other than rank 0 print nothing on stdout and show no warnings (rank 0 shows the same)."""
    if not launched() or dist.is_initialized():
        yield group()
        return
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available() and (device or "auto") != "cpu" \
        and (device or "auto").split(":")[0] in ("auto", "cuda")
    if cuda:
        # One GPU per process: `cuda` (or `auto`) then means this process's GPU.
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    try:
        g = group()
        if g.main:
            yield g
        else:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield g
                sys.stdout.flush()
        # Every process done before any tears the group down: a process that left while
        # another still talked to it was seen to abort under gloo ("terminate called without
        # an active exception", once in CI). Not after an error: the others may never come.
        dist.barrier()
    finally:
        dist.destroy_process_group()
