"""What NNCodec's dependent quantization buys it, and what our coder makes of its levels.

    .venv/bin/python benchmarks/nncodec_dq.py --out results/nncodec-dq   # NNCodec installed

On the zoo's FNN (paper preset, as `--preset datafree` trains it), NNCodec at qp -16 and -14
with its dependent quantization (`use_dq`) on and off: the file's bytes, the accuracy lost on
the MNIST test set, the squared error of the rebuilt weight matrices, and the bytes of our own
latent stream (`methods.rd.latents`, order-0 tables) coding the same reconstruction levels
(the rebuilt matrices over the smallest grid they lie on: the step, or half of it). With
dependent quantization, also our stream of the same weights as *trellis levels*
(`methods.rd.tcq`: the level `k` of an odd multiple `r` is `(r + sgn r) / 2`, of an even one
`r / 2`, which needs no state): the fair comparison of the two coders, since the reconstruction
levels spend about a bit on every nonzero weight's parity that the trellis's state makes free.
NNCodec's state machine is not our four-state one (the table says how many weights ours
would rebuild), so that stream is measured, not offered as a file. The question it answers for
`docs/default-codec.md`: is NNCodec's lead on the MLPs its coder or its quantizer? Writes
`OUT/nncodec_dq.json` (with the run's environment) and `OUT/nncodec_dq.md`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.api import compress, decompress
from vaecompress.codecs import REGISTRY
from vaecompress.data import load_mnist
from vaecompress.experiments.common import trained_model
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.methods.rd import tcq
from vaecompress.methods.rd.latents import encode_model
from vaecompress.methods.rd.latents import grid as row_grid
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.mnist import accuracy
from vaecompress.zoo import build_model
from vaecompress.zoo.train import preset_config

QPS = (-16, -14)


def _levels(w: np.ndarray) -> tuple[np.ndarray, float]:
    """The integers and grid of a rebuilt matrix: its values over its smallest magnitude (its
    step: NNCodec's step for a qp is not 2**(qp/4) at every qp), or over half of it."""
    nonzero = np.abs(w[w != 0])
    if not nonzero.size:
        return np.zeros(w.shape, dtype=np.int64), 1.0
    step = float(nonzero.min())
    for grid in (step, step / 2):
        z = w / grid
        if np.abs(z - np.rint(z)).max() < 1e-3:
            return np.rint(z).astype(np.int64), grid
    raise ValueError("the rebuilt values lie on no grid of their smallest magnitude")


def trellis_levels(r: np.ndarray) -> np.ndarray:
    """The trellis level of each reconstruction level `r` (`methods.rd.tcq`): an odd `r` is
    Q1's `2k - sgn k`, an even one Q0's `2k` (zero is zero in both)."""
    return np.where(r % 2 != 0, (r + np.sign(r)) // 2, r // 2).astype(np.int64)


def trellis_stream(ints: list[np.ndarray], grids: list[np.ndarray],
                   shapes: list[tuple[int, ...]]) -> tuple[int, float]:
    """Bytes of our stream (order-0 tables, flag 32) of the levels as trellis levels, and the
    share of the weights our own four-state machine (`methods.rd.tcq`, rows from state 0)
    would rebuild from them. The bytes do not depend on the machine: a reader that runs
    NNCodec's machine over the same stream rebuilds every weight."""
    levels = [trellis_levels(z) for z in ints]
    same = sum(int((tcq.reconstruct(k.reshape(row_grid(shape))).reshape(shape) == z).sum())
               for k, z, shape in zip(levels, ints, shapes, strict=True))
    return len(encode_model(levels, grids, trellis=True)), same / sum(z.size for z in ints)


def _trellis_fields(ints: list[np.ndarray], grids: list[np.ndarray],
                    shapes: list[tuple[int, ...]], dq: bool) -> dict[str, Any]:
    if not dq:
        return {"our_trellis_stream_bytes": None, "our_machine_rebuilds": None}
    size, share = trellis_stream(ints, grids, shapes)
    return {"our_trellis_stream_bytes": size, "our_machine_rebuilds": share}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/nncodec-dq")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    hint = REGISTRY["nncodec"].available()
    if hint is not None:
        print(hint, file=sys.stderr)
        return 2
    auto_threads()
    seed_everything(args.seed)
    train, test = load_mnist()
    tm = trained_model("fnn", preset_config("paper", "fnn", args.seed), train, test,
                       device=torch.device("cpu"), progress=False)
    net = build_model("fnn")
    net.load_state_dict(tm.state)
    acc0 = accuracy(net, test)
    matrices = [k for k, v in tm.state.items() if v.dim() > 1]
    rows: list[dict[str, Any]] = []
    for qp in QPS:
        for dq in (True, False):
            t0 = time.perf_counter()
            res = compress(tm.state, "nncodec", qp=qp, use_dq=dq)
            seconds = time.perf_counter() - t0
            rebuilt = decompress(res.data)
            net.load_state_dict(rebuilt)
            ints, grids = [], []
            for k in matrices:
                z, grid = _levels(rebuilt[k].numpy().astype(np.float64))
                ints.append(z)
                grids.append(np.array([grid], dtype=np.float32))
            rows.append({"qp": qp, "use_dq": dq, "file_bytes": len(res.data),
                         "acc_drop": acc0 - accuracy(net, test),
                         "sse": sum(float((rebuilt[k] - tm.state[k]).double().pow(2).sum())
                                    for k in matrices),
                         "zeros": sum(int((rebuilt[k] == 0).sum()) for k in matrices)
                         / sum(tm.state[k].numel() for k in matrices),
                         "our_stream_bytes": len(encode_model(ints, grids)),
                         **_trellis_fields(ints, grids, [tuple(tm.state[k].shape)
                                                         for k in matrices], dq),
                         "compress_s": seconds})
            print(rows[-1], flush=True)
    results = {"environment": environment(torch.device("cpu"), args.seed), "model": "fnn",
               "acc_orig": acc0, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "nncodec_dq.json", results)
    env = results["environment"]
    lines = ["# NNCodec with and without its dependent quantization (the zoo's FNN)", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}. Made by "
             "`benchmarks/nncodec_dq.py`. Original accuracy "
             f"{acc0:.2f}%. `our stream`: our latent stream of the same levels (the weight "
             "matrices only). `as trellis levels`: our stream of the same weights as "
             "dependent quantization's levels, which a reader running NNCodec's state "
             "machine rebuilds exactly; `ours rebuilds`: the share of the weights our own "
             "four-state machine would rebuild from them (`-`: without dependent "
             "quantization).", "",
             "| qp | use_dq | file B | drop | squared error | zeros | our stream B | "
             "as trellis levels B | ours rebuilds |",
             "|---|---|---|---|---|---|---|---|---|"]

    def _trellis(r: dict[str, Any]) -> str:
        if not r["use_dq"]:
            return "- | -"
        return f"{r['our_trellis_stream_bytes']:,} | {r['our_machine_rebuilds']:.0%}"

    lines += [f"| {r['qp']} | {r['use_dq']} | {r['file_bytes']:,} | {r['acc_drop']:+.2f} | "
              f"{r['sse']:.1f} | {r['zeros']:.2f} | {r['our_stream_bytes']:,} | "
              f"{_trellis(r)} |" for r in rows]
    atomic_write_text(out / "nncodec_dq.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
