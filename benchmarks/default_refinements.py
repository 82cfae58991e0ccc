"""Two refinements of the data-free default tried on MiniLM, and what they buy (issue 18): finer
sensitivities than one per tensor, and rounding with error feedback.

    PYTHONPATH=src .venv/bin/python benchmarks/default_refinements.py --out benchmarks/results

Every point quantizes MiniLM on the closed form's grid (`methods.rd.allocate`, Fisher weights
of the probe on random tokens, as `vaecompress compress` does for MiniLM), codes it
(`methods.rd.latents`, the bytes counted are the latent records) and measures the mean cosine
and the nearest neighbours kept on the fidelity set and on the held-out text (Jane Austen):

- `default`: the default's form (one step per tensor, rounding to nearest) at a few SNRs, the
  curve the others are read against;
- `feedback (probe)`: the linear layers' latents rounded with error feedback
  (`methods.rd.feedback`) on the second moments of their inputs under the *probe* (random
  tokens): what the data-free codec could do without data;
- `feedback (training sentences)`: the same on the inputs of 16 batches of the training
  sentences (what `vae-rd`'s warm start does, with data), for comparison;
- `separable fisher`: each weight's sensitivity the tensor's mean Fisher times a row factor
  and a column factor (the probe's mean squared gradient of the row and of the column,
  relative to the tensor's, clipped to [1/16, 16]; a factor is left at 1 for a tensor with a
  row or column the probe never reaches, as the embeddings' unseen tokens), one step per row
  and one scale per column (`rows`, `cols`: one of the two). The target SNR is then the
  element-weighted one, so the points are compared at the same fidelity, not the same SNR; the
  bytes count the row steps and 4 bytes per column scale (a stored form that does not exist).

Writes `OUT/default_refinements.json` with the run's environment and git revision.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from minilm_arrays import coded_arrays, fidelity  # noqa: E402

from vaecompress.files import atomic_write_json  # noqa: E402
from vaecompress.methods.rd.allocate import allocate  # noqa: E402
from vaecompress.methods.rd.feedback import round_with_feedback  # noqa: E402
from vaecompress.methods.rd.latents import encode_model, encode_tensor, grid  # noqa: E402
from vaecompress.runinfo import environment, seed_everything  # noqa: E402
from vaecompress.tasks.probe import tensor_sensitivities  # noqa: E402
from vaecompress.training.grams import linear_input_grams  # noqa: E402

DEFAULT_SNRS = (30.0, 28.0, 26.0, 24.0)
FEEDBACK_SNRS = (30.0, 26.0)
SEPARABLE_SNR = 28.0
CLIP = 16.0
GRAM_BATCHES = 16


def _squared_grads(probe: Any, state: dict[str, torch.Tensor], names: list[str],
                   seed: int) -> list[np.ndarray]:
    """Per weight, the probe's mean squared batch gradient (`tasks.probe.fisher`, not averaged
    over the tensor)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: (v.detach().float().clone().requires_grad_(True) if k in names else v)
               for k, v in state.items()}
    leaves = [tensors[k] for k in names]
    sums = [torch.zeros(v.shape, dtype=torch.float64) for v in leaves]
    samples = 0
    for i in range(probe.batches):
        out = probe.outputs(tensors, i).float()
        out = out.reshape(out.shape[0], -1)
        score = (out * torch.randn(out.shape, generator=gen)).sum()
        for j, g in enumerate(torch.autograd.grad(score, leaves, allow_unused=True)):
            if g is not None:
                sums[j] += g.double().square()
        samples += out.shape[0]
    return [(s / samples).numpy() for s in sums]


def _factors(f: np.ndarray, use_rows: bool, use_cols: bool) -> tuple[np.ndarray, np.ndarray]:
    m = f.reshape(grid(f.shape))
    mean = float(m.mean())
    rows, cols = np.ones(m.shape[0]), np.ones(m.shape[1])
    if f.ndim >= 2 and mean > 0:
        rm, cm = m.mean(1) / mean, m.mean(0) / mean
        if use_rows and (rm > 0).all():
            rows = np.clip(rm, 1 / CLIP, CLIP)
        if use_cols and (cm > 0).all():
            cols = np.clip(cm, 1 / CLIP, CLIP)
    return rows, cols


