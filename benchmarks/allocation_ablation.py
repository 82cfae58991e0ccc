"""How the default codec shares its error between tensors on a bare weights file, against
NNCodec's one step for every weight: the allocation measured at equal file sizes.

    PYTHONPATH=src .venv/bin/python benchmarks/allocation_ablation.py   # -> results/allocation

`vae-rd-free` on the weights alone gives tensor t the step `d_t = c / sqrt(s_t)` with
`s_t = 1 / |w_t|^2` (`methods/rd/allocate.py`): a step proportional to the tensor's norm,
`sqrt(n_t)` times its RMS, so that each tensor's relative error counts the same and a large
tensor gets a coarser relative step. NNCodec gives every weight matrix one absolute step (its
qp) and the 1-D tensors (biases, norms) a much finer one. On the MLPs and the voice detector
NNCodec's curve lies above this codec's at coarse fidelity (`results/datafree`,
`results/heldout-vad`); this measures whether the allocation is why. Each variant is another
`s_t` in the same codec (the same quantizer, tables and coder; the module's
`relative_sensitivities` is replaced for the run):

- `relative`: the default, `d ~ sqrt(n) rms`;
- `rms`: every tensor at the same relative SNR, `d ~ rms`;
- `coarser large`: `d ~ n^(3/4) rms`, large tensors coarser still;
- `uniform`: one absolute step for every tensor, `d ~ 1`;
- `uniform, 1-D fine`: NNCodec's split, one step for the weight matrices and a step 100 times
  finer for the 1-D tensors.

The uniform variants are not scale-invariant (a layer scaled by 1e-2 and the next by 1e2, the
same function, breaks them as it breaks NNCodec: `results/default`), so they could not be the
default whatever they measure; they are here to locate NNCodec's lead. Every variant is run at
the same file sizes (a byte budget, `size`, from 5x to 38x the float32 bytes), so that the SNR
scale, which each variant weighs differently, plays no part. Models: the zoo (paper config,
seed 0) and the two held-out classifiers of `default_codec.py`; accuracy on the MNIST test set.
NNCodec's points are the committed ones (`results/datafree/records` for the zoo,
`results/default/default.json` for the held-out classifiers: every second qp), not rerun.

Writes `OUT/allocation.json` (with the run's environment) and `OUT/allocation.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from default_codec import held_out_models
from rdoq_ablation import LEVELS, ZOO, best, nncodec_points

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext
from vaecompress.data import load_mnist
from vaecompress.experiments.common import trained_model
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.methods.rd import vae_rd_free
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.mnist import accuracy
from vaecompress.zoo import build_model
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 22, 24, 27, 30, 34, 38)
FINE_1D = 1e4  # the 1-D tensors' sensitivity against the matrices': a step 100 times finer
MAX_DROP = 2.0  # points; below, the models fall off a cliff (equal_size_delta)


def _energy(w: np.ndarray) -> float:
    return float(np.square(w, dtype=np.float64).sum())


def _per_tensor(rule: Callable[[np.ndarray, float], float]
                ) -> Callable[[Sequence[np.ndarray]], list[float]]:
    """Sensitivities by `rule(tensor, energy)`; a tensor of zeros has none, as in the codec."""
    def sens(tensors: Sequence[np.ndarray]) -> list[float]:
        return [rule(w, e) if (e := _energy(w)) > 0 else 0.0 for w in tensors]
    return sens


VARIANTS: dict[str, Callable[[Sequence[np.ndarray]], list[float]]] = {
    "relative": vae_rd_free.relative_sensitivities,
    "rms": _per_tensor(lambda w, e: w.size / e),
    "coarser large": _per_tensor(lambda w, e: 1.0 / (e * math.sqrt(w.size))),
    "uniform": _per_tensor(lambda w, e: 1.0),
    "uniform, 1-D fine": _per_tensor(lambda w, e: 1.0 if w.ndim > 1 else FINE_1D),
}


@contextlib.contextmanager
def allocation(name: str) -> Iterator[None]:
    """The codec's weights-only sensitivities replaced by variant `name` for the block."""
    kept = vae_rd_free.relative_sensitivities
    vae_rd_free.relative_sensitivities = VARIANTS[name]
    try:
        yield
    finally:
        vae_rd_free.relative_sensitivities = kept


