"""Dependent (trellis-coded) quantization against rounding to nearest in `vae-rd-free`: bytes and
accuracy (`--set rounding=tcq`, `methods/rd/tcq.py`), measured before it could become the default.

    PYTHONPATH=src .venv/bin/python benchmarks/tcq_ablation.py --minilm   # -> results/tcq

The sweeps of `benchmarks/rdoq_ablation.py` with `rounding=tcq` in place of RDOQ:

- the zoo (fnn, cnn, rnn, lstm at the paper's config): `snr` swept with both roundings, each
  with the Fisher probe (`weighting=auto`) and on the weights alone (`weighting=relative`),
  the accuracy of the rebuilt model on the MNIST test set; the best ratio within 0.1 / 0.5 / 1
  point beside NNCodec's (the committed `results/datafree/records`, not rerun), and TCQ's drop
  minus nearest's at equal bytes;
- the classifiers nothing was tuned on (`default_codec.py`'s MyMLP and LeNet-300-100);
- with `--minilm`: MiniLM at a few SNRs, the ratio, the time and the fidelity (fidelity set and
  held-out Austen sentences).

Writes `OUT/tcq.json` (with the run's environment and git revision) and `OUT/tcq.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from default_codec import held_out_models
from rdoq_ablation import (
    HELD_OUT_SNRS,
    LEVELS,
    SNRS,
    WEIGHTINGS,
    ZOO,
    best,
    equal_bytes_delta,
    minilm_rows,
    nncodec_points,
    sweep,
)

from vaecompress.data import load_mnist
from vaecompress.experiments.common import trained_model
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.zoo import build_model
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config

ROUNDINGS = ("nearest", "tcq")
MINILM_SNRS = (30.0, 22.0, 14.0)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# Dependent (trellis-coded) quantization against rounding to nearest "
             "(vae-rd-free)", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['device']}, "
             f"{env['time_utc']}. Made by `benchmarks/tcq_ablation.py`. NNCodec's points are "
             "the committed `results/datafree/records` (not rerun).", "",
             "## Best honest ratio within 0.1 / 0.5 / 1 point of the original accuracy", "",
             "The last column: TCQ's accuracy drop minus nearest rounding's at the same file "
             "size, averaged over TCQ's points up to 16 dB where nearest's drop at that size is "
             "at most 2 points (negative: TCQ keeps more accuracy per byte; one point of the "
             "sweep is one file, so a tenth of a point is within the test set's noise).", "",
             "| model | tuned on | weighting | nearest | tcq | tcq / nearest | nncodec | "
             "drop, tcq - nearest at equal bytes | compress_s (nearest / tcq, median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for w in WEIGHTINGS:
            pts = {r: [p for p in m["rows"] if p["weighting"] == w and p["rounding"] == r]
                   for r in ROUNDINGS}
            near = [best(pts["nearest"], lv) for lv in LEVELS]
            trel = [best(pts["tcq"], lv) for lv in LEVELS]
            gain = [f"{b / a:.2f}" if a and b else "-" for a, b in zip(near, trel, strict=True)]
            nn = [best(m["nncodec"], lv) for lv in LEVELS] if m["nncodec"] else [None] * 3
            delta = equal_bytes_delta(m["rows"], w, other="tcq")
            secs = [sorted(p["compress_s"] for p in pts[r])[len(pts[r]) // 2] for r in ROUNDINGS]
            lines.append(
                f"| {m['model']} | {'no' if m['held_out'] else 'yes'} | "
                f"{'fisher' if w == 'auto' else 'weights only'} | "
                f"{' / '.join(map(_fmt, near))} | {' / '.join(map(_fmt, trel))} | "
                f"{' / '.join(gain)} | {' / '.join(map(_fmt, nn))} | "
                f"{'-' if delta is None else f'{delta:+.2f}'} | "
                f"{secs[0]:.1f} / {secs[1]:.1f} |")
    lines += ["", "## Bytes and accuracy drop at each SNR (Fisher weighting)", "",
              "| model | snr | nearest B (drop) | tcq B (drop) | tcq / nearest B |",
              "|---|---|---|---|---|"]
    for m in res["models"]:
        by = {(p["rounding"], p["snr"]): p for p in m["rows"] if p["weighting"] == "auto"}
        for snr in sorted({p["snr"] for p in m["rows"]}):
            a, b = by[("nearest", snr)], by[("tcq", snr)]
            lines.append(f"| {m['model']} | {snr:g} | {a['file_bytes']:,} ({a['acc_drop']:+.2f})"
                         f" | {b['file_bytes']:,} ({b['acc_drop']:+.2f}) | "
                         f"{b['file_bytes'] / a['file_bytes']:.3f} |")
    if res.get("minilm"):
        lines += ["", "## all-MiniLM-L6-v2 (Fisher probe)", "",
                  "| snr | rounding | ratio_honest | reached dB | fidelity set: cos, neighbours "
                  "| held-out: cos, neighbours | compress_s |", "|---|---|---|---|---|---|---|"]
        for r in res["minilm"]["rows"]:
            lines.append(f"| {r['snr']:g} | {r['rounding']} | {r['ratio_honest']:.3f}x | "
                         f"{r['snr_db']:.3f} | {r['cos_mean']:.5f}, {100 * r['nn_same']:.1f}% | "
                         f"{r['heldout_cos_mean']:.5f}, {100 * r['heldout_nn_same']:.1f}% | "
                         f"{r['compress_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tcq")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="*", default=list(ZOO))
    p.add_argument("--no-held-out", action="store_true", help="skip MyMLP and LeNet-300-100")
    p.add_argument("--minilm", action="store_true", help="add MiniLM (about 4 min a point)")
    p.add_argument("--render", action="store_true", help="only redraw OUT/tcq.md from its JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        atomic_write_text(out / "tcq.md", render(json.loads((out / "tcq.json").read_text())))
        return 0
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    models = []
    for name in args.models:
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        acc0, rows = sweep(net.eval(), ZOO_NORMALIZE, tm.state, test, SNRS, args.seed,
                           roundings=ROUNDINGS)
        models.append({"model": name, "held_out": False, "acc_orig": acc0, "rows": rows,
                       "nncodec": nncodec_points(name)})
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.no_held_out:
        for name, net, norm in held_out_models(train)[:2]:
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            acc0, rows = sweep(net, norm, state, test, HELD_OUT_SNRS, args.seed,
                               roundings=ROUNDINGS)
            models.append({"model": name, "held_out": True, "acc_orig": acc0, "rows": rows,
                           "nncodec": []})
            print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    res = {"environment": environment(torch.device("cpu"), args.seed), "models": models,
           "snrs": list(SNRS),
           "minilm": minilm_rows(args.seed, ROUNDINGS, MINILM_SNRS) if args.minilm else None,
           "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tcq.json", res)
    atomic_write_text(out / "tcq.md", render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
