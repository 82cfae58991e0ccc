"""The closed-form solution of the data-free rate-distortion VAE: one step per tensor, chosen for
a fidelity target.

The distortion the data-free codec controls is the *weighted noise-to-signal ratio* of the
weights,

    NSR = T * sum_t s_t |w_hat_t - w_t|^2 / sum_t s_t |w_t|^2,    SNR (dB) = -10 log10 NSR,

where `s_t` is the sensitivity of one weight of tensor `t` (`tasks.probe`: the mean diagonal
Fisher information of the model run on synthetic inputs; without a model, `1 / |w_t|^2`, which
makes the NSR the sum over tensors of each tensor's relative squared error), over the T
tensors of non-zero sensitivity. The number means the same on every model: a 30 dB SNR is an
error whose weighted energy is 1e-3 of the weights'. A sum (the factor T), not a mean: the
errors of the layers add up along the network, so a model of a hundred tensors at a given SNR
has the total error of one of ten. With Fisher weights `F_t |w_t|^2` is about the energy of
the outputs (for layers that are homogeneous in their weights), so the same T makes the
Fisher NSR the output error relative to the output, summed over the layers' contributions.

With a uniform quantizer of step `d_t` per tensor the rate of tensor `t` is about
`n_t (h_t - log2 d_t)` bits and its distortion `s_t n_t d_t^2 / 12`; minimizing the rate for a
given distortion (reverse water-filling: every tensor at the same slope dR/dD) gives

    d_t = c / sqrt(s_t)

with one scale `c` for the model. `allocate` finds the largest `c` whose rounded latents
`round(w_t / d_t)` meet the target, by bisection on the exact NSR of the float32 weights the
file decodes to (or the largest whose file fits a byte budget). Each evaluation is one pass of
rounding over the weights, so the search costs seconds, not a training.

With `rounding="rdoq"` the latents are not rounded to nearest but chosen by rate-distortion
optimized rounding under each tensor's own order-0 table (`methods.rd.rdoq`, at the price of a
bit the equal slope gives); the search then finds the largest `c` whose RDOQ latents meet the
target. It starts from the nearest rounding's scale, which bounds it from above (RDOQ only adds
error at a given scale), so it costs a few more passes, each a few searches of a small table per
weight. With `rounding="tcq"` the latents are dependent quantization's levels (`methods.rd.tcq`:
two quantizers of twice the step, chosen along each row by a trellis), searched the same way:
its points are some of the nearest rounding's grid, so it too only adds error at a given scale.

When the tensors are a model's difference from a base (`family.delta`), the weights' NSR is
relative to the model's energies (`energies`), and the change itself can be held to a fidelity
too (`change`, `change_snr`): the plain noise-to-signal ratio of the tensors that are a change,
pooled, `sum |w_hat_t - w_t|^2 / sum |d_t|^2` over them (the change SNR `fidelity` reports).
A fine-tune's change is often smaller than the error the weights' target allows (then its
latents are all zero and the model is rebuilt as the base); the search then takes the coarsest
scale that meets both targets. The steps stay in the same proportion (`c / sqrt(s_t)`).

Boundary: numbers in, integers and float32 steps out; this module knows neither the file nor
the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vaecompress.fidelity import nsr_of_db, snr_db
from vaecompress.methods.rd import tcq
from vaecompress.methods.rd.latents import grid
from vaecompress.methods.rd.rdoq import LAMBDA, rdoq

MAX_SNR = 120.0  # the finest fidelity a codec accepts, in dB: float32 weights hold about 140
# The coarsest: the NSR sums the tensors' weighted errors, so every latent zero is an SNR of
# -10 log10(T) dB for T tensors (-20 dB at a hundred); a model of many tensors can keep its
# task below 0 dB (the zoo's LSTM within a point at 0.5 dB)
MIN_SNR = -30.0
BISECTIONS = 28  # halvings of the log-scale interval: c is found to about 1e-7 relative
ROUNDINGS = ("nearest", "rdoq", "tcq")
# The finest step the search tries is 1e-7 of a tensor's largest weight (`_Problem.bounds`); a
# float32 step must stay a normal number (a subnormal one has a few bits, and below them it is
# zero, every latent then inf or NaN). So a tensor whose largest weight is under this cannot be
# stepped: it is coded as zeros, untraded, as a tensor of zeros is (`fidelity` reports it lost).
MIN_PEAK = float(np.finfo(np.float32).tiny) / 1e-7
# RDOQ's search for an SNR: from the nearest rounding's scale down, until the NSR lies within
# this fraction below the target (the SNR within 0.005 dB above it), in at most RDOQ_TRIES
# passes. For a byte budget: a bisection in [c / RDOQ_RANGE, c] (RDOQ's extra error is far less
# than the 16x in NSR that would need more), in RDOQ_BISECTIONS halvings (c to about 1e-4).
RDOQ_TOLERANCE = 1e-3
RDOQ_TRIES = 8
RDOQ_RANGE = 4.0
RDOQ_BISECTIONS = 14


@dataclass(frozen=True)
class Allocation:
    """What the search leaves: per tensor the integer latents and the float32 step."""

    ints: list[np.ndarray]  # int64, each the shape of its tensor
    steps: list[np.ndarray]  # float32, shape [1]
    scale: float  # the model's `c`
    nsr: float  # the weighted noise-to-signal ratio of the decoded weights
    evaluations: int  # passes of rounding the search took
    change_nsr: float | None = None  # the change's plain NSR, when tensors are a change

    @property
    def snr_db(self) -> float:
        return snr_db(self.nsr)


def relative_sensitivities(tensors: Sequence[np.ndarray]) -> list[float]:
    """The sensitivity of each weight when nothing but the weights is known: `1 / |w_t|^2`, so
    that the weighted NSR is the sum over tensors of their relative squared errors. A tensor's
    relative error, not the model's: scaling one layer up and the next down (a ReLU
    network computes the same function) leaves every step in proportion, and a small tensor
    that steers many outputs (a bias, a norm's gain) is not drowned by a large one."""
    out = []
    for w in tensors:
        energy = float(np.square(w, dtype=np.float64).sum())
        out.append(1.0 / energy if energy > 0 else 0.0)
    return out


class _Quantized(NamedTuple):
    ints: list[np.ndarray]
    steps: list[np.float32]
    nsr: float  # weighted, of the weights
    change_nsr: float  # plain, pooled over the change's tensors (0 when there are none)


class _Problem:
    """The tensors in float64 for the search, with their weights and the float32 steps."""

    def __init__(self, tensors: Sequence[np.ndarray], sens: Sequence[float],
                 rounding: str = "nearest", lam: float = LAMBDA,
                 energies: Sequence[float] | None = None,
                 change: Sequence[bool] | None = None) -> None:
        if len(tensors) != len(sens) or (energies is not None and len(energies) != len(sens)):
            raise ValueError("one sensitivity (and energy) per tensor")
        if change is not None and len(change) != len(sens):
            raise ValueError("one change flag per tensor")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, not {rounding!r}")
        self.rounding = rounding
        self.lam = lam
        self.w32 = [np.ascontiguousarray(w, dtype=np.float32).reshape(-1) for w in tensors]
        self.shapes = [w.shape for w in tensors]
        self.change = [bool(f) for f in change] if change is not None else [False] * len(sens)
        self.change_energy = sum(float(np.square(w, dtype=np.float64).sum())
                                 for w, f in zip(self.w32, self.change, strict=True) if f)
        # A tensor of zeros (or of no sensitivity) has nothing to lose: it gets the finest step
        # any other tensor has and costs next to nothing (all its latents are zero).
        self.sens = [float(s) if (math.isfinite(s) and s > 0 and _peak(w) >= MIN_PEAK) else 0.0
                     for s, w in zip(sens, self.w32, strict=True)]
        count = sum(1 for s in self.sens if s > 0)
        if energies is None:
            energies = [float(np.square(w, dtype=np.float64).sum()) for w in self.w32]
        self.signal = sum(s * e for s, e in zip(self.sens, energies, strict=True)) / max(1, count)
        live = [s for s in self.sens if s > 0]
        self.s_max = max(live) if live else 1.0
        self.evaluations = 0

    def steps(self, c: float) -> list[np.float32]:
        return [np.float32(c / math.sqrt(s if s > 0 else self.s_max)) for s in self.sens]

    def quantize(self, c: float) -> _Quantized:
        """The latents, steps, weighted NSR of the decoded float32 weights and plain NSR of the
        change at scale `c`."""
        self.evaluations += 1
        steps = self.steps(c)
        ints, noise, change_noise = [], 0.0, 0.0
        for w, d, s, f, shape in zip(self.w32, steps, self.sens, self.change, self.shapes,
                                     strict=True):
            # A tensor without sensitivity has nothing to trade its bits against: nearest.
            rd = self.rounding == "rdoq" and s > 0
            if self.rounding == "tcq" and w.size:  # dependent quantization, row by row
                x = (w / d).reshape(grid(shape))
                z = tcq.quantize(x).reshape(-1)
                rec = tcq.reconstruct(z.reshape(x.shape)).reshape(-1)
            else:
                z = rdoq(w / d, lam=self.lam) if rd else np.rint(w / d)
                rec = z.astype(np.float32)
            if s > 0 or f:
                # numpy's own pairwise sum, not BLAS: the same on every machine, so the
                # search takes the same decisions and writes the same bytes everywhere.
                err = float(np.square((rec * d - w).astype(np.float64)).sum())
                noise += s * err
                change_noise += err if f else 0.0
            ints.append(z)
        return _Quantized(ints, steps, noise / self.signal if self.signal > 0 else 0.0,
                          change_noise / self.change_energy if self.change_energy > 0 else 0.0)

    def bounds(self) -> tuple[float, float]:
        """A scale whose steps round every weight to zero (NSR T), and the finest scale worth
        trying: one whose steps are at least 1e-7 of each tensor's largest weight, so that no
        latent exceeds 1e7 (float32 holds 24 bits)."""
        hi = lo = 0.0
        for w, s in zip(self.w32, self.sens, strict=True):
            if s <= 0 or not w.size:
                continue
            peak = _peak(w) * math.sqrt(s)
            hi = max(hi, 4.0 * peak)
            lo = max(lo, 1e-7 * peak)
        if hi <= 0:
            return 1.0, 1.0
        return lo, hi

    def result(self, c: float) -> Allocation:
        q = self.quantize(c)
        out = [z.astype(np.int64).reshape(shape) for z, shape in zip(q.ints, self.shapes,
                                                                     strict=True)]
        return Allocation(out, [np.array([d], dtype=np.float32) for d in q.steps], c, q.nsr,
                          self.evaluations, q.change_nsr if any(self.change) else None)


def _peak(w: np.ndarray) -> float:
    return float(np.abs(w).max()) if w.size else 0.0


def _bisect(lo: float, hi: float, ok: Callable[[float], bool], *, largest: bool,
            halvings: int = BISECTIONS) -> float:
    """On a log scale in [lo, hi]: the largest scale `ok` accepts (`largest`, `ok(lo)`
    assumed) or the smallest (`ok(hi)` assumed). Only scales seen to pass are returned."""
    a, b = math.log(lo), math.log(hi)
    for _ in range(halvings):
        mid = 0.5 * (a + b)
        if ok(math.exp(mid)) == largest:
            a = mid
        else:
            b = mid
    return math.exp(a if largest else b)


def allocate(tensors: Sequence[np.ndarray], sens: Sequence[float], *,
             snr: float | None = None,
             fits: Callable[[list[np.ndarray], list[np.float32]], bool] | None = None,
             rounding: str = "nearest", lam: float = LAMBDA,
             energies: Sequence[float] | None = None,
             change: Sequence[bool] | None = None, change_snr: float = 0.0) -> Allocation:
    """Steps and latents of the coarsest quantization that keeps the weighted SNR at least
    `snr` dB, or (with `fits`, a test of latents and steps against a byte budget) the finest
    one that fits, the latents rounded to nearest or by RDOQ (`rounding`; `lam`, the price of a
    bit, is for the ablation: `methods.rd.rdoq` derives it). The NSR is relative to the
    tensors' own energies, or to `energies` (per tensor: those of the model when `tensors` are
    its difference from a base). With `change_snr` > 0 (dB; only with `snr`), the tensors that
    `change` flags (those coded as a change from a base) also keep their pooled plain SNR at
    least that (module docstring). The NSR is not exactly monotone in the scale (rounding), so
    the search returns only a scale it has seen pass: the result meets the target whenever any
    scale in the range does."""
    if (snr is None) == (fits is None):
        raise ValueError("give either snr or fits")
    prob = _Problem(tensors, sens, lam=lam, energies=energies, change=change)
    lo, hi = prob.bounds()
    if snr is not None:
        target = nsr_of_db(snr)
        change_target = nsr_of_db(change_snr) if change_snr > 0 else math.inf

        def ok(c: float) -> bool:
            q = prob.quantize(c)
            return q.nsr <= target and q.change_nsr <= change_target
    else:
        assert fits is not None

        def ok(c: float) -> bool:
            q = prob.quantize(c)
            return fits(q.ints, q.steps)

    # the coarsest scale that meets the SNR, or the finest whose file fits
    largest = snr is not None
    c = _search(lo, hi, ok, largest=largest)
    if rounding in ("rdoq", "tcq") and lo < c < hi:
        # At any scale RDOQ and TCQ add error (TCQ's points are some of the nearest rounding's
        # grid) and remove bits, so their scale lies below the nearest rounding's, for either
        # target.
        prob.rounding = rounding
        if snr is not None:
            c = _approach(prob, c, lo, nsr_of_db(snr))
            if not ok(c):  # RDOQ's extra error broke the change's target: finer
                c = _search(lo, c, ok, largest=True)
        elif not ok(c):  # a file larger than the nearest rounding's at its scale: coarser
            c = _search(c, hi, ok, largest=False)
        else:
            floor = max(lo, c / RDOQ_RANGE)
            c = (_search(lo, floor, ok, largest=False) if ok(floor)
                 else _bisect(floor, c, ok, largest=False, halvings=RDOQ_BISECTIONS))
    return prob.result(c)


def _approach(prob: _Problem, c: float, lo: float, target: float) -> float:
    """The coarsest scale at most `c` whose NSR is at most `target`, to RDOQ_TOLERANCE: the
    NSR grows about as `c^2`, so a secant on log NSR against log c gets there in three or four
    passes where a bisection takes fourteen. Falls back to bisecting what is left."""
    aim = target * (1.0 - 0.5 * RDOQ_TOLERANCE)  # aimed inside, so that a step lands passing
    good: tuple[float, float] | None = None  # (log c, log NSR) of the coarsest seen to pass
    bad = (math.log(c), math.log(max(prob.quantize(c).nsr, 1e-300)))  # the finest seen to fail
    if bad[1] <= math.log(target):
        return c
    for _ in range(RDOQ_TRIES):
        if good is None:  # NSR ~ c^2
            guess = bad[0] + 0.5 * (math.log(aim) - bad[1])
        else:
            slope = (bad[1] - good[1]) / (bad[0] - good[0]) if bad[0] > good[0] else 2.0
            guess = good[0] + (math.log(aim) - good[1]) / max(slope, 1e-3)
            guess = min(max(guess, good[0]), bad[0])
        guess = max(guess, math.log(lo))
        nsr = prob.quantize(math.exp(guess)).nsr
        point = (guess, math.log(max(nsr, 1e-300)))
        if nsr <= target:
            good = point if good is None or point[0] > good[0] else good
            if nsr >= target * (1.0 - RDOQ_TOLERANCE):
                break
        else:
            bad = point if point[0] < bad[0] else bad
    else:
        if good is None:
            return _search(lo, math.exp(bad[0]), lambda s: prob.quantize(s).nsr <= target,
                           largest=True)
    assert good is not None
    return math.exp(good[0])


def _search(lo: float, hi: float, ok: Callable[[float], bool], *, largest: bool) -> float:
    """`_bisect` over [lo, hi] with its ends tried first: the coarsest scale `ok` accepts
    (`largest`) or the finest, or the end that comes nearest when none is accepted."""
    if largest:
        if ok(hi):
            return hi  # a target of -10 log10(T) dB or less: every latent zero meets it
        if not ok(lo):
            return lo  # a target beyond float32: the finest scale there is
    else:
        if ok(lo):
            return lo
        if not ok(hi):
            return hi  # not even all-zero latents fit: the smallest file there is
    return _bisect(lo, hi, ok, largest=largest)
