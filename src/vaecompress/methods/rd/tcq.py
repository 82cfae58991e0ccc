"""Dependent (trellis-coded) quantization of a tensor's latents, as in VVC (NNCodec's is of the
same kind, under another state machine: `results/nncodec-dq`).

Two scalar quantizers of step `2 d` share the grid of step `d`: Q0 reconstructs the level `k`
as `2k` (even multiples of `d`), Q1 as `2k - sgn(k)` (zero and the odd multiples). Which one
codes a weight is the state of a four-state machine that each row runs along its weights in
order, from state 0: states 0 and 1 use Q0, states 2 and 3 Q1, and each level moves the state
by its parity (`TRANSITIONS[state][k & 1]`). The decoder needs nothing but the levels: the
state is a function of the parities before it. The encoder chooses the levels of each row
together, by the Viterbi algorithm over the four states, for the least squared error.

Why: each weight's level is that of a quantizer twice as coarse as the grid (fewer bits), and
the trellis still reaches every point of the fine grid along a row (the union of two lattices:
a denser packing than either). NNCodec's own runs on the zoo's FNN show the difference it
makes (`results/nncodec-dq`, `docs/default-codec.md`): at qp -16 its files are 25% smaller
with it than without, at about the same accuracy.

The state machine over bits: with the state `s = 2 b1 + b0`, a level of parity `p` moves it to
`b1' = b0 xor p, b0' = b1`, so `b1` at column `n` is the exclusive or of the parities at
`n-1, n-3, ...`: two cumulative XORs decode a whole tensor at once (`uses_q1`).

Boundary: arrays of (rows, cols) in, arrays out; the stored form is `methods.rd.latents`'s.
"""

from __future__ import annotations

import numpy as np

TRANSITIONS = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int8)


def uses_q1(levels: np.ndarray) -> np.ndarray:
    """bool (rows, cols): whether each level is Q1's (state 2 or 3), from the parities of the
    levels before it in its row (module docstring)."""
    p = (np.asarray(levels).astype(np.int64, copy=False) & 1).astype(np.uint8)
    q1 = np.zeros(p.shape, dtype=np.uint8)
    # q1[:, n] = p[:, n-1] ^ p[:, n-3] ^ ...: at odd n the parities at even places before it,
    # at even n those at odd places
    odd = np.bitwise_xor.accumulate(p[:, 0::2], axis=1)
    q1[:, 1::2] = odd[:, : q1[:, 1::2].shape[1]]
    even = np.bitwise_xor.accumulate(p[:, 1::2], axis=1)
    q1[:, 2::2] = even[:, : q1[:, 2::2].shape[1]]
    return q1.astype(bool)


def reconstruct(levels: np.ndarray) -> np.ndarray:
    """float32 (rows, cols): the multiples of the step the levels decode to."""
    k = np.asarray(levels).astype(np.float32)
    twice = 2.0 * k
    return np.where(uses_q1(levels), twice - np.sign(k), twice).astype(np.float32)


def _best(x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each quantizer (Q0, Q1) and parity (0, 1): the level of that parity nearest to
    `x` (in units of the fine step) and its squared error; index `2 q + p`. Of candidates at
    the same error the first in the order below is kept."""
    # Q0: 2k; of floor(x / 2) and the next, one has each parity, and it is that parity's
    # nearest
    a = np.floor(x / 2.0)
    a_odd = np.remainder(a, 2.0) == 1
    even = np.where(a_odd, a + 1.0, a)
    odd = np.where(a_odd, a, a + 1.0)
    levels = [even, odd]
    errors = [(x - 2.0 * even) ** 2, (x - 2.0 * odd) ** 2]
    # Q1: 2k - sgn(k) (0, +-1, +-3, ...): the two odd points around x and zero, in this order
    o = 2.0 * np.floor((x - 1.0) / 2.0) + 1.0  # the odd point at or below x
    cands = [np.where(o > 0, (o + 1.0) / 2.0, (o - 1.0) / 2.0),
             np.where(o + 2.0 > 0, (o + 3.0) / 2.0, (o + 1.0) / 2.0)]
    errs = [(x - (2.0 * k - np.sign(k))) ** 2 for k in cands]
    pars = [np.remainder(k, 2.0) == 1 for k in cands]
    zero_err = x * x  # the third candidate, 0, is even
    for p in (False, True):
        best_k = np.zeros_like(x)
        best_e = np.full(x.shape, np.inf)
        for k, e, par in zip(cands, errs, pars, strict=True):
            take = (par == p) & (e < best_e)
            best_k = np.where(take, k, best_k)
            best_e = np.where(take, e, best_e)
        if not p:  # zero: kept where strictly better (its level is already best_k's default)
            take = zero_err < best_e
            best_k = np.where(take, 0.0, best_k)
            best_e = np.where(take, zero_err, best_e)
        levels.append(best_k)
        errors.append(best_e)
    return levels, errors


# Each next state's two predecessors (state, parity): index 0 or 1 is the backpointer.
_FROM = {0: ((0, 0), (1, 1)), 2: ((0, 1), (1, 0)), 1: ((2, 0), (3, 1)), 3: ((2, 1), (3, 0))}
# The same as tables indexed [state, backpointer]: the state before, and the level's parity.
_PREV = np.array([[_FROM[t][b][0] for b in (0, 1)] for t in range(4)], dtype=np.int64)
_PARITY = np.array([[_FROM[t][b][1] for b in (0, 1)] for t in range(4)], dtype=np.int64)


def quantize(x: np.ndarray) -> np.ndarray:
    """int64 (rows, cols): the levels of least squared error `sum (x - d * rec)^2 / d^2` along
    each row (`x` the weights over the fine step), by Viterbi over the four states. The trellis
    runs along the columns, each over every row at once, so the columns are laid out
    contiguously first."""
    xt = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)  # (cols, rows)
    cols, rows = xt.shape
    cost = np.full((4, rows), np.inf)  # per state, each row's least error so far
    cost[0] = 0.0
    back = np.zeros((cols, rows), dtype=np.uint8)  # bit t: next state t came from its second
    for j in range(cols):
        _, err = _best(xt[j])
        new = np.empty_like(cost)
        bits = np.zeros(rows, dtype=np.uint8)
        for t, ((s0, p0), (s1, p1)) in _FROM.items():
            q = 1 if s0 >= 2 else 0  # both predecessors use the same quantizer
            c0 = cost[s0] + err[2 * q + p0]
            c1 = cost[s1] + err[2 * q + p1]
            second = c1 < c0
            new[t] = np.where(second, c1, c0)
            bits |= second.astype(np.uint8) << t
        cost = new
        back[j] = bits
    out = np.zeros((cols, rows), dtype=np.int64)
    state = np.argmin(cost, axis=0)
    idx = np.arange(rows)
    for j in range(cols - 1, -1, -1):
        levels, _ = _best(xt[j])
        second = (back[j] >> state.astype(np.uint8)) & 1
        prev = _PREV[state, second]
        par = _PARITY[state, second]
        q = (prev >= 2).astype(np.int64)
        stacked = np.stack(levels)  # [4, rows]: index 2 q + p
        out[j] = stacked[2 * q + par, idx].astype(np.int64)
        state = prev
    return out.T
