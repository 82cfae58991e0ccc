"""Distillation: the task of any model, without labels. The original model is the teacher, the
model rebuilt from the code the student, and the loss says how far the student's outputs are
from the teacher's on the same inputs.

A codec that trains on the task (`vae-rd`, `prune`, `deep-compression`, `kmeans` with
`finetune_epochs`) needs a loss of the model run with given tensors; a user who has inputs but
no labels (or no loss of their own) has one here: `distiller(teacher, batches)` is a
`Finetuner` whose loss is

- `output="logits"`: `T^2 * KL(softmax(t / T) || softmax(s / T))`, the mean over every row of
  the last dimension (Hinton et al. 2015; `temperature` T, 1 by default);
- `output="embedding"`: `embedding="cosine"`, the mean of `1 - cos(s, t)` over every vector of
  the last dimension, computed as `|s/|s| - t/|t||^2 / 2` (the same value, exactly zero when
  the two are equal, where `1 - <s, t>` of unit vectors is only zero up to rounding); or
  `embedding="mse"`, the mean squared difference;
- optionally, for hidden states (`hidden`: the names of the teacher's submodules, or more
  tensors returned by an `outputs` function), `hidden_weight` times the mean over them of
  `mean((s_h - t_h)^2) / mean(t_h^2)`, a relative error that needs no scale per layer (as
  TinyBERT and TernaryBERT match the transformer's layers).

`s` are the student's outputs, `t` the teacher's: the same function of the teacher's tensors
(`state`, by default the module's own; detached, so that no graph is built) on the same batch.
Student and teacher run the same code on the same inputs in the same grad mode (a kernel may
differ with it: a multi-layer LSTM's on the CPU), so at the original weights the outputs are
equal bit for bit and the loss is exactly zero. With `cache=True` and a sequence of batches,
each batch's teacher outputs are kept after their first use (memory: one copy of the outputs of
every batch), else the teacher runs again on every step.

Boundary: a loss and its batches; what the inputs are (images, sentences) is the caller's
(`tasks.mnist.mnist_distiller`, `tasks.sentence.SentenceTask.distiller`), and how a codec trains
on a `Finetuner` is `training.finetune`'s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaecompress.errors import UserError
from vaecompress.training.finetune import Finetuner, ModuleLoss

OUTPUTS = ("logits", "embedding")
EMBEDDING_LOSSES = ("cosine", "mse")
# An outputs function: the model's output on a batch with the tensors `state` (a tensor), or a
# sequence of tensors (output, hidden state, hidden state, ...).
Outputs = Callable[[Mapping[str, torch.Tensor], Any], Any]
TINY = 1e-30  # keeps the relative error of an all-zero hidden state finite


class Indexed(NamedTuple):
    """A batch with its position in a sequence of batches: the key of its cached teacher (a
    tuple, so that what fingerprints a batch, `methods.rd.train`'s checkpoint, sees its
    contents)."""

    index: int  # type: ignore[assignment]  # (shadows tuple.index, which nothing here uses)
    batch: Any


def kl_logits(student: torch.Tensor, teacher: torch.Tensor,
              temperature: float = 1.0) -> torch.Tensor:
    """`T^2 KL(softmax(t/T) || softmax(s/T))` over the last dimension, mean over the rows."""
    _check_rows(student, "logits")
    t = F.log_softmax(teacher.float() / temperature, dim=-1).reshape(-1, teacher.shape[-1])
    s = F.log_softmax(student.float() / temperature, dim=-1).reshape(-1, student.shape[-1])
    kl = (t.exp() * (t - s)).sum(-1).mean()
    return kl * temperature**2


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The mean of `1 - cos` over the vectors of the last dimension, as half the squared
    distance of the unit vectors: exactly zero when the two are equal."""
    _check_rows(student, "embedding")
    s = F.normalize(student.float().reshape(-1, student.shape[-1]), dim=-1)
    t = F.normalize(teacher.float().reshape(-1, teacher.shape[-1]), dim=-1)
    return 0.5 * (s - t).square().sum(-1).mean()


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`mean((s - t)^2) / mean(t^2)`: a hidden state's error on the scale of the state."""
    t = teacher.float()
    return (student.float() - t).square().mean() / t.square().mean().clamp_min(TINY)