def sweep(net: torch.nn.Module, norm: Any, state: dict[str, torch.Tensor], test: Any,
          seed: int) -> tuple[float, list[dict[str, Any]]]:
    """Every variant at every size of RATIOS: ratio, bytes, accuracy drop."""
    raw = sum(v.numel() * v.element_size() for v in state.values())
    net.load_state_dict(state)
    acc0 = accuracy(net, test, normalize=norm)
    rows = []
    for name in VARIANTS:
        with allocation(name):
            for r in RATIOS:
                res = compress(state, "vae-rd-free", ctx=CodecContext(progress=False, seed=seed),
                               size=raw // r, weighting="relative")
                net.load_state_dict(decompress(res.data, res.externals))
                rows.append({"variant": name, "target": r, "file_bytes": len(res.data),
                             "ratio_honest": res.accounting.ratio_honest,
                             "acc_drop": acc0 - accuracy(net, test, normalize=norm)})
    net.load_state_dict(state)
    return acc0, rows


def held_out_nncodec(model: str) -> list[dict[str, Any]]:
    """NNCodec's committed points on a held-out classifier (`results/default`)."""
    res = json.loads((ROOT / "results" / "default" / "default.json").read_text())
    row = next((m for m in res["mnist"] if m["model"] == model), None)
    return [{"qp": p["settings"]["qp"], "ratio_honest": p["ratio_honest"],
             "acc_drop": p["acc_drop"]} for p in (row or {}).get("nncodec", [])]


def equal_size_delta(rows: list[dict[str, Any]], variant: str) -> float | None:
    """The mean over the sizes where `relative` loses at most MAX_DROP of the variant's drop
    minus `relative`'s at the same size target (< 0: the variant keeps more accuracy)."""
    ref = {p["target"]: p["acc_drop"] for p in rows if p["variant"] == "relative"}
    diffs = [p["acc_drop"] - ref[p["target"]] for p in rows
             if p["variant"] == variant and ref.get(p["target"], math.inf) <= MAX_DROP]
    return sum(diffs) / len(diffs) if diffs else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    names = list(VARIANTS)
    lines = ["# How the default codec shares its error between tensors (weights only)", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['device']}, "
             f"{env['time_utc']}; {res['run_s']:.0f} s. Made by "
             "`benchmarks/allocation_ablation.py`. Each variant is the same codec with another "
             "step per tensor (the module docstring), run at the same file sizes "
             f"({RATIOS[0]}x to {RATIOS[-1]}x); NNCodec's points are the committed ones.", "",
             "## Best honest ratio within 0.1 / 0.5 / 1 point of the original accuracy", "",
             "| model | tuned on | " + " | ".join(names) + " | nncodec |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for m in res["models"]:
        cells = [" / ".join(_fmt(best([p for p in m["rows"] if p["variant"] == n], lv))
                            for lv in LEVELS) for n in names]
        nn = " / ".join(_fmt(best(m["nncodec"], lv)) for lv in LEVELS)
        lines.append(f"| {m['model']} | {'no' if m['held_out'] else 'yes'} | "
                     + " | ".join(cells) + f" | {nn} |")
    lines += ["", "## Accuracy drop minus the default's at the same file size", "",
              f"Mean over the sizes where the default (`relative`) loses at most {MAX_DROP:g} "
              "points; negative: the variant keeps more accuracy at the same size. One file is "
              "one point of the test set: a tenth of a point is within its noise.", "",
              "| model | " + " | ".join(names[1:]) + " |", "|---|" + "---|" * (len(names) - 1)]
    for m in res["models"]:
        cells = []
        for n in names[1:]:
            d = equal_size_delta(m["rows"], n)
            cells.append("-" if d is None else f"{d:+.2f}")
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    lines += ["", "## Every point (ratio, drop)", "",
              "| model | target | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for m in res["models"]:
        for r in RATIOS:
            at = {p["variant"]: p for p in m["rows"] if p["target"] == r}
            lines.append(f"| {m['model']} | {r}x | " + " | ".join(
                f"{at[n]['ratio_honest']:.1f}x {at[n]['acc_drop']:+.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/allocation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", action="store_true",
                   help="only redraw OUT/allocation.md from its JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        atomic_write_text(out / "allocation.md",
                          render(json.loads((out / "allocation.json").read_text())))
        return 0
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    models = []
    for name in ZOO:
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        acc0, rows = sweep(net.eval(), ZOO_NORMALIZE, tm.state, test, args.seed)
        models.append({"model": name, "held_out": False, "acc_orig": acc0, "rows": rows,
                       "nncodec": nncodec_points(name)})
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name, net, norm in held_out_models(train)[:2]:
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        acc0, rows = sweep(net, norm, state, test, args.seed)
        models.append({"model": name, "held_out": True, "acc_orig": acc0, "rows": rows,
                       "nncodec": held_out_nncodec(name)})
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    res = {"environment": environment(torch.device("cpu"), args.seed), "models": models,
           "ratios": list(RATIOS), "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "allocation.json", res)
    atomic_write_text(out / "allocation.md", render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
