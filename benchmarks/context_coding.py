"""What coding the latents under contexts would save: the bytes of `vae-rd-free`'s latent records
against the same latents coded with one table per context, before anyone builds it.

    PYTHONPATH=src .venv/bin/python benchmarks/context_coding.py --out results/context-coding

`methods.rd.latents` codes each tensor's integer latents under one order-0 table (its own
frequencies). NNCodec's DeepCABAC conditions each level's code on what came before it in the
row (whether the previous levels were zero, how large; under dependent quantization, the state
of the trellis), which is the obvious next step for our coder. This measures, losslessly, what
it would buy: for each tensor, the latents of its (rows, cols) grid split by a context that the
decoder knows before it decodes a latent (a function of the latents to its left in its row and,
with `rounding=tcq`, of the trellis's state), each part coded by `coding.entropy.encode_symbols`
under its own table (tables included, two bytes of count per part), and the record kept where
that is smaller. The contexts:

- `prev0`: whether the latent to the left is zero (2 contexts; DeepCABAC's significance);
- `prev2`: the left latent's magnitude, capped at 2 (3 contexts);
- `sum4`: the two left latents' magnitudes summed, capped at 4 (5 contexts);
- with TCQ, each of them times the quantizer of the trellis's state (twice the contexts).

And, since NNCodec's coder is also *adaptive* (its probabilities follow the counts along the
scan, no table stored), two adaptive binary coders, measured as their ideal code length (the
sum of -log2 p over every binary decision; a range coder adds a few bytes a tensor, counted as
`ADAPTIVE_OVERHEAD`): each latent binarized as DeepCABAC does (zero or not, sign, then
`|z| > k` for k = 1..`UNARY`, the rest Exp-Golomb with adaptive prefix bits and raw suffix
bits), each decision's probability `(ones + 0.4) / (seen + 0.8)` from the decisions of the same
kind and context in earlier columns (a decoder that decodes a column of every row at a time
updates its counts once a column):

- `adaptive`: contexts from the left latents (zero or not: the two left magnitudes capped at
  2, 9 contexts; sign: the left latent's sign; `|z| > k`: the left magnitude capped at 3);
- `adaptive0`: the same coder without contexts (what adaptation alone buys).

Models: the zoo's four (paper config), with both roundings, from near-lossless to about a point
lost (`SNRS`, the Fisher-weighted SNR of the architecture known); with `--minilm`, MiniLM at 30
and 22 dB. Writes `OUT/context.json` (with the run's environment) and `OUT/context.md`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.api import compress
from vaecompress.codecs import CodecContext
from vaecompress.coding.entropy import encode_symbols
from vaecompress.data import load_mnist
from vaecompress.experiments.common import trained_model
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.format.container import loads
from vaecompress.methods.rd import tcq
from vaecompress.methods.rd.latents import _own_latents, _parse, grid
from vaecompress.methods.rd.shared import latent_specs
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.mnist import mnist_probe
from vaecompress.zoo import build_model
from vaecompress.zoo.train import preset_config

ZOO = ("fnn", "cnn", "rnn", "lstm")
SNRS = (30.0, 20.0, 14.0, 8.0, 5.0)
MINILM_SNRS = (30.0, 22.0)
ROUNDINGS = ("nearest", "tcq")
CONTEXTS = ("prev0", "prev2", "sum4")
ADAPTIVE = ("adaptive", "adaptive0")
KINDS = CONTEXTS + ADAPTIVE
UNARY = 6  # |z| > k decisions before the Exp-Golomb remainder
KT = 0.4  # the adaptive estimate's prior count per outcome
ADAPTIVE_OVERHEAD = 6  # bytes a tensor: the stream's length and the range coder's flush


def records(data: bytes) -> list[tuple[np.ndarray, int]]:
    """Each coded tensor's latents on its full (rows, cols) grid (masked rows and columns as
    zeros) and the bytes of its record."""
    c = loads(data)
    view = memoryview(c.payload("latents").data)
    out = []
    pos = 0
    for spec in latent_specs(c):
        shape = tuple(int(d) for d in spec["shape"])
        if int(np.prod(shape)) == 0:
            continue
        rec = _parse(view, pos, shape)
        lat = _own_latents(rec).astype(np.int64) + rec.offset
        r, cols = grid(shape)
        kept_r = int(rec.rows.sum()) if rec.rows is not None else r
        kept_c = int(rec.cols.sum()) if rec.cols is not None else cols
        m = np.zeros((r, cols), dtype=np.int64)
        sub = lat.reshape(kept_r, kept_c)
        rows_idx = np.flatnonzero(rec.rows) if rec.rows is not None else np.arange(r)
        cols_idx = np.flatnonzero(rec.cols) if rec.cols is not None else np.arange(cols)
        m[np.ix_(rows_idx, cols_idx)] = sub
        out.append((m, rec.end - pos))
        pos = rec.end
    return out


def context_of(m: np.ndarray, kind: str, trellis: bool) -> np.ndarray:
    """The context of every latent of the grid `m`, from the latents left of it in its row."""
    left = np.zeros_like(m)
    left[:, 1:] = np.abs(m[:, :-1])
    if kind == "prev0":
        ctx = (left > 0).astype(np.int64)
    elif kind == "prev2":
        ctx = np.minimum(left, 2)
    else:
        left2 = np.zeros_like(m)
        left2[:, 2:] = np.abs(m[:, :-2])
        ctx = np.minimum(left + left2, 4)
    if trellis:
        ctx = 2 * ctx + tcq.uses_q1(m)
    return ctx


def context_bytes(m: np.ndarray, kind: str, trellis: bool) -> int:
    """The latents coded one table per context, in the column-major order a decoder that
    decodes a column of every row at once would read them; two bytes of count per part."""
    ctx = context_of(m, kind, trellis).T
    sym = m.T - int(m.min(initial=0))
    return sum(len(encode_symbols(sym[ctx == k])) + 2 for k in np.unique(ctx))


def adaptive_bits(col: np.ndarray, ctx: np.ndarray, bit: np.ndarray, ncol: int) -> float:
    """Ideal bits of binary decisions `bit`, each in context `ctx` at column `col`, each coded
    with the probability the counts of its context in the earlier columns give."""
    total = 0.0
    for c in np.unique(ctx):
        s = ctx == c
        j, b = col[s], bit[s].astype(np.float64)
        seen = np.concatenate([[0.0], np.cumsum(np.bincount(j, minlength=ncol))[:-1]])
        ones = np.concatenate([[0.0], np.cumsum(np.bincount(j, weights=b,
                                                            minlength=ncol))[:-1]])
        p1 = (ones[j] + KT) / (seen[j] + 2 * KT)
        total += float(-np.log2(np.where(b > 0, p1, 1 - p1)).sum())
    return total


def adaptive_bytes(m: np.ndarray, contexts: bool) -> int:
    """The grid `m` coded by the adaptive binary coder (module docstring), in bytes."""
    ncol = m.shape[1]
    col = np.broadcast_to(np.arange(ncol), m.shape)
    a = np.abs(m)
    left, left2, sign_left = np.zeros_like(a), np.zeros_like(a), np.zeros_like(m)
    if contexts:
        left[:, 1:], left2[:, 2:] = a[:, :-1], a[:, :-2]
        sign_left[:, 1:] = np.sign(m[:, :-1])
    bits = adaptive_bits(col.ravel(), (3 * np.minimum(left, 2) + np.minimum(left2, 2)).ravel(),
                         (a > 0).ravel(), ncol)
    nz = a > 0
    bits += adaptive_bits(col[nz], sign_left[nz] + 1, m[nz] > 0, ncol)
    cap = np.minimum(left, 3)
    for k in range(1, UNARY + 1):
        s = a >= k
        if s.any():
            bits += adaptive_bits(col[s], cap[s] + 4 * (k - 1), a[s] > k, ncol)
    big = a > UNARY
    if big.any():
        rest = a[big] - UNARY - 1
        prefix = np.floor(np.log2(rest + 1)).astype(np.int64)
        bits += float(prefix.sum())  # the suffix bits, raw
        for k in range(int(prefix.max()) + 1):
            s = prefix >= k
            bits += adaptive_bits(col[big][s], np.zeros(int(s.sum()), np.int64), prefix[s] > k,
                                  ncol)
    return math.ceil(bits / 8) + ADAPTIVE_OVERHEAD


def measure(state: dict[str, torch.Tensor], ctx: CodecContext, snr: float,
            rounding: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = compress(state, "vae-rd-free", ctx=ctx, snr=snr, rounding=rounding)
    recs = records(res.data)
    stored = sum(b for _, b in recs)
    row: dict[str, Any] = {"snr": snr, "rounding": rounding, "file_bytes": len(res.data),
                           "ratio_honest": res.accounting.ratio_honest,
                           "latent_bytes": stored}
    for kind in CONTEXTS:
        best = sum(min(b, context_bytes(m, kind, rounding == "tcq")) for m, b in recs)
        row[kind] = best
        row[f"{kind}_saved"] = (stored - best) / len(res.data)
    for kind in ADAPTIVE:
        best = sum(min(b, adaptive_bytes(m, kind == "adaptive")) for m, b in recs)
        row[kind] = best
        row[f"{kind}_saved"] = (stored - best) / len(res.data)
    row["seconds"] = time.perf_counter() - t0
    return row


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# Coding the latents under contexts: what it would save", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}. Made by "
             "`benchmarks/context_coding.py`. Each cell: the share of the whole file a "
             "context-coded latent stream would save (the latents and every table counted; "
             "a tensor keeps its order-0 record where that is smaller). Contexts: "
             "`prev0` the left latent is zero or not, `prev2` its magnitude up to 2, `sum4` "
             "the two left magnitudes summed up to 4; under TCQ each also by the trellis "
             "state's quantizer. `adaptive`: the adaptive binary coder with contexts from "
             "the left latents (its ideal code length, the counts updated a column at a time, "
             f"{ADAPTIVE_OVERHEAD} B a tensor added); `adaptive0`: the same without contexts.",
             "", "| model | rounding | snr (dB) | file B | ratio | " + " | ".join(KINDS)
             + " |", "|---|---|---|---|---|" + "---|" * len(KINDS)]
    for r in res["rows"]:
        cells = " | ".join(f"{100 * r[f'{k}_saved']:.1f}%" for k in KINDS)
        lines.append(f"| {r['model']} | {r['rounding']} | {r['snr']:g} | {r['file_bytes']:,} | "
                     f"{r['ratio_honest']:.1f}x | {cells} |")
    lines.append("")
    for label, kinds in (("static tables per context", CONTEXTS), ("adaptive", ("adaptive",)),
                         ("adaptive without contexts", ("adaptive0",))):
        best = max((max(r[f"{k}_saved"] for k in kinds), r["model"], r["rounding"], r["snr"])
                   for r in res["rows"])
        lines.append(f"The largest saving, {label}: {100 * best[0]:.1f}% of the file "
                     f"({best[1]}, {best[2]}, {best[3]:g} dB).")
        for model in dict.fromkeys(r["model"] for r in res["rows"]):
            top = max(max(r[f"{k}_saved"] for k in kinds) for r in res["rows"]
                      if r["model"] == model)
            lines.append(f"- {model}: at most {100 * top:.1f}%")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/context-coding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minilm", action="store_true", help="MiniLM too (about 5 minutes)")
    args = p.parse_args(argv)
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    rows: list[dict[str, Any]] = []
    for name in ZOO:
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        ctx = CodecContext(progress=False, seed=args.seed,
                           probe=mnist_probe(build_model(name), seed=args.seed))
        for rounding in ROUNDINGS:
            for snr in SNRS:
                rows.append({"model": name} | measure(tm.state, ctx, snr, rounding))
                print(rows[-1], flush=True)
    if args.minilm:
        from vaecompress.zoo import minilm

        if minilm.missing() is None:
            from vaecompress.tasks.sentence import SentenceTask

            state = minilm.load_state()
            ctx = CodecContext(progress=False, seed=args.seed,
                               probe=SentenceTask("cpu").probe(seed=args.seed))
            for snr in MINILM_SNRS:
                rows.append({"model": "all-MiniLM-L6-v2"} | measure(state, ctx, snr, "nearest"))
                print(rows[-1], flush=True)
    results = {"environment": environment(torch.device("cpu"), args.seed), "rows": rows,
               "run_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "context.json", results)
    atomic_write_text(out / "context.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
