"""vae-rd with its prior's first component held at zero, against the same component learned (as
before): the zoo coded alone, and the RNN's fine-tunes against their base.

    .venv/bin/python benchmarks/zero_spike.py --out results/zero-spike   # ~25 minutes

`methods.rd.prior` holds the mean of the mixture's first component (the narrow spike the pruned
latents sit in) at zero. Learned, on the FNN's noisy-digits fine-tune coded against its base, it
drifted to a half-integer, where the noisy latents the rate is trained on cost nothing and the
rounded ones about a bit each, so that a larger `lam` wrote a larger file (`results/families`
before and after). That fine-tune is where the fix was found; the FNN's and the CNN's families
are measured again by `experiments.families`. This benchmark asks what the fix does where it
was not looked at: each zoo model (the quick preset's, as the families' base) coded alone at
`LAMS_ALONE`, and the RNN's three fine-tunes (`experiments.families`' shifted tasks) coded
against their base at `LAMS_DELTA`, each point with the spike held and learned
(`prior.ZERO_SPIKE`), one epoch on the task, seed 0, one thread. Each rebuilt model is judged
by its accuracy on its own test set (a member's: its shifted one). With the `minilm` extra,
all-MiniLM-L6-v2 too (`--models ...,minilm`; about 25 minutes more): `vae-rd` as the MiniLM
bench runs it (warm-started at `MINILM_SNR` dB, distilled on the training sentences for the
bench's budget, the tensors weighed by the probe), judged by the mean cosine and the nearest
neighbours kept on the fidelity set and on the held-out Austen text.

Results: `OUT/zero_spike.json` (with the run's environment) and `OUT/zero_spike.md` (`--report`
redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import vaecompress.methods.rd.prior as prior_mod
from vaecompress.api import compress
from vaecompress.codecs import CodecContext
from vaecompress.data import MnistSplit, load_mnist
from vaecompress.experiments.common import evaluate_state, trained_model
from vaecompress.experiments.families import FamiliesConfig, fine_tunes
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.runinfo import environment, seed_everything
from vaecompress.tasks.mnist import make_finetuner
from vaecompress.zoo.train import preset_config

MODELS = ("fnn", "cnn", "rnn", "lstm")
MINILM = "minilm"
MINILM_SNR = 14.0  # one of the MiniLM bench's points, near a mean cosine of 0.99
DELTA_MODELS = ("rnn",)
LAMS_ALONE = (4.0, 14.0)
LAMS_DELTA = (2.0, 4.0, 7.0)
EPOCHS = 1.0
MODES = {"learned": False, "zero": True}  # the spike's mean: `prior.ZERO_SPIKE`


def point(model: str, state: dict[str, torch.Tensor], base: dict[str, torch.Tensor] | None,
          train: MnistSplit, test: MnistSplit, acc: float, lam: float, zero: bool,
          seed: int) -> dict[str, Any]:
    """One vae-rd coding with the spike held (`zero`) or learned: bytes and accuracy lost."""
    device = torch.device("cpu")
    prior_mod.ZERO_SPIKE = zero
    try:
        t0 = time.perf_counter()
        res = compress(state, "vae-rd", ctx=CodecContext(progress=False, seed=seed),
                       finetune=make_finetuner(model, train, device=device, seed=seed),
                       base=base, lam=lam, epochs=EPOCHS)
        seconds = time.perf_counter() - t0
    finally:
        prior_mod.ZERO_SPIKE = True
    assert res.rebuilt is not None
    got = evaluate_state(model, res.rebuilt, test, device=device)[0]
    return {"lam": lam, "spike": "zero" if zero else "learned",
            "file_bytes": res.accounting.file_bytes, "accuracy": got, "drop": acc - got,
            "compress_s": seconds}


def rows_of(model: str, seed: int, progress: bool) -> list[dict[str, Any]]:
    train, test = load_mnist(None)
    device = torch.device("cpu")
    base = trained_model(model, preset_config("quick", model, seed), train, test,
                         device=device, progress=progress)
    rows = [{"model": model, "member": "the model", "how": "alone",
             "accuracy": base.accuracy,
             "points": [point(model, base.state, None, train, test, base.accuracy, lam, zero,
                              seed)
                        for lam in LAMS_ALONE for zero in MODES.values()]}]
    if progress:
        print(f"{model} alone: done", file=sys.stderr, flush=True)
    if model in DELTA_MODELS:
        cfg = FamiliesConfig(model=model, seed=seed)
        for m in fine_tunes(cfg, base.state, train, test, device, progress):
            acc = evaluate_state(model, m["state"], m["test"], device=device)[0]
            rows.append({"model": model, "member": m["label"], "how": "base", "accuracy": acc,
                         "points": [point(model, m["state"], base.state, m["train"], m["test"],
                                          acc, lam, zero, seed)
                                    for lam in LAMS_DELTA for zero in MODES.values()]})
            if progress:
                print(f"{model} {m['label']} against the base: done", file=sys.stderr,
                      flush=True)
    return rows


def minilm_rows(seed: int, progress: bool) -> list[dict[str, Any]]:
    """all-MiniLM-L6-v2 through `vae-rd` at the MiniLM bench's point `MINILM_SNR`, the spike
    held and learned; [] without the `minilm` extra."""
    from vaecompress.experiments.bench_minilm import DISTILL_EPOCHS, MODEL, MiniLMBench
    from vaecompress.zoo import minilm

    if minilm.missing() is not None:
        return []
    bench = MiniLMBench("minilm", seed=seed, progress=progress)
    state = minilm.load_state()
    finetune, probe = bench.finetuner(MODEL), bench.probe(MODEL)
    points = []
    for zero in MODES.values():
        prior_mod.ZERO_SPIKE = zero
        try:
            t0 = time.perf_counter()
            res = compress(state, "vae-rd", ctx=CodecContext(progress=progress, seed=seed,
                                                             probe=probe),
                           finetune=finetune, snr=MINILM_SNR, epochs=DISTILL_EPOCHS)
            seconds = time.perf_counter() - t0
        finally:
            prior_mod.ZERO_SPIKE = True
        assert res.rebuilt is not None
        points.append({"snr": MINILM_SNR, "spike": "zero" if zero else "learned",
                       "file_bytes": res.accounting.file_bytes, "compress_s": seconds,
                       **bench.fidelity(MODEL, res.rebuilt)})
        if progress:
            print(f"minilm, spike {points[-1]['spike']}: done", file=sys.stderr, flush=True)
    return [{"model": MODEL, "member": "the model", "how": "alone", "points": points}]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over every (row, lam) of the MNIST models: the geometric mean of the bytes held /
    learned, the mean drop held minus learned, and the rows where a larger lam wrote a larger
    file, per spike."""
    ratios, ddrop = [], []
    growing: dict[str, list[str]] = {mode: [] for mode in MODES}
    for r in rows:
        if "lam" not in r["points"][0]:
            continue
        for lam in sorted({p["lam"] for p in r["points"]}):
            pair = {p["spike"]: p for p in r["points"] if p["lam"] == lam}
            ratios.append(pair["zero"]["file_bytes"] / pair["learned"]["file_bytes"])
            ddrop.append(pair["zero"]["drop"] - pair["learned"]["drop"])
        for mode in MODES:
            sizes = [p["file_bytes"] for p in sorted(r["points"], key=lambda p: p["lam"])
                     if p["spike"] == mode]
            if any(b > a for a, b in itertools.pairwise(sizes)):
                growing[mode].append(f"{r['model']} {r['member']} ({r['how']})")
    if not ratios:  # MiniLM alone
        return {"points": 0, "larger_lam_larger_file": growing}
    return {"bytes_ratio_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)),
            "bytes_ratio_min": min(ratios), "bytes_ratio_max": max(ratios),
            "drop_difference_mean": sum(ddrop) / len(ddrop), "points": len(ratios),
            "larger_lam_larger_file": growing}


