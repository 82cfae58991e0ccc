"""Training the rate-distortion VAE (`methods.rd.model`) from its first step: distortion + lam *
rate.

Every latent starts at `w / (std / init_bins)`; the latents, the decoder's steps and the prior
are trained together by Adam (a step function of `training.loop`), the learning rates decayed by
a cosine over the last half of the run. `methods.rd.warm` starts from the closed form instead.

With a checkpoint path the optimization saves its state every `checkpoint_every_s` seconds and a
run killed midway resumes from it to the same integers and steps, bit for bit, as an
uninterrupted run (`vaecompress.checkpoint`); the task's batch stream is replayed to where it was.

Under torchrun the data-free optimization (`distortion="weights"`, the `vae-rd-free` codec) is
shared by the processes (`training.distributed`): each computes the distortion and rate terms of
its share of the tensors (balanced by size), and the gradients, those of the prior and the
decoder included, are summed over the group before every process takes the same Adam step. With
the task's loss each process runs the whole optimization (the same one: nothing is shared).

Boundary: this module trains and returns integers and float32 steps; it knows nothing of the
compressed file. `methods.rd.vae_rd` turns them into bytes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.checkpoint import (
    Checkpoint,
    CheckpointError,
    count,
    fingerprint,
    number,
    number_list,
    optimizer_state,
    read_field,
    restore_rng,
    rng_states,
    seconds,
    state_dict_like,
)
from vaecompress.errors import UserError
from vaecompress.methods.rd.model import RDConfig, RDModel
from vaecompress.training.distributed import Group, group
from vaecompress.training.loop import Broadcast, Loop, ProgressBar, Resume

TaskLoss = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]


@dataclass
class RDResult:
    """What training leaves: per tensor, the integer latents and the decoder's float32 steps."""

    names: list[str]
    ints: list[torch.Tensor]  # int64, each the shape of its tensor
    steps: list[torch.Tensor]  # float32, shape [1] (tensor/shared) or [rows] (row)
    history: dict[str, list[float]] = field(default_factory=dict)
    train_s: float = 0.0


def _weight_distortion(model: RDModel, w: Mapping[str, torch.Tensor],
                       own: Collection[int] | None = None) -> torch.Tensor:
    """The mean over tensors of each tensor's squared error relative to its own energy.

    Relative per tensor, not over the whole model: a layer's output error relative to its
    signal scales with `|dW|^2 / |W|^2` whatever the layer's size, and the errors of the layers
    add up along the network; a global MSE would let the largest layer set one step for all and
    starve the small, sensitive ones (the output layer). With `own`, the terms of those
    tensors only, still divided by the number of all tensors: the processes' parts add up."""
    terms = []
    for i, n in enumerate(model.names):
        if own is not None and i not in own:
            continue
        terms.append(_tensor_relative_error(model, i, w[n]))
    if own is None:
        return torch.stack(terms).mean()
    return torch.stack(terms).sum() / len(model.names) if terms else torch.zeros(())


def _tensor_relative_error(model: RDModel, i: int, w: torch.Tensor) -> torch.Tensor:
    ref = model.orig(i)
    energy = float((ref**2).sum())
    return ((w - ref) ** 2).sum() / max(energy, 1e-30)


