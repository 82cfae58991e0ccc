"""`vae-rd`: the VAE trained for file size on the task, with entropy-coded integer latents.

The paper's ELBO made into a code length (Balle et al.; EPR, Oktay et al. 2020): one integer
latent per weight, a decoder of one float32 step per tensor (`w = step * z`), a learned mixture
prior per tensor, trained on `task loss + lam * bits per parameter` with the model run on its
decoded weights (`methods.rd.model`). After training the latents are entropy-coded against integer
frequency tables stored in the file (`methods.rd.latents`): the tables, the steps and the header are
all counted. A latent that rounds to zero costs a fraction of a bit, so pruning falls out of the
prior, and a column or row of zeros (an ignored pixel, a dead neuron) is flagged once.

With `snr` > 0 the training starts from the data-free closed form at that fidelity instead
and distils from there (`methods.rd.warm`): the form for a large model and a few hundred steps,
where training from the first step does not get far (docs/vae-rd.md); `lam` then follows from
`slope` and the warm start's own task loss.

Needs the task's training data at compression time, like Deep Compression (`ctx.finetune`);
`vae-rd-free` is the data-free sibling. With `synthetic` it needs no data either: it distils
on inputs made from the model itself (`tasks.inversion`, through the classifier's probe,
`tasks.probe.probe_distiller`), a data-free method of its own in the bench's tables. Decoding
needs only the file.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    Knob,
    add_passthrough,
    join_passthrough,
    read_passthrough,
    register,
    split_passthrough,
)
from vaecompress.coding.floats import float_specs
from vaecompress.errors import UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.methods.rd.allocate import MAX_SNR, allocate, relative_sensitivities
from vaecompress.methods.rd.feedback import round_with_feedback
from vaecompress.methods.rd.latents import decode_model, encode_model
from vaecompress.methods.rd.model import RDConfig
from vaecompress.methods.rd.settings import RDSettings
from vaecompress.methods.rd.shared import SHARED_VERSION, tables_of
from vaecompress.methods.rd.train import RDResult, check_finite, rd_report, train_rd
from vaecompress.methods.rd.warm import train_warm
from vaecompress.runinfo import trim_memory
from vaecompress.tasks.probe import probe_distiller, tensor_sensitivities
from vaecompress.training.finetune import Finetuner
from vaecompress.training.grams import linear_input_grams

# One ingredient changed at a time against the defaults (`bench --preset ablation`).
ABLATION: tuple[dict[str, Any], ...] = (
    {"entropy": False},  # fixed-length codes instead of ANS with stored tables
    {"masks": False},  # no all-zero row/column flags
    {"learned_prior": False},  # the prior stays the initial mixture
    {"decoder": "row"},  # a bigger decoder: one step per output row
    {"decoder": "shared"},  # one step shared by every tensor
    {"latents": "encoder"},  # amortized encoder z = w / step instead of per-model latents
    {"quant": "noise"},  # uniform noise for the task too
    {"quant": "ste"},  # straight-through rounding for the rate too
)
PAYLOAD = "latents"
KIND = "rd-latents"
CHECKS = 8  # warm start: early-stopping checks over a run
WARM_ROUNDINGS = ("feedback", "nearest")
# The widest linear layer rounded with feedback: its inputs' matrix (float64, held for every
# such layer at once) and the rounding grow with the square and the cube of its width; wider
# layers start at w / step.
FEEDBACK_MAX_INPUTS = 4096
# `synthetic`: no batch of the made inputs kept apart for the early stop (its checks are on the
# first training batch): on the FNN, checks on held-out made inputs chose states that were
# worse on the real test images (docs/vae-rd.md)
VALIDATION = 0
# The datafree sweep of `synthetic`: the warm start's fidelity, from near-lossless to past
# where the zoo's classifiers lose a point without distillation (10 dB: the CNN's cliff; 0.25:
# the LeNet-300-100 kept 0.5 point at 0.5 dB)
SYNTHETIC_SNRS = (16.0, 12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25)
# The coarsest warm start `--max-drop` tries: snr 0 is no warm start, so the search stays above
WARM_KNOB_LO = 0.25


@dataclass(frozen=True)
class VAERDSettings(RDSettings):
    lam: float = 7.0  # weight of the rate (bits per parameter) against the task loss (nats)
    epochs: float = 2.0  # passes over the training data
    # > 0: start from the data-free closed form at this SNR (dB) and distil (`methods.rd.warm`), the
    # form for large models; 0: train every latent from std / init_bins (`methods.rd.train`).
    snr: float = 0.0
    slope: float = 1.0  # warm start: lam = slope * 2 ln 2 * the warm start's task loss
    rate_sample: float = 0.05  # warm start: share of a large tensor's latents in the rate
    patience: int = 3  # warm start: early-stopping checks without improvement (0: none)
    # warm start: how the closed form's latents are rounded before distilling: "feedback"
    # (the linear layers' output error on the task's inputs, `methods.rd.feedback`) or
    # "nearest"; `gram_batches` training batches measure those inputs
    rounding: str = "feedback"
    gram_batches: int = 16
    # distil on inputs made from the model by inversion (`tasks.inversion`), not on data: a
    # classifier whose architecture is known (its probe); needs the warm start (snr > 0)
    synthetic: bool = False
    # in the header (and the bench's keys) only when not at their default (`Codec.settings_json`)
    LATER: ClassVar[tuple[str, ...]] = ("synthetic",)


@register
class VAERDCodec(Codec):
    name = "vae-rd"
    version = 1
    Settings = VAERDSettings
    reads_version = SHARED_VERSION  # a family's member coded under a shared prior
    uses_task: ClassVar[bool] = True

    def validate(self) -> None:
        s = self.settings
        s.check(self.name)
        if not (math.isfinite(s.epochs) and s.epochs > 0):
            raise UserError(f"vae-rd: epochs must be > 0, got {s.epochs}")
        if not (math.isfinite(s.snr) and 0 <= s.snr <= MAX_SNR):
            raise UserError(f"vae-rd: snr is the warm start's fidelity in dB in (0, {MAX_SNR:g}]"
                            f", or 0 for no warm start; got {s.snr}")
        if not (math.isfinite(s.slope) and s.slope >= 0):
            raise UserError(f"vae-rd: slope must be a finite number >= 0, got {s.slope}")
        if not (math.isfinite(s.rate_sample) and 0 < s.rate_sample <= 1):
            raise UserError(f"vae-rd: rate_sample must be in (0, 1], got {s.rate_sample}")
        if not 0 <= s.patience <= 1000:
            raise UserError(f"vae-rd: patience must be in 0..1000, got {s.patience}")
        if s.rounding not in WARM_ROUNDINGS:
            raise UserError(f"vae-rd: rounding must be one of {', '.join(WARM_ROUNDINGS)}, "
                            f"got {s.rounding!r}")
        if not 1 <= s.gram_batches <= 10**4:
            raise UserError(f"vae-rd: gram_batches must be in 1..10000, got {s.gram_batches}")
        if s.synthetic and not s.snr:
            raise UserError("vae-rd: synthetic=true distils from the data-free closed form; "
                            "give it a fidelity to start from (snr > 0, e.g. snr=3)")
        if s.snr and (s.decoder != "tensor" or s.latents != "direct"):
            raise UserError("vae-rd: a warm start (snr > 0) needs decoder=tensor and "
                            "latents=direct")

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        if settings.get("synthetic", False) is True:
            return f"{cls.name} (synthetic inputs)", False
        return cls.name, True

    @classmethod
    def fidelity_knob(cls, settings: Mapping[str, Any], *, delta: bool = False) -> Knob | None:
        # Each try a training. Trained from the first step: the rate's weight `lam`, by
        # factors of about 1.4. Warm-started (snr > 0): the start's SNR, from the value given,
        # to half a dB; the distillation moves each latent about a bin, so the file's size is
        # the closed form's at that SNR and the rate's weight (`slope`) hardly moves it
        # (docs/vae-rd.md)
        if float(settings.get("snr", 0) or 0) > 0:
            return Knob("snr", WARM_KNOB_LO, 60.0, finer=1, step=4.0, resolution=0.5,
                        given=True)
        return Knob("lam", 0.05, 500.0, finer=-1, step=1.0, resolution=0.5, log=True)

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "quick":
            return [{"epochs": 0.25}]
        if preset == "full":
            return [{"lam": lam} for lam in (4.0, 7.0, 10.0, 14.0, 20.0, 30.0)]
        if preset == "ablation":  # the reference first, then one ingredient changed at a time
            base = {"lam": 10.0}
            return [base, *({**base, **v} for v in ABLATION)]
        if preset == "datafree":  # without data: distilled on inputs made from the model
            return [{"synthetic": True, "snr": snr} for snr in SYNTHETIC_SNRS]
        return []

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        extra: dict[str, Any] = {}
        if self.settings.synthetic:
            ctx, extra = self._synthetic(state, ctx)
        if ctx.finetune is None:
            raise UserError(
                "vae-rd trains on the task and needs its data (CLI: --finetune or --distill "
                "with a zoo model or --arch, --model minilm with --sentences FILE); without "
                "data use vae-rd-free"
            )
        coded, raw = split_passthrough(state)
        # Statistics the task's loss only reads (BatchNorm's running mean and variance, the
        # Finetuner's `frozen`) are kept exactly: a coded running variance could reach zero or
        # below and turn every output into NaN; they are a few floats per layer.
        frozen = ctx.finetune.frozen or frozenset()
        raw |= {k: coded.pop(k) for k in [k for k in coded if k in frozen]}
        check_finite(coded, self.name)
        live = {k: v for k, v in coded.items() if v.numel()}
        fixed = {**raw, **{k: v for k, v in coded.items() if not v.numel()}}
        steps = max(1, round(self.settings.epochs * ctx.finetune.steps_per_epoch))
        cfg = self.settings.rd_config(steps=steps, distortion="task", seed=ctx.seed)
        desc = f"vae-rd {ctx.label}".strip()
        if self.settings.snr:
            res, warm = self._warm(state, live, fixed, cfg, ctx, desc)
            extra |= warm
            trim_memory()  # the training's freed tensors, not kept under the coding that follows
        else:
            res = train_rd(live, cfg, fixed=fixed,
                           task_loss=ctx.finetune.loss, batches=ctx.finetune.stream(),
                           device=ctx.device, progress=ctx.progress, desc=desc,
                           checkpoint=ctx.checkpoint)
        data = encode_model([z.numpy() for z in res.ints], [s.numpy() for s in res.steps],
                            entropy=self.settings.entropy, masks=self.settings.masks)
        c = self.new_container(state)
        c.payloads.append(Payload(PAYLOAD, KIND, ROLE_CODE, data))
        add_passthrough(c, raw)
        return Encoded(c, report={**rd_report(res, data), **extra})

    def _synthetic(self, state: StateDict,
                   ctx: CodecContext) -> tuple[CodecContext, dict[str, Any]]:
        """The context with the task made without data: distillation on inputs made from the
        model by its probe (`tasks.probe.Probe.synthesize`), the original the teacher."""
        if ctx.finetune is not None:
            raise UserError("vae-rd: synthetic=true distils on inputs made from the model, not "
                            "on data; drop --finetune/--distill, or synthetic")
        if ctx.reference is not None:
            raise UserError("vae-rd: synthetic=true codes a model alone, not its change from a "
                            "base (--base)")
        if ctx.probe is None or ctx.probe.synthesize is None:
            raise UserError("vae-rd: synthetic=true makes its inputs by inverting a "
                            "classifier, which needs its architecture (a zoo model or --arch); "
                            "this model has no such probe")
        t0 = time.perf_counter()
        made = ctx.probe.synthesize(state, ctx.seed)
        task = probe_distiller(made, state, seed=ctx.seed, validation=VALIDATION)
        return replace(ctx, finetune=task), {"synthesize_s": time.perf_counter() - t0,
                                             "synthetic_batches": made.batches}

    def _warm(self, state: StateDict, live: dict[str, torch.Tensor],
              fixed: dict[str, torch.Tensor], cfg: RDConfig, ctx: CodecContext,
              desc: str) -> tuple[RDResult, dict[str, Any]]:
        """The closed form at `snr` (Fisher of the probe when there is one), then distillation
        from it (`methods.rd.warm`)."""
        s = self.settings
        assert ctx.finetune is not None
        t0 = time.perf_counter()
        arrays = [v.detach().to("cpu", torch.float32).numpy() for v in live.values()]
        weighting = "fisher" if ctx.probe is not None else "relative"
        # Coding a delta: the weighting, the probe and the target are the model's
        # (`reference`), as in vae-rd-free, not the delta's.
        model: Mapping[str, torch.Tensor] = state
        weights, energies = arrays, None
        if ctx.reference is not None:
            model = ctx.reference
            weights = [model[k].detach().to("cpu", torch.float32).numpy() for k in live]
            energies = [float(np.square(w, dtype=np.float64).sum()) for w in weights]
        sens = (tensor_sensitivities(ctx.probe, model, list(live), weights, ctx.seed)
                if ctx.probe is not None else relative_sensitivities(weights))
        alloc = allocate(arrays, sens, snr=s.snr, energies=energies)
        del weights
        init, snr_db = [float(d[0]) for d in alloc.steps], alloc.snr_db
        del alloc  # its latents (8 bytes a weight) are not the training's
        latents = (self._feedback(live, fixed, init, ctx.finetune, ctx.device)
                   if s.rounding == "feedback" else {})
        n_feedback = len(latents)  # the model empties `latents` as it reads them
        if latents:
            trim_memory()  # what the inputs' matrices and the rounding freed, given back
        warm_s = time.perf_counter() - t0
        cfg = replace(cfg, rate_sample=s.rate_sample, slope=s.slope, patience=s.patience,
                      validate_every=max(1, cfg.steps // CHECKS))
        res = train_warm(live, cfg, init, init_latents=latents,
                         task_loss=ctx.finetune.loss, batches=ctx.finetune.stream(),
                         validation=ctx.finetune.validation, fixed=fixed, device=ctx.device,
                         progress=ctx.progress, desc=desc)
        times = {k: res.history[k][0] for k in ("task_s", "rate_s", "validation_s")}
        return res, {"warm_start_s": warm_s, "weighting": weighting,
                     "feedback_tensors": n_feedback,
                     "warm_snr_db": snr_db, **times,
                     "best_step": res.history["best_step"][0],
                     "steps_run": res.history["steps_run"][0]}

    def _feedback(self, live: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor],
                  steps: list[float], finetune: Finetuner,
                  device: torch.device) -> dict[int, torch.Tensor]:
        """The warm start's latents of every linear layer the task runs, rounded with error
        feedback on the inputs of `gram_batches` training batches (`methods.rd.feedback`);
        the other tensors start at `w / step`. The task runs on `device`, as the training's
        does (a CPU tensor stays itself: no copy)."""
        # up to `gram_batches` (a stream that ends sooner gives what it has)
        batches = list(itertools.islice(finetune.stream(), self.settings.gram_batches))
        if not batches:
            return {}
        tensors = {k: v.to(device) for k, v in {**fixed, **live}.items()}
        grams = linear_input_grams(finetune.loss, tensors, batches, names=live,
                                   max_inputs=FEEDBACK_MAX_INPUTS)
        del tensors
        out: dict[int, torch.Tensor] = {}
        for i, name in enumerate(live):
            gram = grams.pop(name, None)
            if gram is not None and math.isfinite(steps[i]) and steps[i] > 0:
                out[i] = round_with_feedback(live[name], steps[i], gram)
        return out

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        data = c.payload(PAYLOAD, kinds=[KIND]).data
        raw = read_passthrough(c)  # with any floating tensor kept exactly (`frozen`)
        specs = [t for t in float_specs(c.tensors) if t["name"] not in raw]
        arrays = decode_model(data, specs, tables_of(c, externals))
        return join_passthrough(c, {k: torch.from_numpy(v) for k, v in arrays.items()}, raw)