def render(results: dict[str, Any]) -> str:
    env, s = results["environment"], results["summary"]
    mnist = [r for r in results["rows"] if "lam" in r["points"][0]]
    lines = [
        "# vae-rd's prior: the spike held at zero, or learned", "",
        f"Made by `{results['command']}` at git {env.get('git_revision')}, "
        f"torch {env.get('torch')}, {env.get('time_utc')}; {results['run_s']:.0f} s; seed "
        f"{env.get('seed')}."
        + (f" MNIST: vae-rd, {EPOCHS:g} epoch on the task; the quick preset's zoo models coded "
           "alone, the RNN's fine-tunes against it. Bytes: the file (given the base against "
           "it); drop: accuracy points lost on the model's own test set." if mnist else ""),
        ""]
    if s["points"]:
        lines += [
            f"Over {s['points']} pairs: the file with the spike held is "
            f"{s['bytes_ratio_geomean']:.3f} times the file with it learned (geometric mean; "
            f"{s['bytes_ratio_min']:.3f} to {s['bytes_ratio_max']:.3f}), at "
            f"{s['drop_difference_mean']:+.2f} points of drop on average. A larger `lam` wrote "
            "a larger file: "
            + "; ".join(f"{mode}: {', '.join(g) if g else 'nowhere'}"
                        for mode, g in s["larger_lam_larger_file"].items()) + ".", "",
            "| model | member | coded | lam | learned: bytes (drop) | held at zero: bytes "
            "(drop) | held / learned |", "|---|---|---|---:|---:|---:|---:|"]
    for r in mnist:
        for lam in sorted({p["lam"] for p in r["points"]}):
            pair = {p["spike"]: p for p in r["points"] if p["lam"] == lam}
            a, b = pair["learned"], pair["zero"]
            lines.append(f"| {r['model']} | {r['member']} | {r['how']} | {lam:g} | "
                         f"{a['file_bytes']:,} ({a['drop']:+.2f}) | "
                         f"{b['file_bytes']:,} ({b['drop']:+.2f}) | "
                         f"{b['file_bytes'] / a['file_bytes']:.3f} |")
    for r in results["rows"]:
        if r in mnist:
            continue
        lines += ["", f"{r['model']}, `vae-rd` warm-started at {r['points'][0]['snr']:g} dB and "
                  "distilled for the MiniLM bench's budget:", "",
                  "| spike | bytes | mean cosine / neighbours kept, fidelity set | on the "
                  "held-out text | compress_s |", "|---|---:|---|---|---:|"]
        for p in r["points"]:
            lines.append(f"| {p['spike']} | {p['file_bytes']:,} | {p['cos_mean']:.5f} / "
                         f"{100 * p['nn_same']:.1f}% | {p['heldout_cos_mean']:.5f} / "
                         f"{100 * p['heldout_nn_same']:.1f}% | {p['compress_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/zero-spike")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="redraw OUT/zero_spike.md from OUT/zero_spike.json, run nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        src = out / "zero_spike.json"
        if not src.is_file():
            print(f"zero_spike.py: no results at {src}: run without --report first",
                  file=sys.stderr)
            return 2
        atomic_write_text(out / "zero_spike.md", render(json.loads(src.read_text())))
        return 0
    wanted = [m for m in args.models.split(",") if m]
    if bad := [m for m in wanted if m not in (*MODELS, MINILM)]:
        print(f"zero_spike.py: unknown model(s) {', '.join(bad)}; models: "
              f"{', '.join((*MODELS, MINILM))}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    seed_everything(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [r for model in wanted if model != MINILM
            for r in rows_of(model, args.seed, not args.quiet)]
    if MINILM in wanted:
        rows += minilm_rows(args.seed, not args.quiet)
    results = {"environment": environment("cpu", args.seed),
               "command": "benchmarks/zero_spike.py " + " ".join(argv or sys.argv[1:]),
               "rows": rows, "summary": summary(rows), "run_s": time.perf_counter() - t0}
    atomic_write_json(out / "zero_spike.json", results)
    atomic_write_text(out / "zero_spike.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