def _backward_by_tensor(model: RDModel, lam: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data-free loss (`_weight_distortion` + lam * bits per parameter) and its backward
    pass, one tensor at a time: each tensor's term is built and differentiated before the next,
    so the memory of the graph is that of the largest tensor, not of the model. The gradients
    are those of the whole loss bit for bit: each term reaches only its own latents, its own
    step and its own row of the prior, with the same factors (1/T, lam/n). Returns the
    (distortion, bits per parameter) the whole loss would report."""
    count = len(model.names)
    d_sum, bits_sum = 0.0, 0.0
    for i in range(count):
        w, b = model.term(i)
        t = _tensor_relative_error(model, i, w)
        (t / count + lam * (b / n)).backward()
        d_sum += float(t.detach())
        bits_sum += float(b.detach())
    return torch.tensor(d_sum / count), torch.tensor(bits_sum / n)


def _shares(sizes: list[int], processes: int) -> list[list[int]]:
    """The tensors (indices into `sizes`) of each process: the largest first, each to the
    process with the fewest parameters so far."""
    loads = [0] * processes
    parts: list[list[int]] = [[] for _ in range(processes)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(processes), key=lambda r: (loads[r], r))
        parts[r].append(i)
        loads[r] += sizes[i]
    return parts



def train_rd(
    tensors: Mapping[str, torch.Tensor],
    cfg: RDConfig,
    *,
    fixed: Mapping[str, torch.Tensor] | None = None,
    task_loss: TaskLoss | None = None,
    batches: Iterator[Any] | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "vae-rd",
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float | None = None,
) -> RDResult:
    """Optimize latents, decoder and prior for distortion + lam * bits per parameter.

    `fixed` are the tensors the distortion needs but the codec does not code (integer buffers);
    `task_loss(state, batch)` and `batches` are required for `distortion="task"`.
    `checkpoint`: a file to keep the optimization's state in (saved after a step, at most every
    `checkpoint_every_s` seconds), resumed from when it holds a state of this same run and
    removed at the end; a resumed run draws again, and skips, the batches already used, so
    `batches` must yield the same sequence in every run (the zoo's finetuner does). Under
    torchrun the data-free optimization is shared by the processes (module docstring)."""
    device = device or torch.device("cpu")
    if cfg.distortion == "task" and (task_loss is None or batches is None):
        raise ValueError("task distortion needs a task loss and batches")
    grp = group()
    torch.manual_seed(cfg.seed)
    model = RDModel(tensors, cfg).to(device)
    own = None
    if grp.size > 1 and cfg.distortion == "weights":
        own = set(_shares([t.numel() for t in model.latents], grp.size)[grp.rank])
    fixed_d = {k: v.to(device) for k, v in (fixed or {}).items()}
    run = _Steps(model, cfg, fixed_d, task_loss, batches, own, grp, device)
    ck = Checkpoint(None, kind="train_rd", fingerprint="")
    if checkpoint is not None:
        inputs: list[Any] = [list(tensors), *tensors.values(), *sorted((fixed or {}).items())]
        if cfg.distortion == "task":  # the first batch stands for the task's data
            first = next(run.batches)  # type: ignore[arg-type]
            run.batches = itertools.chain([first], run.batches)  # type: ignore[arg-type]
            inputs.append(_batch_digest(first))
        config = {"config": asdict(cfg), "device": device.type, "processes": grp.size}
        ck = Checkpoint(checkpoint, kind="train_rd",
                        fingerprint=fingerprint("train_rd", config, inputs),
                        every_s=checkpoint_every_s, writes=grp.main)
    loop = Loop(run.step, cfg.steps)
    loop.add(Resume(ck, lambda saved: run.check(saved, loop), run.state, grp=grp))
    loop.add(ProgressBar(cfg.steps, desc=desc, unit="step", enabled=progress,
                         status=run.status))
    loop.add(Broadcast(lambda: model.state_dict().values()))
    loop.run()
    ints, steps = model.export()
    run.hist["prior_bits_final"] = [model.prior_bits()]
    return RDResult(model.names, ints, steps, run.hist, loop.elapsed_s())


_HISTORY = ("step", "loss", "distortion", "bits_per_param")


class _Steps:
    """The step function of `train_rd`: one Adam step on distortion + lam * bits per parameter,
    the history's running means, what a checkpoint holds and how it is read back."""

    def __init__(self, model: RDModel, cfg: RDConfig, fixed: Mapping[str, torch.Tensor],
                 task_loss: TaskLoss | None, batches: Iterator[Any] | None,
                 own: Collection[int] | None, grp: Group, device: torch.device) -> None:
        self.model, self.cfg, self.fixed, self.task_loss = model, cfg, fixed, task_loss
        self.batches, self.own, self.grp, self.device = batches, own, grp, device
        groups = [
            {"params": [p for p in model.latents if p.requires_grad], "lr": cfg.lr},
            {"params": [*model.log_steps,
                        *([model.log_shared] if cfg.decoder == "shared" else [])],
             "lr": cfg.lr_step},
            {"params": [p for p in model.prior.parameters() if p.requires_grad],
             "lr": cfg.lr_prior},
        ]
        self.opt = torch.optim.Adam([g for g in groups if g["params"]])
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.n = model.n_params()
        self.hist: dict[str, list[float]] = {k: [] for k in _HISTORY}
        self.every = max(1, cfg.steps // 50)
        self.acc: dict[str, Any] = {"loss": 0.0, "d": 0.0, "b": 0.0, "k": 0}
        self.shown = ""
        # The data-free loss is a sum over tensors: differentiated tensor by tensor, it needs
        # the memory of one tensor's graph. One shared step couples them (and under torchrun
        # each process sums its share's gradients with the others'): the whole graph then.
        self.by_tensor = cfg.distortion == "weights" and own is None and cfg.decoder != "shared"

    def step(self, loop: Loop) -> None:
        it, cfg, opt = loop.it, self.cfg, self.opt
        # Cosine decay over the last half: the latents settle into their bins.
        frac = max(0.0, (it / max(cfg.steps, 1) - 0.5) * 2)
        for g, lr in zip(opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.zero_grad(set_to_none=True)
        loss, d, bpp = self._loss_backward()
        opt.step()
        acc = self.acc
        acc["loss"] += float(loss.detach())
        acc["d"] += float(d.detach())
        acc["b"] += float(bpp.detach())
        acc["k"] += 1
        if (it + 1) % self.every == 0 or it + 1 == cfg.steps:
            k = acc["k"]
            self.hist["step"].append(it + 1)
            self.hist["loss"].append(acc["loss"] / k)
            self.hist["distortion"].append(acc["d"] / k)
            self.hist["bits_per_param"].append(acc["b"] / k)
            self.shown = f"bits_per_param {acc['b'] / k:.3f}, distortion {acc['d'] / k:.4f}"
            self.acc = {"loss": 0.0, "d": 0.0, "b": 0.0, "k": 0}

    def _loss_backward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss's backward pass; returns (loss, distortion, bits per parameter), summed
        over the group when the processes share the tensors."""
        model, cfg, own, grp = self.model, self.cfg, self.own, self.grp
        if self.by_tensor:  # forward and backward, term by term
            d, bpp = _backward_by_tensor(model, cfg.lam, self.n)
            return d + cfg.lam * bpp, d, bpp
        w, bits = model(own)
        if cfg.distortion == "task":
            batch = next(self.batches)  # type: ignore[arg-type]
            d = self.task_loss({**self.fixed, **w}, batch)  # type: ignore[misc]
        else:
            d = _weight_distortion(model, w, own)
        bpp = bits / self.n
        loss = d + cfg.lam * bpp
        if own is None:
            loss.backward()
            return loss, d, bpp
        # This process's terms; the group sums the gradients and the loss's parts.
        if loss.requires_grad:  # False when the share holds no tensor
            loss.backward()
        grp.sum_grads(model.parameters())
        loss, d, bpp = grp.sum_(torch.stack([loss.detach(), d.detach(), bpp.detach()]))
        return loss, d, bpp

    def status(self, loop: Loop) -> str | None:
        return self.shown if loop.done % self.every == 0 or loop.done == self.cfg.steps else None

    def state(self, loop: Loop) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": rng_states({}, self.device), "step": loop.done, "history": self.hist,
                "acc": self.acc, "train_s": loop.elapsed_s()}

    def check(self, saved: dict[str, Any], loop: Loop) -> tuple[int, Callable[[], None]]:
        """Check every field of a `train_rd` checkpoint; returns (steps done, the function that
        loads it: the model, the optimizer, the random state, the history and the running sums
        of its current window, and the task's batches skipped to where the run was). Nothing
        is changed here."""
        start = count(saved, "step", 1, self.cfg.steps - 1)
        hist = _check_history(read_field(saved, "history", dict), start)
        a = read_field(saved, "acc", dict)
        if set(a) != {"loss", "d", "b", "k"}:
            raise CheckpointError("field 'acc' is malformed")
        acc: dict[str, Any] = {k: number(a, k) for k in ("loss", "d", "b")}
        acc["k"] = count(a, "k", 0, start)
        train_s = seconds(saved, "train_s")
        weights = state_dict_like(saved.get("model"), self.model.state_dict(),
                                  "latents and prior")
        opt_state = optimizer_state(saved.get("optimizer"), self.opt)
        set_rng = restore_rng(saved.get("rng"), {}, self.device)

        def load() -> None:
            self.model.load_state_dict(weights)
            self.opt.load_state_dict(opt_state)
            set_rng()
            self.hist, self.acc, loop.before_s = hist, acc, train_s
            if self.cfg.distortion == "task":
                for _ in range(start):  # the batches the interrupted run used
                    next(self.batches)  # type: ignore[arg-type]

        return start, load


def _check_history(h: dict[str, Any], start: int) -> dict[str, list[Any]]:
    if set(h) != set(_HISTORY):
        raise CheckpointError("field 'history' is malformed")
    points = len(read_field(h, "step", list))
    hist: dict[str, list[Any]] = {k: number_list(h, k, points) for k in _HISTORY[1:]}
    hist_steps = h["step"]
    if any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= start
           for s in hist_steps):
        raise CheckpointError("field 'history' holds a step that was not done")
    return {"step": list(hist_steps), **hist}


def _batch_digest(batch: Any) -> list[Any]:
    """The tensors and plain values of a batch (nested in tuples, lists, dicts), for a
    fingerprint; other objects count by their type alone (their repr may hold an address)."""
    if isinstance(batch, torch.Tensor | np.ndarray | int | float | str | bool) or batch is None:
        return [batch]
    if isinstance(batch, tuple | list):
        return [len(batch), *(x for b in batch for x in _batch_digest(b))]
    if isinstance(batch, Mapping):
        return [sorted(map(str, batch)), *(x for k in batch for x in _batch_digest(batch[k]))]
    return [type(batch).__qualname__]


def check_finite(state: Mapping[str, torch.Tensor], codec: str) -> None:
    for k, v in state.items():
        if v.numel() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{codec}: tensor '{k}' holds NaN or Inf values; this codec "
                            "refuses them (a lossless codec such as zstd keeps them)")


def rd_report(res: RDResult, data: bytes) -> dict[str, Any]:
    ints = [z.numpy() for z in res.ints]
    n = sum(z.size for z in ints)
    nz = sum(int(np.count_nonzero(z)) for z in ints)
    return {
        "train_s": res.train_s,
        "history": res.history,
        "latent_bytes": len(data),
        "nonzero_fraction": nz / n if n else 0.0,
        "prior_bits": res.history.get("prior_bits_final", [None])[0],
    }
