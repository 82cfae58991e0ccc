"""The task-aware rate-distortion VAE at scale: a warm start from the closed form, then
distillation.

`methods.rd.train.train_rd` starts every latent at `w / (std / init_bins)` and trains everything
from there; on a model of millions of weights and a budget of a few hundred steps that start is far
from any good file (issue 19: MiniLM at 0.978 mean cosine after 64 steps). Here the training
starts where the data-free codec ends (`methods.rd.allocate`): one step per tensor from reverse
water-filling at a fidelity `snr`, latents `w / step` (not yet rounded), the prior's scales
fitted to their spread; the latents of linear layers may start rounded with error feedback
instead (`init_latents`, `methods.rd.feedback`: the codec's `rounding`). The distillation then
only has to choose, for each weight, the bin its rounding falls in, and nudge the steps: what
AdaRound (Nagel et al. 2020) does for one rounding per weight, here under the rate term of EPR
(Oktay et al. 2020).

What is scaled to the model and the run, not tuned on one:

- the rate's weight: `lam = slope * 2 ln 2 * D0`, with `D0` the task loss of the warm start (on
  the validation batches). At high rate `D(R) ~ D0 2^(-2(R - R0))`, so this is the slope of the
  warm start's own operating point: training keeps about its rate and lowers its distortion
  (`slope` > 1 trades distortion for bytes, < 1 the reverse);
- the latents' learning rate: at most one bin over the run (`1 / steps` per step under Adam,
  whose steps are about the learning rate whatever the gradient) and at most `MAX_LR_BINS` a
  step, the steps' a tenth of that in log scale: a latent can change its bin, not travel;
- the rate is estimated on a uniform sample of each large tensor's latents (`rate_sample`),
  scaled up: an unbiased estimate at a fraction of the cost;
- early stopping on the validation batches (`Finetuner.validation`): the state with the lowest
  `D_val + lam * R` seen is returned, the warm start included, so the result is never worse on
  them than the closed form it started from.

Under torchrun the distillation batches are shared: each process runs the task on its own
batch of each step, the task's gradients are averaged over the group, and every process adds
the same rate gradient (the same random draws) and takes the same Adam step.

A warm run keeps no checkpoint (it is meant to take minutes); `train_rd`'s does.

Boundary: like `methods.rd.train`, integers and float32 steps out; nothing of the file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from vaecompress.methods.rd.model import RDConfig, RDModel
from vaecompress.methods.rd.train import RDResult, TaskLoss
from vaecompress.training.adam import SlicedAdam
from vaecompress.training.distributed import group
from vaecompress.training.loop import EarlyStopping, Loop, ProgressBar

LOG2E2 = 2.0 * math.log(2.0)  # -dD/dR / D at high rate, R in bits
SLICE = 2**20  # latents scored at a time
# Adam moves every latent by about its learning rate at once: a step of 0.3 bins adds noise of
# the quantization's own power to every weight (measured: a 3-step run on MiniLM went from a
# task loss of 0.003 to 0.2 in one step). 0.02 bins adds 0.5% of it.
MAX_LR_BINS = 0.02
PRIOR_FIT_STEPS = 100  # Adam steps fitting the prior to the warm start before distilling


def _decoded(model: RDModel) -> dict[str, torch.Tensor]:
    """The weights the file will decode to: `step * round(z)`."""
    return {n: torch.round(model.latents[i]) * model.step(i).reshape(())
            for i, n in enumerate(model.names)}


@torch.no_grad()
def _score(model: RDModel, fixed: Mapping[str, torch.Tensor], task_loss: TaskLoss,
           batches: Sequence[Any], lam: float, n: int) -> tuple[float, float, float]:
    """(loss, task loss, bits per parameter) of the rounded state on fixed batches."""
    state = {**fixed, **_decoded(model)}
    d = sum(float(task_loss(state, b)) for b in batches) / len(batches)
    bits = sum(_entropy_bits(z) for z in model.latents)
    return d + lam * bits / n, d, bits / n


def _entropy_bits(z: torch.Tensor) -> float:
    """The empirical entropy of the rounded latents of one tensor, in bits: what the file's
    frequency table of that tensor codes them in (about; the table's own bytes aside). Not the
    prior's estimate, which moves as the prior learns. Counted in slices."""
    flat = z.detach().reshape(-1)
    if not flat.numel():
        return 0.0
    lo, hi = int(torch.round(flat.min())), int(torch.round(flat.max()))
    counts = torch.zeros(hi - lo + 1, dtype=torch.float64, device=flat.device)
    for a in range(0, flat.numel(), SLICE):
        part = torch.round(flat[a : a + SLICE]).to(torch.int64) - lo
        counts += torch.bincount(part, minlength=len(counts)).to(torch.float64)
    counts = counts[counts > 0]
    return float(-(counts * torch.log2(counts / flat.numel())).sum())


def _snapshot(model: RDModel) -> list[torch.Tensor]:
    """What the file would hold now: the rounded latents, each in the narrowest integer type
    that holds its range (a quarter of the floats' memory at the fidelities of a warm start,
    whose latents rarely pass 127), and the log-steps."""
    return [*(_narrow(torch.round(p.detach())) for p in model.latents),
            *(p.detach().clone() for p in model.log_steps)]


def _narrow(z: torch.Tensor) -> torch.Tensor:
    """Whole numbers in float, as the narrowest of int8, int16 and int32 that holds them."""
    peak = float(z.abs().max()) if z.numel() else 0.0
    for dtype in (torch.int8, torch.int16):
        if peak <= torch.iinfo(dtype).max:
            return z.to(dtype)
    return z.to(torch.int32)


def _fit_prior(model: RDModel, steps: int = PRIOR_FIT_STEPS) -> None:
    """Fit the prior alone to the warm start's noisy latents (sampled), so that the rate's
    gradient at the first step is that of a code fitted to them, not of the initial mixture's
    guess."""
    params = [p for p in model.prior.parameters() if p.requires_grad]
    if not params:
        return
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        sum(model.rate(i) for i in range(len(model.names))).backward()  # type: ignore[union-attr]
        opt.step()
    for p in model.latents:
        p.grad = None


class _Run:
    """One warm-started distillation, the step function of `training.loop`: the model, its
    optimizer, the rate's weight, the score of the checks, the best state seen on them and
    the time each part took."""

    def __init__(self, model: RDModel, cfg: RDConfig, task_loss: TaskLoss,
                 fixed: Mapping[str, torch.Tensor], checks: list[Any],
                 batches: Iterator[Any]) -> None:
        self.model, self.cfg, self.task_loss, self.fixed = model, cfg, task_loss, fixed
        self.checks, self.batches, self.n, self.grp = checks, batches, model.n_params(), group()
        self.steps = max(1, cfg.steps)
        _, d0, r0 = _score(model, fixed, task_loss, checks, 0.0, self.n)
        self.lam = cfg.slope * LOG2E2 * d0 if cfg.slope > 0 else cfg.lam
        self.start_loss = d0 + self.lam * r0  # the warm start's, the first best
        self.hist: dict[str, list[float]] = {"step": [0], "loss": [self.start_loss],
                                             "distortion": [d0], "bits_per_param": [r0],
                                             "lam": [self.lam]}
        self.keep = _snapshot(model)
        groups = [{"params": list(model.latents),
                   "lr": min(cfg.lr, 1.0 / self.steps, MAX_LR_BINS)},
                  {"params": list(model.log_steps),
                   "lr": min(cfg.lr_step, 0.1 / self.steps, MAX_LR_BINS / 10)},
                  {"params": [p for p in model.prior.parameters() if p.requires_grad],
                   "lr": cfg.lr_prior}]
        # torch's Adam, its step made a slice of a tensor at a time (`training.adam`): no
        # temporaries the size of the largest latent tensor at issue 19's peak; the same
        # numbers bit for bit.
        self.opt = SlicedAdam([g for g in groups if g["params"]])
        self.base = [g["lr"] for g in self.opt.param_groups]
        self.times = {"task_s": 0.0, "rate_s": 0.0, "validation_s": 0.0}
        self.shown = ""  # the last step's task loss and rate, for the progress status

    def step(self, loop: Loop) -> None:
        """One Adam step (cosine-decayed learning rates); the status shows its task loss and
        bits per parameter."""
        model, grp = self.model, self.grp
        for g, lr in zip(self.opt.param_groups, self.base, strict=True):
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * loop.it / self.steps))
        self.opt.zero_grad(set_to_none=True)
        a = time.perf_counter()
        mine = [next(self.batches) for _ in range(grp.size)][grp.rank]  # each process its own
        d = self._task_loss(mine)
        d.backward()
        task = float(d.detach())
        del d  # the graph: not held through the checks
        if grp.size > 1:  # the mean of the processes' task gradients
            grp.sum_grads(model.parameters())
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(grp.size)
        b = time.perf_counter()
        self.times["task_s"] += b - a
        bits = torch.zeros(())
        for i in range(len(model.names) if self.lam > 0 else 0):  # tensor by tensor: one
            r = model.rate(i)  # graph at a time; no rate term at all when its weight is 0
            (self.lam * r / self.n).backward()
            bits = bits + r.detach()
        self.times["rate_s"] += time.perf_counter() - b
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # the gradients are not held through the checks
        self.shown = f"task {task:.5f}, bits_per_param {float(bits) / self.n:.3f}"

    def _task_loss(self, batch: Any) -> torch.Tensor:
        """The task's loss of the decoded weights. Nothing here keeps them after it returns:
        the graph alone holds each one, as its layer's saved tensor, so that the backward pass
        frees a layer's decoded weights once it is through that layer, while the gradients
        grow (issue 19: the two are not held at once)."""
        model = self.model
        return self.task_loss({**self.fixed, **{name: model.term_task(i)
                                                for i, name in enumerate(model.names)}}, batch)

    def score(self, loop: Loop) -> float:
        """The loss of the rounded state on the checks, recorded in the history."""
        a = time.perf_counter()
        loss, dv, rv = _score(self.model, self.fixed, self.task_loss, self.checks, self.lam,
                              self.n)
        self.times["validation_s"] += time.perf_counter() - a
        for k, v in (("step", loop.done), ("loss", loss), ("distortion", dv),
                     ("bits_per_param", rv), ("lam", self.lam)):
            self.hist[k].append(v)
        return loss

    def keep_best(self, loop: Loop) -> None:
        self.keep = _snapshot(self.model)

    def export(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The best state seen (the warm start included), as int32 latents and float32 steps;
        the training state is let go first, the float latents one tensor at a time."""
        model = self.model
        if self.cfg.validate_every:
            with torch.no_grad():
                for p, k in zip((*model.latents, *model.log_steps), self.keep, strict=True):
                    p.copy_(k.to(p.dtype))
        del self.opt, self.keep  # Adam's moments and the snapshot
        model.zero_grad(set_to_none=True)
        self.grp.broadcast_(model.state_dict().values())
        ints = []
        for p in model.latents:  # int32: the latents' range is far inside it
            ints.append(torch.round(p.detach()).to("cpu", torch.int32))
            p.data = torch.empty(0, device=p.device)
        steps = [model.step(i).detach().to("cpu", torch.float32).clone()
                 for i in range(len(model.names))]
        return ints, steps


def train_warm(
    tensors: Mapping[str, torch.Tensor],
    cfg: RDConfig,
    init_steps: Sequence[float],
    *,
    init_latents: dict[int, torch.Tensor] | None = None,
    task_loss: TaskLoss,
    batches: Iterator[Any],
    validation: Sequence[Any] | None = None,
    fixed: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "vae-rd",
) -> RDResult:
    """Distil from the warm start `init_steps` (one float step per tensor) for `cfg.steps`
    steps (module docstring); `cfg.lam` is used as given when `cfg.slope` is 0.
    `init_latents`: integer latents some tensors start from instead of `w / step` (tensor
    index -> latents; `methods.rd.feedback`), emptied as the model reads them."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = RDModel(tensors, cfg, init_steps, init_latents).to(device)
    _fit_prior(model)
    fixed_d = {k: v.to(device) for k, v in (fixed or {}).items()}
    # Batches to score on: the validation set, else the first training batch (kept aside).
    run = _Run(model, cfg, task_loss, fixed_d,
               list(validation) if validation else [next(batches)], batches)
    loop = Loop(run.step, run.steps)
    loop.add(ProgressBar(run.steps, desc=desc, unit="step", enabled=progress,
                         status=lambda lp: run.shown))
    # The early stop is rank 0's decision in a group, so that no process leaves the loop
    # while another still waits for it in the next step's all-reduce.
    stopper = EarlyStopping(run.score, patience=cfg.patience or None,
                            every=cfg.validate_every, keep=run.keep_best,
                            best=run.start_loss, decide_in_group=True)
    if cfg.validate_every:
        loop.add(stopper)
    loop.run()
    ints, out_steps = run.export()
    hist = run.hist
    hist["best_step"] = [stopper.best_at]
    hist["steps_run"] = [loop.done]
    res = RDResult(model.names, ints, out_steps, hist, time.perf_counter() - t0)
    res.history.update({k: [v] for k, v in run.times.items()})
    return res