def _check_rows(x: torch.Tensor, kind: str) -> None:
    if x.dim() < 2:
        raise UserError(f"distillation of {kind} compares vectors along the last dimension; "
                        f"the model returns shape {tuple(x.shape)} (use output='embedding', "
                        "embedding='mse' for one number per input)")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _split(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, Sequence) and out and all(isinstance(o, torch.Tensor) for o in out):
        return out[0], list(out[1:])
    raise UserError(f"a distillation teacher returns a tensor, or a sequence of tensors "
                    f"(output, hidden states...), not a {type(out).__name__}")


def _first_tensor(out: Any) -> torch.Tensor:
    """A submodule's output, or the first tensor of a tuple (an LSTM's, a transformer
    layer's)."""
    while isinstance(out, tuple | list) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise UserError(f"a hidden state to distil must be a tensor, got a {type(out).__name__}")
    return out


class ModuleOutputs:
    """An `nn.Module` as an outputs function (its private copy run as `ModuleLoss` runs it;
    names lose `prefix`), returning its output (the first tensor of a tuple it returns), and
    with `hidden` a list: the output, then those of the submodules named `hidden`."""

    def __init__(self, module: nn.Module, *, hidden: Sequence[str] = (), prefix: str = "") -> None:
        self.run = ModuleLoss(module, lambda out, _target: out, prefix=prefix)
        self.buffers = self.run.buffers
        self._seen: list[torch.Tensor] = []
        names = dict(self.run.net.named_modules())
        for name in hidden:
            if not name or name not in names:
                shown = ", ".join(repr(n) for n in list(names)[1:6])
                raise UserError(f"the teacher has no submodule {name!r} to match the hidden "
                                f"state of (its modules: {shown}, ...)")
            names[name].register_forward_hook(self._keep)
        self.hidden = tuple(hidden)

    def _keep(self, _module: nn.Module, _inputs: Any, out: Any) -> None:
        self._seen.append(_first_tensor(out))

    def __call__(self, state: Mapping[str, torch.Tensor],
                 batch: Any) -> torch.Tensor | list[torch.Tensor]:
        self._seen = []
        out = _first_tensor(self.run(state, (batch, None)))
        if not self.hidden:
            return out
        seen, self._seen = self._seen, []
        return [out, *seen]


