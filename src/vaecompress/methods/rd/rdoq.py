"""Rate-distortion optimized rounding (RDOQ) of one tensor's latents under its own order-0 table.

The closed form (`methods.rd.allocate`) rounds each latent to the nearest integer: the least
distortion for the step. The file then codes the latents with the tensor's order-0 frequency
table, so a latent costs `-log2 p(z)` bits, and a rare latent (one step further from zero than
most) costs many. RDOQ chooses, for each latent `x = w / d`, the integer among `round(x)` and
its two neighbours that minimizes

    J(z) = (z - x)^2 + LAMBDA * bits(z)

(the squared error in squared steps plus the code length under the table), then re-estimates
the table from the choices and chooses again, `PASSES` times. The decoder is the same
(`w = d * z`): only the choice of integers changes, so every file stays readable.

LAMBDA is not tuned. The allocation gives every tensor the step `d_t = c / sqrt(s_t)`: at high
rate a uniform quantizer of step `d` has the weighted distortion `s d^2 / 12 = c^2 / 12` per
weight and the rate `h - log2 d`, so `D(R) = s 2^(2(h - R)) / 12` and the slope is

    -dD/dR = 2 ln 2 * D = (ln 2 / 6) * c^2,

the same for every tensor (that is what the equal-slope allocation means). Trading a bit for
distortion at that exchange rate is what moving `c` does; RDOQ makes the same trade latent by
latent. In units of the tensor's squared step (`s d^2 = c^2`), the price of a bit is
`ln 2 / 6`, about 0.116 squared steps, whatever the tensor and the target. The bisection on
`c` then meets the target SNR with the rounded-down latents, at a slightly finer step.

Deterministic: the costs are float32 sums and products of exact inputs, and the code lengths
are rounded to 2^-16 bit before they are used, so that `log2`'s last bit (which differs between
numpy builds) cannot change a decision; ties keep the nearest latent.

Boundary: a float32 array of scaled weights in, float32 integers out; it knows neither the
file nor the model.
"""

from __future__ import annotations

import math

import numpy as np

LAMBDA = math.log(2.0) / 6.0  # the price of one bit in squared steps (equal slope, high rate)
PASSES = 3  # tables re-estimated after the nearest rounding's: the choices settle in two or three
_GRID = 2.0**16  # code lengths are rounded to this fraction of a bit (determinism)
# A table of more symbols than this is a tensor coded far above the rates where RDOQ saves
# anything measurable (its latents spread over thousands of steps): rounded to nearest.
MAX_SYMBOLS = 1 << 14


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Bits of each symbol under the order-0 table of `counts` (float64, rounded to 2^-16 bit);
    a symbol never seen is priced as half an occurrence."""
    n = float(counts.sum())
    bits = math.log2(n) - np.log2(np.maximum(counts, 0.5).astype(np.float64))
    return np.round(bits * _GRID) / _GRID


def envelope(price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symbols `k` (indices into `price`) that are the cheapest for some `x` under
    `(k - x)^2 + price[k]`, in order, and the float32 boundaries between consecutive ones: the
    lower envelope of parabolas of one curvature (Felzenszwalb and Huttenlocher's distance
    transform). With equal prices it is rounding to nearest, boundaries at `k + 1/2`."""
    keep: list[int] = []
    bounds: list[float] = []
    height = [float(p) + k * k for k, p in enumerate(price.tolist())]
    for k in range(len(height)):
        while keep:
            j = keep[-1]
            cross = (height[k] - height[j]) / (2.0 * (k - j))
            if bounds and cross <= bounds[-1]:
                keep.pop()
                bounds.pop()
                continue
            bounds.append(cross)
            break
        keep.append(k)
    return np.array(keep, dtype=np.intp), np.array(bounds, dtype=np.float32)


def rdoq(x: np.ndarray, *, lam: float = LAMBDA, passes: int = PASSES) -> np.ndarray:
    """Integers (float32, the shape of `x`) minimizing `(z - x)^2 + lam * bits(z)` under the
    order-0 table of the choices themselves, the table re-estimated `passes` times from the
    nearest rounding's; `lam = 0` or `passes = 0` is rounding to nearest."""
    x = np.asarray(x, dtype=np.float32)
    if not x.size or lam <= 0 or passes <= 0:
        return np.rint(x)
    lo = float(np.rint(x.min())) - 1.0
    span = int(float(np.rint(x.max())) + 1.0 - lo) + 1
    if span > MAX_SYMBOLS:
        return np.rint(x)
    flat = x.reshape(-1) - np.float32(lo)  # exact: a float32 minus a small integer
    price = np.zeros(span)
    for i in range(passes + 1):
        keep, bounds = envelope(price)
        which = np.searchsorted(bounds, flat)  # the index into `keep` of each latent
        if i == passes:
            break
        counts = np.zeros(span, dtype=np.int64)
        counts[keep] = np.bincount(which, minlength=keep.size)
        new = lam * code_lengths(counts)
        if np.array_equal(new, price):
            break
        price = new
    return (keep[which].astype(np.float32) + np.float32(lo)).reshape(x.shape)
