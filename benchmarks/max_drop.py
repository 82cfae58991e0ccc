"""`--max-drop`: the smallest file that loses at most D on the task, chosen on validation data,
judged on data the search never read.

    .venv/bin/python benchmarks/max_drop.py --out results/max-drop   # about 40 minutes

`vaecompress compress MODEL --model ... --max-drop D` searches the codec's fidelity knob for the
smallest file whose rebuilt model loses at most D on the task's validation data
(`vaecompress.target`): for MNIST classifiers, points of accuracy on 20,000 training images; for
MiniLM, 1 - mean cosine on 500 sentences of the training set (technical documentation). This
benchmark runs that search, as the command line does, for the default codec (`vae-rd-free`,
the architecture known) and for NNCodec (its `qp`, every step, on the same validation data), at
D = 0.1, 0.5 and 1 point on the MNIST classifiers, 0.001 and 0.01 of cosine on MiniLM, and judges
each chosen file on the test set (MNIST) and on the fidelity set and Jane Austen's held-out
sentences (MiniLM), which no search and no default read.

Models: the held-out classifiers of `default_codec.py` (MyMLP, a LeNet-300-100 and that LeNet
with a layer rescaled), which nothing was tuned on, and the four zoo models (paper preset), on
which the codec's defaults were chosen. Both codecs choose by the same rule on the same data,
so the comparison is of what each gives a user who says how much may be lost, not of points
picked in hindsight on the test set.

Results: `OUT/max_drop.json` (with the run's environment) and `OUT/max_drop.md` drawn from it
(`--report` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from default_codec import held_out_models  # this folder's benchmark
from torch import nn

from vaecompress.codecs import REGISTRY, CodecContext
from vaecompress.data import load_mnist
from vaecompress.errors import UserError
from vaecompress.experiments.common import trained_model
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.target import compress_within
from vaecompress.tasks.mnist import accuracy, mnist_probe, mnist_validation
from vaecompress.zoo import build_model
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config

POINTS = (0.1, 0.5, 1.0)  # accuracy points an MNIST classifier may lose
COSINE = (0.001, 0.01)  # 1 - mean cosine MiniLM's embeddings may lose
CODECS = ("vae-rd-free", "nncodec")


def _point(res: Any, seconds: float) -> dict[str, Any]:
    t = res.report["target"]
    return {"codec": res.codec, "knob": t["knob"], "value": t["value"],
            "validation_drop": t["drop"], "tries": t["tries"], "all": t["all"],
            "file_bytes": res.accounting.file_bytes, "ratio_honest": res.accounting.ratio_honest,
            "compress_s": seconds}


def _search(state: Mapping[str, torch.Tensor], codec: str, d: float, val: Any,
            ctx: CodecContext) -> tuple[Any, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        res = compress_within(state, codec, max_drop=d, validation=val, ctx=ctx)
    except UserError as e:  # no setting keeps it: recorded, not hidden
        return None, {"codec": codec, "error": str(e)}
    return res, _point(res, time.perf_counter() - t0)


def mnist_row(name: str, net: nn.Module, norm: Any, train: Any, test: Any, *, tuned: bool,
              seed: int) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    acc0 = accuracy(net, test, normalize=norm)

    def network(st: Mapping[str, torch.Tensor]) -> nn.Module:
        net.load_state_dict(dict(st))
        return net

    val = mnist_validation(network, train, seed=seed, normalize=norm)
    ctxs = {"vae-rd-free": CodecContext(progress=False, seed=seed,
                                        probe=mnist_probe(net, normalize=norm, seed=seed)),
            "nncodec": CodecContext(progress=False, seed=seed)}
    points = []
    for codec in CODECS:
        if REGISTRY[codec].available() is not None:
            continue
        for d in POINTS:
            res, point = _search(state, codec, d, val, ctxs[codec])
            if res is not None:
                point["test_drop"] = acc0 - accuracy(network(res.rebuilt), test, normalize=norm)
            points.append({"max_drop": d, **point})
            print(f"  {name} {codec} --max-drop {d}: "
                  + (f"{point['knob']} {point['value']:g}, {point['ratio_honest']:.1f}x, test "
                     f"drop {point['test_drop']:+.2f}" if res is not None else point["error"]),
                  flush=True)
    net.load_state_dict(state)
    return {"model": name, "tuned": tuned, "params": sum(v.numel() for v in state.values()),
            "acc_orig": acc0, "validation": val.data, "points": points}


def minilm_row(seed: int) -> dict[str, Any] | None:
    from vaecompress.zoo import minilm

    if minilm.missing() is not None:
        return None
    from vaecompress.tasks.sentence import SentenceTask

    state = minilm.load_state()
    task = SentenceTask("cpu")
    val = task.validation(seed=seed)
    ctxs = {"vae-rd-free": CodecContext(progress=False, seed=seed, probe=task.probe(seed=seed)),
            "nncodec": CodecContext(progress=False, seed=seed)}
    points = []
    for codec in CODECS:
        if REGISTRY[codec].available() is not None:
            continue
        for d in COSINE:
            res, point = _search(state, codec, d, val, ctxs[codec])
            if res is not None:
                point["fidelity"] = task.fidelity(res.rebuilt)
                point["heldout"] = task.fidelity(res.rebuilt, eval_set="heldout")
            points.append({"max_drop": d, **point})
            print(f"  minilm {codec} --max-drop {d}: "
                  + (f"{point['knob']} {point['value']:g}, {point['ratio_honest']:.2f}x, "
                     f"held-out cosine {point['heldout']['cos_mean']:.5f}"
                     if res is not None else point["error"]), flush=True)
    return {"model": "all-MiniLM-L6-v2", "params": minilm.PARAMS, "validation": val.data,
            "points": points}


def _find(points: list[dict[str, Any]], codec: str, d: float) -> dict[str, Any] | None:
    return next((p for p in points if p["codec"] == codec and p["max_drop"] == d), None)


def _cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    if "error" in p:
        return "no setting keeps it" if "keeps it" in p["error"] else f"error: {p['error']}"
    return (f"{p['ratio_honest']:.1f}x ({p['knob']} {p['value']:g}; {p['validation_drop']:+.2f}"
            f" / {p['test_drop']:+.2f}; {p['tries']} tries, {p['compress_s']:.0f} s)")


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = ["# `--max-drop`: chosen on validation data, judged on the test set", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['device']} with "
             f"{env['torch_threads']} thread(s), {env['time_utc']}. Made by "
             "`benchmarks/max_drop.py`. Each cell: the ratio of the file the search chose (the "
             "knob's value; the drop on the validation data / on the test set; the files "
             "tried; the whole search's seconds). The validation data: "
             f"{results['mnist'][0]['validation'] if results['mnist'] else '-'}.", "",
             "| model | tuned on | D (points) | vae-rd-free | nncodec | ratio, ours / nncodec "
             "| test drop within D (ours / nncodec) |", "|---|---|---|---|---|---|---|"]
    for row in results["mnist"]:
        for d in POINTS:
            ours, peer = (_find(row["points"], c, d) for c in CODECS)
            ratio = (f"{ours['ratio_honest'] / peer['ratio_honest']:.2f}"
                     if ours and peer and "error" not in ours and "error" not in peer else "-")
            within = " / ".join(
                "-" if p is None or "error" in p else ("yes" if p["test_drop"] <= d else "no")
                for p in (ours, peer))
            lines.append(
                f"| {row['model']} | {'yes' if row['tuned'] else 'no'} | {d:g} | "
                f"{_cell(ours)} | {_cell(peer)} | {ratio} | {within} |")
    m = results.get("minilm")
    if m:
        lines += ["", f"all-MiniLM-L6-v2, the drop in mean cosine; validation data: "
                  f"{m['validation']}. Judged on the fidelity set (Python documentation) and on "
                  "Jane Austen's held-out sentences (cosine, neighbours kept).", "",
                  "| D (cosine) | codec | ratio | chosen | validation drop | fidelity set: cos, "
                  "neighbours | held-out: cos, neighbours | tries | compress_s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in COSINE:
            for codec in CODECS:
                p = _find(m["points"], codec, d)
                if p is None:
                    continue
                if "error" in p:
                    lines.append(f"| {d:g} | {codec} | no setting keeps it | | | | | | |")
                    continue
                f, h = p["fidelity"], p["heldout"]
                lines.append(
                    f"| {d:g} | {codec} | {p['ratio_honest']:.2f}x | {p['knob']} {p['value']:g} "
                    f"| {p['validation_drop']:.5f} | {f['cos_mean']:.5f}, "
                    f"{100 * f['nn_same']:.1f}% | {h['cos_mean']:.5f}, {100 * h['nn_same']:.1f}% "
                    f"| {p['tries']} | {p['compress_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/max-drop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-minilm", action="store_true", help="skip MiniLM (about 15 minutes)")
    p.add_argument("--report", action="store_true", help="redraw OUT/max_drop.md from the JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        results = json.loads((out / "max_drop.json").read_text())
        atomic_write_text(out / "max_drop.md", render(results))
        return 0
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    mnist = [mnist_row(name, net, norm, train, test, tuned=False, seed=args.seed)
             for name, net, norm in held_out_models(train)]
    for name in ("fnn", "cnn", "rnn", "lstm"):
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        mnist.append(mnist_row(name, net.eval(), ZOO_NORMALIZE, train, test, tuned=True,
                               seed=args.seed))
    results = {"environment": environment(torch.device("cpu"), args.seed),
               "points": list(POINTS), "cosine": list(COSINE), "mnist": mnist,
               "minilm": None if args.no_minilm else minilm_row(args.seed),
               "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "max_drop.json", results)
    atomic_write_text(out / "max_drop.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
