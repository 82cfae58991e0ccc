"""How many points the rate term's code-length table spans on MiniLM at a few SNRs (issue 19's
memory at fine SNRs, docs/minilm.md).

    PYTHONPATH=src .venv/bin/python benchmarks/rate_grid.py --out benchmarks/results/rate_grid.json

`methods.rd.prior.bits_fast` evaluates the prior on a grid of `1/RESOLUTION` bin over the range
of a tensor's latents (one bin of margin each side), and the warm-started `vae-rd` keeps that
evaluation's graph for the backward pass. Here the latents are the closed form's at each SNR
(`methods.rd.allocate`, the Fisher weights of the probe on random tokens, as `vaecompress
compress` runs it on MiniLM and as the warm start begins), each tensor's whole range (the rate's
5% sample of a large tensor spans at most as much). Writes, per SNR, the grid points summed over
the tensors, per parameter, and the widest tensor's; and the points `bits_fast` evaluates since
5e315cc, which takes only the occupied grid points (the two next to each noisy latent) where the
grid has more than `SPARSE_MIN` points and twice the latents (each whole tensor, one draw of the
noise).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from vaecompress.codecs.base import split_passthrough  # noqa: E402
from vaecompress.files import atomic_write_json  # noqa: E402
from vaecompress.methods.rd.allocate import allocate  # noqa: E402
from vaecompress.methods.rd.prior import SPARSE_MIN  # noqa: E402
from vaecompress.runinfo import environment, seed_everything  # noqa: E402
from vaecompress.tasks.probe import tensor_sensitivities  # noqa: E402

SNRS = (14.0, 18.0, 22.0, 26.0, 30.0)
RESOLUTION = 16  # bits_fast's default


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rate_grid.json")
    args = ap.parse_args()
    from vaecompress.tasks.sentence import SentenceTask

    torch.set_num_threads(1)
    seed_everything(0)
    task = SentenceTask(n_eval=0)
    state = dict(task.reference)
    coded, _ = split_passthrough(state)
    names = [k for k, v in coded.items() if v.numel()]
    arrays = [coded[k].detach().float().numpy() for k in names]
    n = sum(a.size for a in arrays)
    sens = tensor_sensitivities(task.probe(seed=0), state, names, arrays, 0)
    points = []
    for snr in SNRS:
        al = allocate(arrays, sens, snr=snr)
        # bits_fast: lo = floor(min) - 1, hi = ceil(max) + 1, (hi - lo) * RESOLUTION + 1 points
        grids = [(int(z.max()) - int(z.min()) + 2) * RESOLUTION + 1 for z in al.ints]
        widest = max(range(len(grids)), key=grids.__getitem__)
        evaluated = [g if g <= max(SPARSE_MIN, 2 * z.size) else _occupied(z) for g, z in
                     zip(grids, al.ints, strict=True)]
        points.append({"snr": snr, "grid_points": sum(grids), "grid_points_per_param":
                       sum(grids) / n, "widest": names[widest], "widest_points": grids[widest],
                       "widest_latents": int(al.ints[widest].size),
                       "evaluated_points": sum(evaluated),
                       "evaluated_points_per_param": sum(evaluated) / n})
        print(f"{snr:4.0f} dB: {sum(grids):,} grid points ({sum(grids) / n:.3f} a parameter); "
              f"widest {names[widest]} ({al.ints[widest].size:,} latents): "
              f"{grids[widest]:,}; evaluated {sum(evaluated):,}", flush=True)
    atomic_write_json(args.out, {"environment": environment(torch.device("cpu"), 0),
                                 "command": "PYTHONPATH=src .venv/bin/python "
                                 "benchmarks/rate_grid.py",
                                 "params": n, "resolution": RESOLUTION, "points": points})
    return 0


def _occupied(ints: np.ndarray) -> int:
    """The grid points `bits_fast` evaluates on these latents with the training's noise (each
    `z + u`, `u ~ U(-1/2, 1/2)`, takes the grid point below it and the next)."""
    z = torch.from_numpy(ints.astype(np.float32).reshape(-1))
    z = z + torch.rand(z.shape, generator=torch.Generator().manual_seed(0)) - 0.5
    i0 = ((z - (math.floor(float(z.min())) - 1)) * RESOLUTION).floor().long()
    return int(torch.unique(torch.cat([i0, i0 + 1])).numel())


if __name__ == "__main__":
    raise SystemExit(main())
