"""The rate-distortion VAE of the `vae-rd` codec: integer latents, a tiny decoder, a learned prior.

For every floating tensor `w` of a model there is a latent tensor `z` of the same shape and a
decoder `w_hat = step * round(z)` (one learned step per tensor, or per output row, or one shared
by all tensors). With quantized latents and a box posterior of unit width, the negative ELBO is
exactly distortion + rate (Balle et al., arXiv 1611.01704): the rate is `-log2 p(round(z))` under
the learned prior (`vae.prior`), the size of the entropy-coded latents; the distortion is the
task loss of the model run with `w_hat` (task-aware, needs training data) or the squared error
`|w_hat - w|^2` relative to the weights' energy (data-free). EPR (Oktay et al., arXiv 1906.06624)
is this model without an encoder; so is the default here: the latents are optimized directly
for the one model (`latents="direct"`). `latents="encoder"` keeps an amortized encoder instead,
`z = w / step` of the original weights, so only the decoder and the prior learn (the ablation of
what per-model latents bring).

Quantization during training (`quant`): `mixed` (default) runs the task on straight-through
rounded latents and measures the rate on noisy ones (`z + u`, `u ~ U(-1/2, 1/2)`); `noise` uses
the noisy latents for both; `ste` uses straight-through rounding for both.

With a checkpoint path the optimization saves its state every `checkpoint_every_s` seconds and a
run killed midway resumes from it to the same integers and steps, bit for bit, as an
uninterrupted run (`vaecompress.checkpoint`); the task's batch stream is replayed to where it was.

Under torchrun the data-free optimization (`distortion="weights"`, the `vae-rd-free` codec) is
shared by the processes (`training.distributed`): each computes the distortion and rate terms of its
share of the tensors (balanced by size), and the gradients, those of the prior and the decoder
included, are summed over the group before every process takes the same Adam step. With the
task's loss each process runs the whole optimization (the same one: nothing is shared).

Boundary: this module trains and returns integers and float32 steps; it knows nothing of the
compressed file. `codecs.vae_rd` turns them into bytes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
from vaecompress.progress import progress as progress_bar
from vaecompress.training.distributed import group
from vaecompress.vae.prior import MixturePrior

QUANT_MODES = ("mixed", "noise", "ste")
DECODERS = ("tensor", "row", "shared")
LATENTS = ("direct", "encoder")
DISTORTIONS = ("task", "weights")

TaskLoss = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]
SAMPLE_MIN = 65536  # a tensor up to this size has its rate computed on every latent


@dataclass(frozen=True)
class RDConfig:
    lam: float = 0.05  # weight of the rate (bits per parameter) against the distortion
    steps: int = 1000  # optimizer steps
    # Latents move fast (0.1 bin per step) and start coarse (std / 4): in a few epochs a weight
    # can travel from its initial bin to zero, and the step size can grow tenfold. With 0.02 and
    # std / 16 two epochs left 84 % of the FNN's latents non-zero at 5.6 bits per parameter.
    lr: float = 0.1  # Adam, latents (in quantization bins)
    lr_step: float = 1e-2  # Adam, log of the decoder's steps
    lr_prior: float = 1e-2  # Adam, the prior's parameters
    init_bins: float = 4.0  # the first step is std(w) / init_bins
    quant: str = "mixed"
    decoder: str = "tensor"
    latents: str = "direct"
    learned_prior: bool = True
    components: int = 3  # logistic components of each tensor's prior
    distortion: str = "task"
    seed: int = 0
    # The warm start (`train_rd(init_steps=...)`, the task-aware codec at scale):
    rate_sample: float = 1.0  # share of a large tensor's latents the rate is estimated on
    slope: float = 0.0  # > 0: lam = slope * 2 ln 2 * the task loss at the start (`_warm_lam`)
    validate_every: int = 0  # steps between early-stopping checks on the validation batches
    patience: int = 0  # checks without improvement before stopping (0: never stop early)


@dataclass
class RDResult:
    """What training leaves: per tensor, the integer latents and the decoder's float32 steps."""

    names: list[str]
    ints: list[torch.Tensor]  # int64, each the shape of its tensor
    steps: list[torch.Tensor]  # float32, shape [1] (tensor/shared) or [rows] (row)
    history: dict[str, list[float]] = field(default_factory=dict)
    train_s: float = 0.0


def rows_of(shape: torch.Size | list[int]) -> int:
    return int(shape[0]) if len(shape) >= 2 else 1


