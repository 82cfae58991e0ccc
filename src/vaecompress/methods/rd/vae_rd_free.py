"""`vae-rd-free`: the rate-distortion VAE of `vae-rd` without the task's data; the default codec.

The same latents, decoder (`w = step * z`, one float32 step per tensor), entropy-coded stored
form (`methods.rd.latents`) and prior (the integer frequency tables of the file) as `vae-rd`, with a
distortion that needs nothing but the weights: the weighted noise-to-signal ratio of the decoded
weights (`methods.rd.allocate`), each tensor weighed by its sensitivity. Its knob means the same on
every model:

- `snr` (dB, default `DEFAULT_SNR`): the fidelity to keep; the codec finds the coarsest
  quantization that keeps it (the default is near-lossless);
- `size` (bytes): a budget for the whole file instead; the finest quantization that fits;
- `change_snr` (dB, default `DEFAULT_CHANGE_SNR`; 0: none): against a base (`--base`, a
  checkpoint series), the change from the base keeps at least this plain SNR as well as the
  weights keeping `snr`. A fine-tune's change can be smaller than the error `snr` lets the
  weights take; without it the change is coded as zeros and the model is rebuilt as its base
  (`family.delta`, `methods.rd.allocate`). Not with `size` (a budget is a budget) or
  `solver=adam`.

`rounding`: how the latents are chosen at the steps the search tries: `nearest` (the default),
`rdoq` (rate-distortion optimized, `methods.rd.rdoq`) or `tcq` (dependent, trellis-coded
quantization, `methods.rd.tcq`: another reconstruction rule, files of the codec's version 3;
measured in `results/tcq`).

The sensitivity (`weighting`) is the mean Fisher information of each tensor when the model can
be run (`CodecContext.probe`: the network on synthetic inputs, no data; `tasks.probe`), else
`relative`: each tensor's squared error relative to its own energy, which no rescaling of a
layer can fool.

Solvers: `closed` (default) is the exact solution of the high-rate rate-distortion problem, one
step per tensor in closed form (reverse water-filling) and the latents rounded, found by a
bisection that costs one pass of rounding per try: seconds on a 22M-parameter model. `adam`
trains latents, steps and a learned mixture prior on `relative error + lam * bits per
parameter` for `steps` steps (`methods.rd.train`), the codec's first form, kept as an ablation: on
the zoo it is no smaller at the same accuracy and a thousand times slower.

It never makes a file larger than the model when it is the default (`api.compress` falls back
to the lossless codec).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    Knob,
    add_passthrough,
    join_passthrough,
    register,
    split_passthrough,
)
from vaecompress.coding.floats import float_specs
from vaecompress.errors import UserError
from vaecompress.fidelity import snr_db
from vaecompress.format import ROLE_CODE, Container, Payload, dumps
from vaecompress.io import StateDict
from vaecompress.methods.rd.allocate import (
    MAX_SNR,
    MIN_SNR,
    ROUNDINGS,
    Allocation,
    allocate,
    relative_sensitivities,
)
from vaecompress.methods.rd.latents import (
    TCQ_VERSION,
    decode_model,
    encode_model,
    estimate_model_bytes,
)
from vaecompress.methods.rd.settings import RDSettings
from vaecompress.methods.rd.shared import tables_of
from vaecompress.methods.rd.train import check_finite, rd_report, train_rd
from vaecompress.tasks.probe import tensor_sensitivities

PAYLOAD = "latents"
KIND = "rd-latents"
# The default fidelity, near-lossless: the weighted output error about 1e-3 of the signal.
# The zoo's classifiers stay within 0.1 point from about 18 dB on; MiniLM keeps 97% of its
# nearest neighbours from about 30 dB (its fidelity set; the held-out text and models are
# checked in docs/default-codec.md).
DEFAULT_SNR = 30.0
DEFAULT_CHANGE_SNR = 10.0
# The weights' SNR that leaves the change's target alone to bind (an error of 80% of the
# weights' energy): a search or sweep of `change_snr` sets it.
CHANGE_ONLY_SNR = 1.0
WEIGHTINGS = ("auto", "relative", "fisher")
SOLVERS = ("closed", "adam")
# The bytes of the file besides the latents that the size budget leaves room for: the
# checksum `api.compress` records after encoding, and the varints of the payload lengths.
SIZE_MARGIN = 256
# Searches for a byte budget, each aiming lower by what the coded latents overshot the last
# one's estimate (`_allocate`).
SIZE_TRIES = 4


@dataclass(frozen=True)
class VAERDFreeSettings(RDSettings):
    snr: float = DEFAULT_SNR  # the fidelity to keep: weighted SNR of the weights, in dB
    # against a base (`--base`): the change from it kept at least this plain SNR too (dB; 0:
    # only `snr`); nothing when coded alone
    change_snr: float = DEFAULT_CHANGE_SNR
    size: int = 0  # a budget in bytes for the whole file instead of `snr` (0: none)
    weighting: str = "auto"  # auto (fisher with a probe, else relative) | relative | fisher
    solver: str = "closed"  # closed (methods.rd.allocate) | adam (methods.rd.train, lam)
    # closed: nearest | rdoq (rate-distortion optimized, methods.rd.rdoq) | tcq (dependent,
    # trellis-coded quantization, methods.rd.tcq; files of codec version 3)
    rounding: str = "nearest"
    lam: float = 0.03  # adam: weight of the rate (bits per parameter) against the error
    steps: int = 1500  # adam: optimizer steps, each over the whole model


@register
class VAERDFreeCodec(Codec):
    name = "vae-rd-free"
    version = 1
    Settings = VAERDFreeSettings
    reads_version = TCQ_VERSION  # a shared prior's member (2), dependent quantization (3)

    @classmethod
    def fidelity_knob(cls, settings: Mapping[str, Any], *, delta: bool = False) -> Knob | None:
        # The closed form's SNR, to half a dB (the trained form's knob is `lam`). Against a
        # base, the change's own SNR, the weights' target out of the way (`CHANGE_ONLY_SNR`)
        # unless set: where a fine-tune's change is small against the weights, it says what
        # matters directly (docs/families.md); with `change_snr` set, the weights' SNR.
        if settings.get("solver", "closed") == "adam":
            return Knob("lam", 1e-4, 10.0, finer=-1, step=1.0, resolution=0.25, log=True)
        if delta and "change_snr" not in settings:
            return Knob("change_snr", 0.25, 60.0, finer=1, step=4.0, resolution=0.25,
                        alongside=(("snr", CHANGE_ONLY_SNR),))
        return Knob("snr", MIN_SNR, 60.0, finer=1, step=8.0, resolution=0.5)

    def validate(self) -> None:
        s = self.settings
        s.check(self.name)
        if not 1 <= s.steps <= 10**7:
            raise UserError(f"vae-rd-free: steps must be in 1..10**7, got {s.steps}")
        if not (math.isfinite(s.snr) and MIN_SNR <= s.snr <= MAX_SNR):
            raise UserError(f"vae-rd-free: snr is a fidelity in dB in [{MIN_SNR:g}, "
                            f"{MAX_SNR:g}], got {s.snr} (30 is near-lossless, 20 coarse; the "
                            "tensors' errors add up, so a model of many tensors may go below 0)")
        if not (math.isfinite(s.change_snr) and 0 <= s.change_snr <= MAX_SNR):
            raise UserError(f"vae-rd-free: change_snr is a fidelity in dB in [0, {MAX_SNR:g}] "
                            f"(0: none), got {s.change_snr}")
        if s.size < 0:
            raise UserError(f"vae-rd-free: size is a budget in bytes >= 0, got {s.size}")
        if s.weighting not in WEIGHTINGS:
            raise UserError(f"vae-rd-free: weighting must be one of {', '.join(WEIGHTINGS)}, "
                            f"got {s.weighting!r}")
        if s.solver not in SOLVERS:
            raise UserError(f"vae-rd-free: solver must be one of {', '.join(SOLVERS)}, "
                            f"got {s.solver!r}")
        if s.rounding not in ROUNDINGS:
            raise UserError(f"vae-rd-free: rounding must be one of {', '.join(ROUNDINGS)}, "
                            f"got {s.rounding!r}")
        if s.solver == "adam" and (s.size or s.weighting == "fisher" or s.rounding != "nearest"):
            raise UserError("vae-rd-free: size, weighting=fisher and rounding=rdoq need "
                            "solver=closed")

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "quick":
            return [{}]
        if preset == "ablation":
            return [{"snr": snr} for snr in (40.0, 34.0, 30.0, 26.0, 22.0, 18.0, 14.0, 10.0)]
        if preset == "full":  # and on down to where the zoo's classifiers lose a point and more
            # (seconds a point), so that its column is its best within each tolerance, as the
            # datafree preset's
            return [{"snr": snr} for snr in (40.0, 34.0, 30.0, 26.0, 22.0, 18.0, 14.0, 10.0,
                                             8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0)]
        if preset == "datafree":  # both weightings, every 2 dB (every dB where the zoo's
            # classifiers start to lose accuracy, and down to -3 dB, where the LSTM still
            # keeps its accuracy within a point at 0.5 dB); the default is one of them
            snrs = [-3, -2, -1, 0, 0.5, *range(1, 8), *range(8, 42, 2)]
            return [{"snr": float(snr), "weighting": w} for w in ("auto", "relative")
                    for snr in snrs]
        return []

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        """With `weighting=relative` the codec never runs the model: a method of its own in the
        tables (what a bare weights file gets), beside the default's Fisher weighting."""
        if settings.get("weighting") == "relative":
            return f"{cls.name} (weights only)", False
        return cls.name, False

    def streams(self) -> bool:
        """The closed form with the weights' own weighting splits its target between parts
        (`for_part`); a byte budget, the probe's Fisher weighting and Adam need the whole."""
        s = self.settings
        return s.solver == "closed" and not s.size and s.weighting != "fisher"

    def for_part(self, part: int, total: int) -> Codec:
        """Each part's share of the model's NSR, in proportion to its weights. With relative
        weighting the NSR is the sum over tensors of their relative errors, and at the equal
        slope of the whole model each tensor's is `n_t c^2 / 12` (`methods.rd.allocate`): a
        part holds `part / total` of the whole's error budget. The shares add up to the
        target exactly, whatever each part's own search finds (a share finer than MAX_SNR is
        coded at MAX_SNR); at high rate each part's scale is the whole model's."""
        if not 0 < part < total:
            return self
        snr = min(MAX_SNR, self.settings.snr + 10.0 * math.log10(total / part))
        return type(self)(self.settings, snr=snr)

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        check_finite(coded, self.name)
        live = {k: v for k, v in coded.items() if v.numel()}
        c = self.new_container(state)
        add_passthrough(c, raw)
        if s.solver == "adam":
            return self._encode_adam(c, live, ctx)
        t0 = time.perf_counter()
        weighting = s.weighting
        if weighting == "auto":
            weighting = "fisher" if ctx.probe is not None else "relative"
        if weighting == "fisher" and ctx.probe is None:
            raise UserError("vae-rd-free: weighting=fisher needs the model's architecture "
                            "(CLI: a zoo model or --arch; Python: CodecContext(probe=...))")
        arrays = [v.detach().to("cpu", torch.float32).numpy() for v in live.values()]
        # Coding a delta: the weighting, the probe and the target are the model's (`reference`).
        model: Mapping[str, torch.Tensor] = state
        weights, energies, change = arrays, None, None
        if ctx.reference is not None:
            model = ctx.reference
            weights = [model[k].detach().to("cpu", torch.float32).numpy() for k in live]
            energies = [float(np.square(w, dtype=np.float64).sum()) for w in weights]
            changed = set(ctx.change)
            change = [k in changed for k in live]
        if weighting == "fisher" and ctx.probe is not None:  # (checked above)
            sens = tensor_sensitivities(ctx.probe, model, list(live), weights, ctx.seed)
        else:
            sens = relative_sensitivities(weights)
        alloc = self._allocate(arrays, sens, c, energies, change)
        trellis = s.rounding == "tcq"
        data = encode_model(alloc.ints, alloc.steps, entropy=s.entropy, masks=s.masks,
                            trellis=trellis)
        c.payloads.insert(0, Payload(PAYLOAD, KIND, ROLE_CODE, data))
        if trellis:  # a reader of version 1 or 2 refuses the file instead of misreading it
            c.codec["version"] = TCQ_VERSION
        # An exact result (every latent tensor all zeros: a model equal to its base, a model of
        # zeros) has an infinite SNR, which JSON cannot hold: stored as null, as `--json` does.
        reached = round(alloc.snr_db, 4) if math.isfinite(alloc.snr_db) else None
        c.codec_state = {"weighting": weighting, "snr_db": reached, "scale": alloc.scale}
        extra = {}
        if alloc.change_nsr is not None and alloc.change_nsr > 0:
            extra["change_snr_db"] = snr_db(alloc.change_nsr)
            c.codec_state["change_snr_db"] = round(extra["change_snr_db"], 4)
        return Encoded(c, report={"train_s": time.perf_counter() - t0, "latent_bytes": len(data),
                                  **extra,
                                  "weighting": weighting, "snr_db": alloc.snr_db,
                                  "search_passes": alloc.evaluations,
                                  "rounding": s.rounding,
                                  "nonzero_fraction": _nonzero(alloc.ints)})

    def _allocate(self, arrays: list[np.ndarray], sens: list[float], c: Container,
                  energies: list[float] | None, change: list[bool] | None) -> Allocation:
        s = self.settings
        if not s.size:
            return allocate(arrays, sens, snr=s.snr, rounding=s.rounding, energies=energies,
                            change=change, change_snr=s.change_snr)
        budget = s.size - len(dumps(c)) - SIZE_MARGIN
        if budget <= 0:
            raise UserError(f"vae-rd-free: size {s.size:,} B is smaller than the file's header "
                            f"and exact tensors alone ({len(dumps(c)):,} B)")

        # The search reads an estimate of the latents' bytes; the real coding can come out a
        # few bytes above it. Then the search runs again for that much less, coarser.
        aim = budget
        for _ in range(SIZE_TRIES):
            def fits(ints: list[np.ndarray], steps: list[np.float32], aim: int = aim) -> bool:
                return estimate_model_bytes(ints) + 4 * len(steps) <= aim

            alloc = allocate(arrays, sens, fits=fits, rounding=s.rounding, energies=energies)
            got = len(encode_model(alloc.ints, alloc.steps, entropy=s.entropy, masks=s.masks,
                                   trellis=s.rounding == "tcq"))
            if got <= budget:
                return alloc
            aim -= got - budget
        raise UserError(f"vae-rd-free: no quantization of this model fits in {s.size:,} B "
                        f"(the smallest takes about {s.size - budget + got:,} B)")

    def _encode_adam(self, c: Container, live: dict[str, torch.Tensor],
                     ctx: CodecContext) -> Encoded:
        s = self.settings
        cfg = s.rd_config(steps=s.steps, distortion="weights", seed=ctx.seed)
        res = train_rd(live, cfg, device=ctx.device, progress=ctx.progress,
                       desc=f"vae-rd-free {ctx.label}".strip(), checkpoint=ctx.checkpoint)
        data = encode_model([z.numpy() for z in res.ints], [t.numpy() for t in res.steps],
                            entropy=s.entropy, masks=s.masks)
        c.payloads.insert(0, Payload(PAYLOAD, KIND, ROLE_CODE, data))
        return Encoded(c, report=rd_report(res, data))

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        data = c.payload(PAYLOAD, kinds=[KIND]).data
        arrays = decode_model(data, float_specs(c.tensors), tables_of(c, externals))
        return join_passthrough(c, {k: torch.from_numpy(v) for k, v in arrays.items()})


def _nonzero(ints: list[np.ndarray]) -> float:
    n = sum(z.size for z in ints)
    return sum(int(np.count_nonzero(z)) for z in ints) / n if n else 0.0