def _separable(arrays: list[np.ndarray], sens: list[float], grads: list[np.ndarray],
               snr: float, use_rows: bool, use_cols: bool
               ) -> tuple[list[np.ndarray], int]:
    """Decoded weights and bytes at `snr` of the element-weighted NSR (module docstring)."""
    facs = [_factors(g, use_rows, use_cols) for g in grads]
    energy = [float(np.square(a, dtype=np.float64).sum()) for a in arrays]
    live = [s > 0 for s in sens]
    den = sum(s * e for s, e, ok in zip(sens, energy, live, strict=True) if ok)
    count = sum(live)

    def quantize(c: float) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray],
                                    list[np.ndarray], float]:
        ints, steps, scales, dec, num = [], [], [], [], 0.0
        for a, s, (r, k), ok in zip(arrays, sens, facs, live, strict=True):
            m = a.reshape(grid(a.shape))
            if not ok:
                ints.append(np.zeros(m.shape, np.int64))
                steps.append(np.ones(1, np.float32))
                scales.append(np.ones(1, np.float32))
                dec.append(np.zeros(a.shape, np.float32))
                continue
            st = (c / math.sqrt(s) / np.sqrt(r)).astype(np.float32)
            cs = (1 / np.sqrt(k)).astype(np.float32)
            z = np.rint(m / (st[:, None].astype(np.float64) * cs[None, :])).astype(np.int64)
            w = (z.astype(np.float32) * st[:, None]) * cs[None, :]
            num += s * float((np.square(w.astype(np.float64) - m) * r[:, None]
                              * k[None, :]).sum())
            ints.append(z)
            steps.append(st)
            scales.append(cs)
            dec.append(w.reshape(a.shape))
        return ints, steps, scales, dec, count * num / den

    target = 10 ** (-snr / 10)
    lo, hi = 1e-9, 1e3
    for _ in range(48):
        mid = math.sqrt(lo * hi)
        if quantize(mid)[4] <= target:
            lo = mid
        else:
            hi = mid
    ints, steps, scales, dec, _ = quantize(lo)
    size = 0
    for z, st, cs in zip(ints, steps, scales, strict=True):
        size += len(encode_tensor(z, st if np.unique(st).size > 1 else st[:1]))
        size += 4 * cs.size if np.unique(cs).size > 1 else 0
    return dec, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from vaecompress.tasks.sentence import SentenceTask

    torch.set_num_threads(1)
    seed_everything(0)
    task = SentenceTask()
    ca = coded_arrays(task)
    state, names, arrays, n = ca.state, ca.names, ca.arrays, ca.params
    probe = task.probe(seed=0)
    sens = tensor_sensitivities(probe, state, names, arrays, 0)
    points: list[dict[str, Any]] = []

    def record(method: str, snr: float, dec: list[np.ndarray], size: int, t0: float) -> None:
        p = {"method": method, "snr": snr, "bytes": size, "ratio": 4 * n / size,
             "seconds": time.perf_counter() - t0, **fidelity(task, ca.rebuilt(dec))}
        points.append(p)
        print(f"{method:32s} {snr:5.1f} dB {p['ratio']:6.3f}x  cos {p['cos_mean']:.5f} "
              f"nn {100 * p['nn_same']:.1f}%  held-out cos {p['heldout_cos_mean']:.5f} "
              f"nn {100 * p['heldout_nn_same']:.1f}%", flush=True)

    def grams_of(batches: list[Any], loss: Any) -> dict[str, torch.Tensor]:
        return linear_input_grams(loss, state, batches, names=names)

    probe_grams = grams_of(list(range(probe.batches)), lambda s, i: probe.outputs(s, i))
    ft = task.finetuner(seed=0)
    it = ft.batches()
    train_grams = grams_of([next(it) for _ in range(GRAM_BATCHES)], ft.loss)
    for snr in DEFAULT_SNRS:
        t0 = time.perf_counter()
        al = allocate(arrays, sens, snr=snr)
        dec = [z.astype(np.float32) * s[0] for z, s in zip(al.ints, al.steps, strict=True)]
        record("default", snr, dec, len(encode_model(al.ints, al.steps)), t0)
        if snr not in FEEDBACK_SNRS:
            continue
        for label, grams in (("feedback (probe)", probe_grams),
                             ("feedback (training sentences)", train_grams)):
            t0 = time.perf_counter()
            ints = [round_with_feedback(torch.from_numpy(a), float(s[0]), grams[k]).numpy()
                    if k in grams else z
                    for k, a, z, s in zip(names, arrays, al.ints, al.steps, strict=True)]
            dec = [z.astype(np.float32) * s[0] for z, s in zip(ints, al.steps, strict=True)]
            record(label, snr, dec, len(encode_model(ints, al.steps)), t0)
    grads = _squared_grads(probe, state, names, 0)
    for label, rows, cols in (("separable fisher", True, True), ("separable fisher: rows", True,
                              False), ("separable fisher: cols", False, True)):
        t0 = time.perf_counter()
        dec, size = _separable(arrays, sens, grads, SEPARABLE_SNR, rows, cols)
        record(label, SEPARABLE_SNR, dec, size, t0)
    out = {"environment": environment(torch.device("cpu"), 0),
           "command": "PYTHONPATH=src .venv/bin/python benchmarks/default_refinements.py",
           "params": n, "clip": CLIP, "gram_batches": GRAM_BATCHES, "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "default_refinements.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