class RDModel(nn.Module):
    def __init__(self, tensors: Mapping[str, torch.Tensor], cfg: RDConfig,
                 init_steps: Sequence[float] | None = None) -> None:
        super().__init__()
        self.warm = init_steps is not None
        self.cfg = cfg
        self.names = list(tensors)
        self.shapes = [tensors[k].shape for k in self.names]
        ref = [tensors[k].detach().to(torch.float32) for k in self.names]
        self.register_buffer("_n", torch.tensor(sum(t.numel() for t in ref)))
        if not self.warm:  # the warm start's task loss never reads the original weights
            for i, t in enumerate(ref):
                self.register_buffer(f"orig{i}", t.clone())
        log_steps = []
        for t in ref:
            scale = float(t.std()) if t.numel() > 1 else 0.0
            if not math.isfinite(scale) or scale <= 0:
                scale = float(t.abs().max()) if t.numel() else 0.0
            scale = scale if scale > 0 else 1e-3
            n_steps = rows_of(t.shape) if cfg.decoder == "row" else 1
            log_steps.append(torch.full((n_steps,), math.log(scale / cfg.init_bins)))
        if init_steps is not None:  # the closed form's steps (`vae.allocate`)
            if cfg.decoder != "tensor" or cfg.latents != "direct" or len(init_steps) != len(ref):
                raise ValueError("a warm start needs one step per tensor and direct latents")
            log_steps = [torch.full((1,), math.log(float(d))) for d in init_steps]
        if cfg.decoder == "shared":
            shared = torch.stack([s[0] for s in log_steps]).mean().reshape(1)
            self.log_shared = nn.Parameter(shared)
            self.log_steps = nn.ParameterList()
        else:
            self.log_steps = nn.ParameterList(nn.Parameter(s) for s in log_steps)
        self.latents = nn.ParameterList(
            nn.Parameter(t / torch.exp(s).reshape(-1, *[1] * (t.dim() - 1))
                         if s.numel() > 1 else t / float(torch.exp(s)))
            for t, s in zip(ref, log_steps, strict=True)
        )
        if cfg.latents == "encoder":
            for p in self.latents:
                p.requires_grad_(False)
        self.prior = MixturePrior(len(ref), cfg.components, learned=cfg.learned_prior)
        if self.warm:  # the prior's scales from the latents' spread, in bins
            with torch.no_grad():
                for i, z in enumerate(self.latents):
                    spread = float(z.std()) if z.numel() > 1 else 1.0
                    self.prior.fit_scale(i, spread if math.isfinite(spread) else 1.0)

    def n_params(self) -> int:
        return int(self._n)

    def orig(self, i: int) -> torch.Tensor:
        return getattr(self, f"orig{i}")

    def step(self, i: int) -> torch.Tensor:
        if self.cfg.decoder == "shared":
            return torch.exp(self.log_shared)
        return torch.exp(self.log_steps[i])

    def latent(self, i: int) -> torch.Tensor:
        if self.cfg.latents == "encoder":  # the amortized encoder: z = w / step
            s = self.step(i)
            w = self.orig(i)
            return w / (s.reshape(-1, *[1] * (w.dim() - 1)) if s.numel() > 1 else s.reshape(()))
        return self.latents[i]

    @staticmethod
    def _q(z: torch.Tensor, how: str) -> torch.Tensor:
        if how == "round":
            return torch.round(z)
        if how == "ste":
            return z + (torch.round(z) - z).detach()
        return z + (torch.rand_like(z) - 0.5)

    def _modes(self) -> tuple[str, str]:
        q = self.cfg.quant
        return {"mixed": ("ste", "noise"), "noise": ("noise", "noise"), "ste": ("ste", "ste")}[q]

    def forward(
        self, own: Collection[int] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(decoded tensors for the distortion, rate in bits) with training relaxations; with
        `own`, of those tensors only (a process's share in a group). The others still draw
        their noise, so that each tensor gets the noise it gets in one process."""
        how_w, how_r = self._modes()
        out, bits = {}, torch.zeros(())
        for i, name in enumerate(self.names):
            if own is not None and i not in own:
                if "noise" in (how_w, how_r):  # `_q`'s one draw of this tensor's noise
                    p = self.latents[i]
                    torch.rand(p.shape, dtype=p.dtype, device=p.device)
                continue
            out[name], b = self.term(i)
            bits = bits + b
        return out, bits

    def term(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor `i` with the training relaxations: (its decoded weights, its rate in bits)."""
        how_w, how_r = self._modes()
        z = self.latent(i)
        zw = self._q(z, how_w)
        zr = zw if how_r == how_w else self._q(z, how_r)
        s = self.step(i)
        w = zw * s.reshape(-1, *[1] * (z.dim() - 1)) if s.numel() > 1 else zw * s.reshape(())
        return w, self.prior.bits_fast(zr, i)

    def term_task(self, i: int) -> torch.Tensor:
        """Tensor `i` as the task sees it in a warm start (`vae.warm`): `step * round(z)` with
        the straight-through gradient, in one op that keeps no copy of the latents."""
        return _RoundScale.apply(self.latent(i), self.step(i))

    def rate(self, i: int) -> torch.Tensor:
        """Tensor `i`'s rate in bits on its noisy latents (warm start): on a uniform sample of
        `rate_sample` of them for a large tensor, scaled up, an unbiased estimate of the
        whole (`SAMPLE_MIN`)."""
        z = self.latent(i).reshape(-1)
        n = z.numel()
        if self.cfg.rate_sample < 1.0 and n > SAMPLE_MIN:
            k = max(SAMPLE_MIN, round(self.cfg.rate_sample * n))
            z = z[torch.randint(n, (k,), device=z.device)]
            return self.prior.bits_fast(self._q(z, "noise"), i) * (n / k)
        return self.prior.bits_fast(self._q(z, "noise"), i)

    @torch.no_grad()
    def export(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ints = [torch.round(self.latent(i)).to(torch.int64).cpu() for i in range(len(self.names))]
        steps = [self.step(i).detach().to("cpu", torch.float32).clone()
                 for i in range(len(self.names))]
        return ints, steps

    @torch.no_grad()
    def prior_bits(self) -> float:
        ints, _ = self.export()
        return float(sum(self.prior.bits(z.to(torch.float32), i) for i, z in enumerate(ints)))


class _RoundScale(torch.autograd.Function):
    """`step * round(z)` with the straight-through gradient (`d/dz = step`), saving nothing but
    its inputs: the warm start's decoder for the task, at the memory of the latents alone."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, step)
        return torch.round(z) * step.reshape(())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, step = ctx.saved_tensors
        return grad * step.reshape(()), (grad * torch.round(z)).sum().reshape(step.shape)


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
    loads, parts = [0] * processes, [[] for _ in range(processes)]
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
    groups = [
        {"params": [p for p in model.latents if p.requires_grad], "lr": cfg.lr},
        {"params": [*model.log_steps, *([model.log_shared] if cfg.decoder == "shared" else [])],
         "lr": cfg.lr_step},
        {"params": [p for p in model.prior.parameters() if p.requires_grad], "lr": cfg.lr_prior},
    ]
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    base_lrs = [g["lr"] for g in opt.param_groups]
    n = model.n_params()
    hist: dict[str, list[float]] = {"step": [], "loss": [], "distortion": [], "bits_per_param": []}
    every = max(1, cfg.steps // 50)
    acc = {"loss": 0.0, "d": 0.0, "b": 0.0, "k": 0}
    start, before_s = 0, 0.0
    if checkpoint is not None:
        inputs: list[Any] = [list(tensors), *tensors.values(), *sorted((fixed or {}).items())]
        if cfg.distortion == "task":  # the first batch stands for the task's data
            first = next(batches)  # type: ignore[arg-type]
            batches = itertools.chain([first], batches)  # type: ignore[arg-type]
            inputs.append(_batch_digest(first))
        ck = Checkpoint(
            checkpoint,
            kind="train_rd",
            fingerprint=fingerprint(
                "train_rd",
                {"config": asdict(cfg), "device": device.type, "processes": grp.size},
                inputs,
            ),
            every_s=checkpoint_every_s,
            writes=grp.main,
        )
    else:
        ck = Checkpoint(None, kind="train_rd", fingerprint="")
    saved = ck.load()
    resume = None
    if saved is not None:
        try:
            resume = _check_rd(saved, model, opt, device, cfg.steps)
        except CheckpointError as e:
            ck.reject(str(e))
    if not grp.agree(resume[0] if resume else 0):
        ck.reject("the processes found different checkpoints (it must lie on a file system "
                  "every process reads)")
        resume = None
    if resume:
        start, hist, acc, before_s, load = resume
        load()
    if start and cfg.distortion == "task":
        for _ in range(start):  # the batches the interrupted run used
            next(batches)  # type: ignore[arg-type]
    # The data-free loss is a sum over tensors: differentiated tensor by tensor, it needs the
    # memory of one tensor's graph. One shared step couples them (and under torchrun each
    # process sums its share's gradients with the others'): the whole graph then.
    by_tensor = cfg.distortion == "weights" and own is None and cfg.decoder != "shared"
    t0 = time.perf_counter() - before_s
    bar = progress_bar(cfg.steps, desc=desc, unit="step", enabled=progress)
    bar.update(start)
    for it in range(start, cfg.steps):
        # Cosine decay over the last half: the latents settle into their bins.
        frac = max(0.0, (it / max(cfg.steps, 1) - 0.5) * 2)
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.zero_grad(set_to_none=True)
        if by_tensor:  # forward and backward, term by term
            d, bpp = _backward_by_tensor(model, cfg.lam, n)
            loss = d + cfg.lam * bpp
        else:
            w, bits = model(own)
            if cfg.distortion == "task":
                d = task_loss({**fixed_d, **w}, next(batches))  # type: ignore[misc,arg-type]
            else:
                d = _weight_distortion(model, w, own)
            bpp = bits / n
            loss = d + cfg.lam * bpp
            if own is None:
                loss.backward()
            else:  # this process's terms; the group sums the gradients and the loss's parts
                if loss.requires_grad:  # False when the share holds no tensor
                    loss.backward()
                grp.sum_grads(model.parameters())
                loss, d, bpp = grp.sum_(torch.stack([loss.detach(), d.detach(), bpp.detach()]))
        opt.step()
        acc["loss"] += float(loss.detach())
        acc["d"] += float(d.detach())
        acc["b"] += float(bpp.detach())
        acc["k"] += 1
        if (it + 1) % every == 0 or it + 1 == cfg.steps:
            k = acc["k"]
            hist["step"].append(it + 1)
            hist["loss"].append(acc["loss"] / k)
            hist["distortion"].append(acc["d"] / k)
            hist["bits_per_param"].append(acc["b"] / k)
            bar.set_postfix(bits_per_param=f"{acc['b'] / k:.3f}", distortion=f"{acc['d'] / k:.4f}")
            acc = {"loss": 0.0, "d": 0.0, "b": 0.0, "k": 0}
        bar.update()
        if it + 1 < cfg.steps and ck.due():
            ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "rng": rng_states({}, device), "step": it + 1, "history": hist,
                     "acc": acc, "train_s": time.perf_counter() - t0})
    bar.close()
    ck.finish()
    grp.broadcast_(model.state_dict().values())  # every process returns rank 0's result
    ints, steps = model.export()
    hist["prior_bits_final"] = [model.prior_bits()]
    return RDResult(model.names, ints, steps, hist, time.perf_counter() - t0)


_HISTORY = ("step", "loss", "distortion", "bits_per_param")


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


def _check_rd(
    saved: dict[str, Any], model: RDModel, opt: torch.optim.Optimizer, device: torch.device,
    steps: int,
) -> tuple[int, dict[str, list[Any]], dict[str, Any], float, Callable[[], None]]:
    """Check every field of a `train_rd` checkpoint; returns (steps done, history, the running
    sums of the current history window, training time, the function that loads the rest into
    `model`, `opt` and the random state). Nothing is changed here."""
    start = count(saved, "step", 1, steps - 1)
    h = read_field(saved, "history", dict)
    if set(h) != set(_HISTORY):
        raise CheckpointError("field 'history' is malformed")
    points = len(read_field(h, "step", list))
    hist: dict[str, list[Any]] = {k: number_list(h, k, points) for k in _HISTORY[1:]}
    hist_steps = h["step"]
    if any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= start
           for s in hist_steps):
        raise CheckpointError("field 'history' holds a step that was not done")
    hist = {"step": list(hist_steps), **hist}
    a = read_field(saved, "acc", dict)
    if set(a) != {"loss", "d", "b", "k"}:
        raise CheckpointError("field 'acc' is malformed")
    acc: dict[str, Any] = {k: number(a, k) for k in ("loss", "d", "b")}
    acc["k"] = count(a, "k", 0, start)
    train_s = seconds(saved, "train_s")
    weights = state_dict_like(saved.get("model"), model.state_dict(), "latents and prior")
    opt_state = optimizer_state(saved.get("optimizer"), opt)
    set_rng = restore_rng(saved.get("rng"), {}, device)

    def load() -> None:
        model.load_state_dict(weights)
        opt.load_state_dict(opt_state)
        set_rng()

    return start, hist, acc, train_s, load


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