class DistillLoss:
    """`loss(state, batch)`: how far the model run with `state` is from the teacher (the same
    `outputs` run with `reference`) on the batch (module docstring). A batch wrapped in
    `Indexed` has its teacher outputs kept when `cache` is true."""

    def __init__(self, outputs: Outputs, reference: Mapping[str, torch.Tensor], *,
                 output: str = "logits", temperature: float = 1.0, embedding: str = "cosine",
                 hidden_weight: float = 1.0, cache: bool = False) -> None:
        if output not in OUTPUTS:
            raise UserError(f"distillation output must be one of {', '.join(OUTPUTS)}, "
                            f"not {output!r}")
        if embedding not in EMBEDDING_LOSSES:
            raise UserError(f"distillation embedding loss must be one of "
                            f"{', '.join(EMBEDDING_LOSSES)}, not {embedding!r}")
        if not _finite(temperature) or temperature <= 0:
            raise UserError(f"distillation temperature must be a finite number above 0, got "
                            f"{temperature!r}")
        if not _finite(hidden_weight) or hidden_weight < 0:
            raise UserError(f"distillation hidden_weight must be a finite number of at least "
                            f"0, got {hidden_weight!r}")
        self.outputs = outputs
        self.reference = {k: v.detach() for k, v in reference.items()}
        self.output, self.temperature, self.embedding = output, float(temperature), embedding
        self.hidden_weight, self.cache = float(hidden_weight), cache
        self.buffers: frozenset[str] = frozenset(getattr(outputs, "buffers", ()))
        self._kept: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def teacher(self, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's output and hidden states on `batch` (kept for an `Indexed` batch
        when caching)."""
        key = batch.index if isinstance(batch, Indexed) and self.cache else None
        if key is not None and key in self._kept:
            return self._kept[key]
        raw = batch.batch if isinstance(batch, Indexed) else batch
        # Not under no_grad: some kernels (a multi-layer LSTM's on the CPU) differ with the
        # grad mode, and the student runs in the caller's. The detached tensors build no graph.
        out, hidden = _split(self.outputs(self.reference, raw))
        out, hidden = out.detach(), [h.detach() for h in hidden]
        if key is not None:
            self._kept[key] = (out, hidden)
        return out, hidden

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss between the two outputs (without hidden states)."""
        if student.shape != teacher.shape:
            raise UserError(f"the student's output has shape {tuple(student.shape)} and the "
                            f"teacher's {tuple(teacher.shape)} on the same batch")
        if self.output == "logits":
            return kl_logits(student, teacher, self.temperature)
        if self.embedding == "cosine":
            return cosine_distance(student, teacher)
        return F.mse_loss(student.float(), teacher.float())

    def __call__(self, state: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        t_out, t_hidden = self.teacher(batch)
        raw = batch.batch if isinstance(batch, Indexed) else batch
        s_out, s_hidden = _split(self.outputs(state, raw))
        loss = self.compare(s_out, t_out)
        if len(s_hidden) != len(t_hidden):
            raise UserError(f"the student returns {len(s_hidden)} hidden states and the "
                            f"teacher {len(t_hidden)}")
        if t_hidden and self.hidden_weight > 0:
            matched = torch.stack([relative_mse(s, t)
                                   for s, t in zip(s_hidden, t_hidden, strict=True)])
            loss = loss + self.hidden_weight * matched.mean()
        return loss


def _shuffled(batches: Sequence[Any], seed: int | None) -> Iterator[Indexed]:
    """Every batch of the sequence once per pass, in a seeded order (in order without a
    seed), forever; the same stream for the same seed."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(batches)))
        if seed is not None:
            rng.shuffle(order)
        for i in order:
            yield Indexed(i, batches[i])


def distiller(teacher: nn.Module | Outputs,
              batches: Sequence[Any] | Iterable[Any] | Callable[[], Iterator[Any]], *,
              state: Mapping[str, torch.Tensor] | None = None, output: str = "logits",
              temperature: float = 1.0, embedding: str = "cosine",
              hidden: Sequence[str] = (), hidden_weight: float = 1.0, prefix: str = "",
              cache: bool = False, seed: int | None = 0,
              steps_per_epoch: int | None = None,
              validation: Sequence[Any] | None = None) -> Finetuner:
    """A `Finetuner` that distils `teacher` into the model the codec trains, on `batches` of
    inputs (no labels).

    `teacher`: an `nn.Module` (run in eval mode on each batch, a tuple or list of inputs
    passed as positional arguments, as `training.finetune.ModuleLoss` runs it; names of the
    states lose `prefix`), or a function `outputs(state, batch)` returning the output, or a
    sequence (output, hidden states...). `state`: the teacher's tensors, by default the
    module's own (required with a function). `batches`: a sequence of batches (shuffled every
    pass with `seed`, in order with `seed=None`; `cache=True` keeps each one's teacher
    outputs), or a re-iterable collection or a function returning an endless iterator (the
    teacher then runs on every step). `hidden`: submodules of a module teacher whose outputs
    are matched too. The loss is zero exactly at `state` (module docstring); `frozen`
    (the tensors retraining leaves alone) is a module's floating buffers, as for `ModuleLoss`.
    `validation`: batches kept apart from `batches`, on which a codec may stop early
    (`Finetuner.validation`).
    """
    if isinstance(teacher, nn.Module):
        module_outputs = ModuleOutputs(teacher, hidden=hidden, prefix=prefix)
        outputs: Outputs = module_outputs
        if state is None:
            state = {k: v.detach() for k, v in module_outputs.run.net.state_dict().items()}
    else:
        if not callable(teacher):
            raise UserError(f"a distillation teacher is an nn.Module or a function "
                            f"outputs(state, batch), not a {type(teacher).__name__}")
        if hidden:
            raise UserError("hidden names submodules of a module teacher; a function teacher "
                            "returns its hidden states after its output")
        if state is None:
            raise UserError("a function teacher needs its tensors: distiller(outputs, "
                            "batches, state=the original state_dict)")
        outputs = teacher
    indexed = isinstance(batches, Sequence) and not isinstance(batches, str)
    if cache and not indexed:
        raise UserError("cache=True keeps the teacher's outputs per batch and needs the "
                        "batches as a sequence (a list), not a stream")
    loss = DistillLoss(outputs, state, output=output, temperature=temperature,
                       embedding=embedding, hidden_weight=hidden_weight, cache=cache)
    held = list(validation) if validation else None
    if not indexed:
        return Finetuner(loss=loss, batches=batches, steps_per_epoch=steps_per_epoch,
                         validation=held)
    seq: Sequence[Any] = batches  # type: ignore[assignment]
    if len(seq) == 0:
        raise UserError("distiller: the batches are empty")
    return Finetuner(loss=loss, batches=lambda: _shuffled(seq, seed),
                     steps_per_epoch=len(seq) if steps_per_epoch is None else steps_per_epoch,
                     validation=held)
