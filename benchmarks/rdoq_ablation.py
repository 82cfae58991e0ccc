"""RDOQ against rounding to nearest in `vae-rd-free`: the same SNR, fewer bytes, and what it does
to accuracy; the ablation of issue 18's rate-distortion optimized rounding (`methods/rd/rdoq.py`).

    PYTHONPATH=src .venv/bin/python benchmarks/rdoq_ablation.py --minilm   # -> results/rdoq
    ... --minilm       # adds MiniLM: bytes at a few SNRs, the held-out cosine (~1 min a point)

- the zoo (fnn, cnn, rnn, lstm at the paper's config, as `--preset datafree` trains them): a
  sweep of `snr` with `rounding=nearest` and `rounding=rdoq`, each with the Fisher probe
  (`weighting=auto`, the architecture known) and on the weights alone (`weighting=relative`),
  accuracy of the rebuilt model on the MNIST test set; the best ratio within 0.1 / 0.5 / 1
  point beside NNCodec's, read from the committed `results/datafree/records` (not rerun);
- models nothing was tuned on (`benchmarks/default_codec.py`'s MyMLP and LeNet-300-100);
- the price of a bit: RDOQ at 0.5x, 1x and 2x the derived `LAMBDA`, bytes at the same SNR on
  the weights alone (the derived value should be the smallest of the three);
- with `--minilm`: MiniLM's bytes and compression time at a few SNRs, and the mean cosine and
  nearest neighbours kept on the held-out sentences.

Writes `OUT/rdoq.json` (with the run's environment and git revision) and `OUT/rdoq.md` drawn
from it.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_codec import held_out_models  # noqa: E402

from vaecompress.api import compress, decompress  # noqa: E402
from vaecompress.codecs import CodecContext  # noqa: E402
from vaecompress.data import load_mnist  # noqa: E402
from vaecompress.experiments.common import trained_model  # noqa: E402
from vaecompress.files import atomic_write_json, atomic_write_text  # noqa: E402
from vaecompress.methods.rd.allocate import allocate, relative_sensitivities  # noqa: E402
from vaecompress.methods.rd.latents import encode_model  # noqa: E402
from vaecompress.methods.rd.rdoq import LAMBDA  # noqa: E402
from vaecompress.runinfo import auto_threads, environment, seed_everything  # noqa: E402
from vaecompress.tasks.mnist import accuracy, mnist_probe  # noqa: E402
from vaecompress.zoo import build_model  # noqa: E402
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config  # noqa: E402

ZOO = ("fnn", "cnn", "rnn", "lstm")
SNRS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 30.0)
HELD_OUT_SNRS = (4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
LEVELS = (0.1, 0.5, 1.0)  # accuracy points lost
ROUNDINGS = ("nearest", "rdoq")
WEIGHTINGS = ("auto", "relative")
LAMBDA_SCALES = (0.5, 1.0, 2.0)
MINILM_SNRS = (30.0, 22.0, 14.0)
NNCODEC_RECORDS = ROOT / "results" / "datafree" / "records"


def sweep(net: torch.nn.Module, norm: Any, state: dict[str, torch.Tensor], test: Any,
          snrs: tuple[float, ...], seed: int,
          roundings: tuple[str, ...] = ROUNDINGS) -> tuple[float, list[dict[str, Any]]]:
    acc0 = accuracy(net, test, normalize=norm)
    probe = mnist_probe(net, normalize=norm, seed=seed)
    rows = []
    for weighting in WEIGHTINGS:
        ctx = CodecContext(progress=False, seed=seed,
                           probe=probe if weighting == "auto" else None)
        for rounding in roundings:
            for snr in snrs:
                t0 = time.perf_counter()
                res = compress(state, "vae-rd-free", ctx=ctx, snr=snr, weighting=weighting,
                               rounding=rounding)
                seconds = time.perf_counter() - t0
                net.load_state_dict(decompress(res.data, res.externals))
                acc = accuracy(net, test, normalize=norm)
                rows.append({"weighting": weighting, "rounding": rounding, "snr": snr,
                             "snr_db": res.report["snr_db"], "file_bytes":
                             res.accounting.file_bytes, "ratio_honest":
                             res.accounting.ratio_honest, "acc_recon": acc,
                             "acc_drop": acc0 - acc, "compress_s": seconds})
    net.load_state_dict(state)
    return acc0, rows


def lambda_rows(state: dict[str, torch.Tensor], snrs: tuple[float, ...]) -> list[dict[str, Any]]:
    arrays = [v.float().numpy() for v in state.values() if v.is_floating_point() and v.numel()]
    sens = relative_sensitivities(arrays)
    rows = []
    for snr in snrs:
        near = allocate(arrays, sens, snr=snr)
        row: dict[str, Any] = {"snr": snr, "nearest": len(encode_model(near.ints, near.steps))}
        for scale in LAMBDA_SCALES:
            a = allocate(arrays, sens, snr=snr, rounding="rdoq", lam=scale * LAMBDA)
            row[f"rdoq_x{scale:g}"] = len(encode_model(a.ints, a.steps))
        rows.append(row)
    return rows


def nncodec_points(model: str) -> list[dict[str, Any]]:
    out = []
    for f in sorted(NNCODEC_RECORDS.glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("codec") == "nncodec" and r.get("model") == model:
            out.append({"qp": r["settings"]["qp"], "ratio_honest": r["ratio_honest"],
                        "acc_drop": r["acc_drop"], "git_revision": r.get("git_revision")})
    return out


def best(points: list[dict[str, Any]], level: float) -> float | None:
    ok = [p["ratio_honest"] for p in points if p["acc_drop"] <= level]
    return max(ok) if ok else None


def minilm_rows(seed: int, roundings: tuple[str, ...] = ROUNDINGS,
                snrs: tuple[float, ...] = MINILM_SNRS) -> dict[str, Any] | None:
    from vaecompress.zoo import minilm

    if minilm.missing() is not None:
        return None
    from vaecompress.tasks.sentence import SentenceTask

    state = minilm.load_state()
    task = SentenceTask("cpu")
    probe = task.probe(seed=seed)
    rows = []
    for snr in snrs:
        for rounding in roundings:
            t0 = time.perf_counter()
            res = compress(state, "vae-rd-free", ctx=CodecContext(progress=False, seed=seed,
                                                                  probe=probe),
                           snr=snr, rounding=rounding)
            seconds = time.perf_counter() - t0
            rebuilt = decompress(res.data, res.externals)
            held = task.fidelity(rebuilt, eval_set="heldout")
            fid = task.fidelity(rebuilt)
            rows.append({"snr": snr, "rounding": rounding, "snr_db": res.report["snr_db"],
                         "cos_mean": fid["cos_mean"], "nn_same": fid["nn_same"],
                         "file_bytes": res.accounting.file_bytes,
                         "ratio_honest": res.accounting.ratio_honest, "compress_s": seconds,
                         "heldout_cos_mean": held["cos_mean"], "heldout_nn_same":
                         held["nn_same"]})
            print(f"minilm {snr:g} dB {rounding}: {rows[-1]['ratio_honest']:.3f}x "
                  f"cos {held['cos_mean']:.5f} ({seconds:.0f} s)", flush=True)
    return {"rows": rows}


def equal_bytes_delta(rows: list[dict[str, Any]], weighting: str, max_snr: float = 16.0,
                      max_drop: float = 2.0, other: str = "rdoq") -> float | None:
    """The mean over `other`'s points (RDOQ's) at `snr <= max_snr` of its accuracy drop minus
    nearest rounding's at the same file size (nearest's drop interpolated linearly in log
    bytes between its two points around it), where nearest's drop there is at most `max_drop`
    points (below, the models fall off a cliff, and one point would outweigh the rest): < 0
    where `other` keeps more accuracy per byte."""
    near = sorted((math.log(p["file_bytes"]), p["acc_drop"]) for p in rows
                  if p["weighting"] == weighting and p["rounding"] == "nearest")
    diffs = []
    for p in rows:
        if p["weighting"] != weighting or p["rounding"] != other or p["snr"] > max_snr:
            continue
        x = math.log(p["file_bytes"])
        for (x0, y0), (x1, y1) in itertools.pairwise(near):
            if x0 <= x <= x1:
                y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                if y <= max_drop:
                    diffs.append(p["acc_drop"] - y)
                break
    return sum(diffs) / len(diffs) if diffs else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def _delta(rows: list[dict[str, Any]], weighting: str) -> str:
    d = equal_bytes_delta(rows, weighting)
    return "-" if d is None else f"{d:+.2f}"


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# RDOQ against rounding to nearest (vae-rd-free)", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['device']}, "
             f"{env['time_utc']}. Made by `benchmarks/rdoq_ablation.py`. NNCodec's points are "
             "the committed `results/datafree/records` (not rerun).", "",
             "## Best honest ratio within 0.1 / 0.5 / 1 point of the original accuracy", "",
             "The last column: RDOQ's accuracy drop minus nearest rounding's at the same file "
             "size, averaged over RDOQ's points up to 16 dB where nearest's drop at that "
             "size is at most 2 points (negative: RDOQ keeps more accuracy per byte; one point "
             "of the sweep is one file, so differences of a tenth of a "
             "point are within the test set's noise).", "",
             "| model | tuned on | weighting | nearest | rdoq | rdoq / nearest | nncodec | "
             "drop, rdoq - nearest at equal bytes |", "|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for w in WEIGHTINGS:
            pts = {r: [p for p in m["rows"] if p["weighting"] == w and p["rounding"] == r]
                   for r in ROUNDINGS}
            near = [best(pts["nearest"], lv) for lv in LEVELS]
            rdoq = [best(pts["rdoq"], lv) for lv in LEVELS]
            gain = [f"{b / a:.2f}" if a and b else "-" for a, b in zip(near, rdoq, strict=True)]
            nn = [best(m["nncodec"], lv) for lv in LEVELS] if m["nncodec"] else [None] * 3
            lines.append(
                f"| {m['model']} | {'no' if m['held_out'] else 'yes'} | "
                f"{'fisher' if w == 'auto' else 'weights only'} | "
                f"{' / '.join(map(_fmt, near))} | {' / '.join(map(_fmt, rdoq))} | "
                f"{' / '.join(gain)} | {' / '.join(map(_fmt, nn))} | {_delta(m['rows'], w)} |")
    lines += ["", "## Bytes at the same SNR (weights only), every model", "",
              "| model | snr | nearest B | rdoq B | rdoq / nearest |", "|---|---|---|---|---|"]
    for m in res["models"]:
        by = {(p["rounding"], p["snr"]): p for p in m["rows"] if p["weighting"] == "relative"}
        for snr in sorted({p["snr"] for p in m["rows"]}):
            a, b = by[("nearest", snr)], by[("rdoq", snr)]
            lines.append(f"| {m['model']} | {snr:g} | {a['file_bytes']:,} | {b['file_bytes']:,}"
                         f" | {b['file_bytes'] / a['file_bytes']:.3f} |")
    lines += ["", "## The price of a bit: bytes at the same SNR (weights only) for RDOQ at "
              "0.5x, 1x and 2x the derived LAMBDA = ln 2 / 6", "",
              "| model | snr | nearest | " + " | ".join(f"rdoq x{s:g}" for s in LAMBDA_SCALES)
              + " |", "|---|---|---|" + "---|" * len(LAMBDA_SCALES)]
    for name, rows in res["lambda"].items():
        for r in rows:
            lines.append(f"| {name} | {r['snr']:g} | {r['nearest']:,} | " + " | ".join(
                f"{r[f'rdoq_x{s:g}']:,}" for s in LAMBDA_SCALES) + " |")
    if res.get("minilm"):
        lines += ["", "## all-MiniLM-L6-v2 (Fisher probe), held-out Austen sentences", "",
                  "| snr | rounding | ratio_honest | reached dB | cos mean | neighbours kept | "
                  "compress_s |", "|---|---|---|---|---|---|---|"]
        for r in res["minilm"]["rows"]:
            lines.append(f"| {r['snr']:g} | {r['rounding']} | {r['ratio_honest']:.3f}x | "
                         f"{r['snr_db']:.3f} | {r['heldout_cos_mean']:.5f} | "
                         f"{100 * r['heldout_nn_same']:.1f}% | {r['compress_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/rdoq")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="*", default=list(ZOO))
    p.add_argument("--no-held-out", action="store_true", help="skip MyMLP and LeNet-300-100")
    p.add_argument("--minilm", action="store_true", help="add MiniLM (about 1 min a point)")
    p.add_argument("--render", action="store_true", help="only redraw OUT/rdoq.md from its JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        atomic_write_text(out / "rdoq.md", render(json.loads((out / "rdoq.json").read_text())))
        return 0
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    models, lam = [], {}
    for name in args.models:
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        acc0, rows = sweep(net.eval(), ZOO_NORMALIZE, tm.state, test, SNRS, args.seed)
        models.append({"model": name, "held_out": False, "acc_orig": acc0, "rows": rows,
                       "nncodec": nncodec_points(name)})
        lam[name] = lambda_rows(tm.state, (4.0, 8.0, 16.0, 30.0))
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.no_held_out:
        for name, net, norm in held_out_models(train)[:2]:
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            acc0, rows = sweep(net, norm, state, test, HELD_OUT_SNRS, args.seed)
            models.append({"model": name, "held_out": True, "acc_orig": acc0, "rows": rows,
                           "nncodec": []})
            lam[name] = lambda_rows(state, (4.0, 8.0, 16.0, 30.0))
            print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    res = {"environment": environment(torch.device("cpu"), args.seed), "models": models,
           "lambda": lam, "lambda_derived": LAMBDA, "snrs": list(SNRS),
           "minilm": minilm_rows(args.seed) if args.minilm else None,
           "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "rdoq.json", res)
    atomic_write_text(out / "rdoq.md", render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
