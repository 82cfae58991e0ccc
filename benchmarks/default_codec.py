"""The default codec on models it was not chosen on: fidelity, size and time in one file.

    .venv/bin/python benchmarks/default_codec.py --out results/default   # about 15 minutes

`vaecompress compress MODEL -o FILE` with no codec and no settings, on:

- MNIST classifiers that no default was tuned on, trained here from fixed seeds: `MyMLP` of
  `examples/my_mlp.py` (BatchNorm, inputs in [0, 1]), a LeNet-300-100 (784-300-100-10, inputs
  normalized), and that LeNet with its first layer scaled by 1e-2 and its second by 1e2 (the
  same function; a layer of another scale than the others);
- the four zoo models (the default's SNR was chosen on them and on MiniLM's fidelity set);
- all-MiniLM-L6-v2 when the `minilm` extra is installed, fidelity on its fidelity set and on
  the held-out Austen sentences.

Each model twice: as `vaecompress compress` runs it when it knows the architecture (the model
run on synthetic inputs weighs the tensors) and on the weights alone (a bare file). On the
MNIST models NNCodec is swept over every second qp step from -26 to -12, so that
each default point stands beside NNCodec's smallest file that loses no more accuracy (a point
chosen in hindsight, with the test set); and on every model NNCodec at its own defaults (qp -38
and -32, `NNCODEC_DEFAULTS`), what a user who sets nothing and has no data gets from it. Results:
`OUT/default.json` (with the run's environment) and `OUT/default.md` drawn from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from my_mlp import MyMLP  # noqa: E402  (the user's model of the example)
from my_mlp import train as train_module  # noqa: E402

from vaecompress.api import compress, decompress  # noqa: E402
from vaecompress.codecs import REGISTRY, CodecContext  # noqa: E402
from vaecompress.data import load_mnist, to_tensors  # noqa: E402
from vaecompress.experiments.common import trained_model  # noqa: E402
from vaecompress.files import atomic_write_json, atomic_write_text  # noqa: E402
from vaecompress.runinfo import auto_threads, environment, seed_everything  # noqa: E402
from vaecompress.tasks.mnist import accuracy, mnist_probe  # noqa: E402
from vaecompress.zoo import build_model  # noqa: E402
from vaecompress.zoo.train import ZOO_NORMALIZE, preset_config  # noqa: E402

NNCODEC_QPS = range(-26, -11, 2)  # every second qp step, for time on a shared 2-core CPU
# What NNCodec gives a user who sets nothing: qp -38 is the default of nncodec's
# `compress_model`, -32 that of its `nn.encode` (and of this project's wrapper).
NNCODEC_DEFAULTS = (-38, -32)


class LeNet300(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(),
                                 nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def held_out_models(train: Any) -> list[tuple[str, nn.Module, Any]]:
    """(name, trained network, input normalization) of the models no default was tuned on."""
    out = []
    for name, net, norm, epochs in (("my_mlp", MyMLP(), None, 3),
                                    ("lenet300", LeNet300(), ZOO_NORMALIZE, 5)):
        torch.manual_seed(0)
        net = type(net)()
        x, y = to_tensors(train, normalize=norm)
        train_module(net, x, y, epochs=epochs, seed=0)
        out.append((name, net.eval(), norm))
    scaled = LeNet300()
    scaled.load_state_dict(out[1][1].state_dict())
    with torch.no_grad():
        scaled.net[1].weight.mul_(1e-2)
        scaled.net[1].bias.mul_(1e-2)
        scaled.net[3].weight.mul_(1e2)
    out.append(("lenet300-rescaled", scaled.eval(), ZOO_NORMALIZE))
    return out


def _mnist_point(net: nn.Module, norm: Any, state: dict[str, torch.Tensor], test: Any,
                 acc0: float, codec: str | None, ctx: CodecContext,
                 **settings: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = compress(state, codec, ctx=ctx, **settings)
    seconds = time.perf_counter() - t0
    net.load_state_dict(decompress(res.data, res.externals))
    acc = accuracy(net, test, normalize=norm)
    return {"codec": res.codec, "settings": settings, "ratio_honest":
            res.accounting.ratio_honest, "file_bytes": res.accounting.file_bytes,
            "acc_orig": acc0, "acc_recon": acc, "acc_drop": acc0 - acc, "compress_s": seconds,
            "weights_snr_db": res.fidelity.get("snr_db"),
            "weighting": res.report.get("weighting"), "fallback": res.fallback}


def mnist_rows(name: str, net: nn.Module, norm: Any, test: Any, *, sweep: bool,
               seed: int) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    acc0 = accuracy(net, test, normalize=norm)
    probe = mnist_probe(net, normalize=norm, seed=seed)
    plain = CodecContext(progress=False, seed=seed)
    row: dict[str, Any] = {
        "model": name, "params": sum(v.numel() for v in state.values()), "acc_orig": acc0,
        "default_arch_known": _mnist_point(net, norm, state, test, acc0, None,
                                           CodecContext(progress=False, seed=seed,
                                                        probe=probe)),
        "default_weights_only": _mnist_point(net, norm, state, test, acc0, None, plain),
    }
    net.load_state_dict(state)
    if REGISTRY["nncodec"].available() is None:
        row["nncodec_defaults"] = [_mnist_point(net, norm, state, test, acc0, "nncodec", plain,
                                                qp=q) for q in NNCODEC_DEFAULTS]
        if sweep:
            row["nncodec"] = [_mnist_point(net, norm, state, test, acc0, "nncodec", plain,
                                           qp=q) for q in NNCODEC_QPS]
        net.load_state_dict(state)
    return row


def minilm_rows(seed: int) -> dict[str, Any] | None:
    from vaecompress.zoo import minilm

    if minilm.missing() is not None:
        return None
    from vaecompress.tasks.sentence import SentenceTask

    state = minilm.load_state()
    task = SentenceTask("cpu")
    row: dict[str, Any] = {"model": "all-MiniLM-L6-v2", "params": minilm.PARAMS}
    for key, probe in (("default_arch_known", task.probe(seed=seed)),
                       ("default_weights_only", None)):
        t0 = time.perf_counter()
        res = compress(state, ctx=CodecContext(progress=False, seed=seed, probe=probe))
        seconds = time.perf_counter() - t0
        rebuilt = decompress(res.data, res.externals)
        row[key] = {"codec": res.codec, "ratio_honest": res.accounting.ratio_honest,
                    "file_bytes": res.accounting.file_bytes, "compress_s": seconds,
                    "weights_snr_db": res.fidelity.get("snr_db"),
                    "weighting": res.report.get("weighting"),
                    "fidelity": task.fidelity(rebuilt),
                    "heldout": task.fidelity(rebuilt, eval_set="heldout")}
    if REGISTRY["nncodec"].available() is None:
        row["nncodec_defaults"] = []
        for q in NNCODEC_DEFAULTS:
            t0 = time.perf_counter()
            res = compress(state, "nncodec", ctx=CodecContext(progress=False, seed=seed), qp=q)
            seconds = time.perf_counter() - t0
            rebuilt = decompress(res.data, res.externals)
            row["nncodec_defaults"].append({
                "codec": "nncodec", "settings": {"qp": q},
                "ratio_honest": res.accounting.ratio_honest,
                "file_bytes": res.accounting.file_bytes, "compress_s": seconds,
                "fidelity": task.fidelity(rebuilt),
                "heldout": task.fidelity(rebuilt, eval_set="heldout")})
    return row


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = ["# The default codec on every model", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['device']} with "
             f"{env['torch_threads']} thread(s), {env['time_utc']}. Made by "
             "`benchmarks/default_codec.py`; the default is `vaecompress compress` with no codec "
             "and no settings.", "",
             "| model | tuned on | default, architecture known: ratio (drop, s) | default, "
             "weights only: ratio (drop, s) | nncodec at its defaults, qp -38 / -32: ratio "
             "(drop) | nncodec, smallest file losing no more | nncodec within 0.1 |",
             "|---|---|---|---|---|---|---|"]
    for row in results["mnist"]:
        a, w = row["default_arch_known"], row["default_weights_only"]
        peer = row.get("nncodec", [])

        def best(limit: float, peer: list[dict[str, Any]] = peer) -> str:
            ok = [p for p in peer if p["acc_drop"] <= limit]
            top = max(ok, key=lambda p: p["ratio_honest"]) if ok else None
            return f"{top['ratio_honest']:.1f}x (qp {top['settings']['qp']})" if top else "-"

        lines.append(
            f"| {row['model']} | {'yes' if row['tuned'] else 'no'} | "
            f"{a['ratio_honest']:.1f}x ({a['acc_drop']:+.2f}, {a['compress_s']:.1f}) | "
            f"{w['ratio_honest']:.1f}x ({w['acc_drop']:+.2f}, {w['compress_s']:.1f}) | "
            + (" / ".join(f"{p['ratio_honest']:.1f}x ({p['acc_drop']:+.2f})"
                          for p in row.get("nncodec_defaults", [])) or "-")
            + f" | {best(max(a['acc_drop'], 0.0))} | {best(0.1)} |")
    m = results.get("minilm")
    if m:
        lines += ["", "| all-MiniLM-L6-v2 | ratio | cos (fidelity set) | neighbours kept | "
                  "cos (held-out Austen) | neighbours kept | compress_s |",
                  "|---|---|---|---|---|---|---|"]
        named = [(key.replace("default_", "default, ").replace("_", " "), m[key])
                 for key in ("default_arch_known", "default_weights_only")]
        named += [(f"nncodec at qp {p['settings']['qp']}", p)
                  for p in m.get("nncodec_defaults", [])]
        for label, r in named:
            lines.append(
                f"| {label} | {r['ratio_honest']:.2f}x "
                f"| {r['fidelity']['cos_mean']:.5f} | {100 * r['fidelity']['nn_same']:.1f}% | "
                f"{r['heldout']['cos_mean']:.5f} | {100 * r['heldout']['nn_same']:.1f}% | "
                f"{r['compress_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-minilm", action="store_true", help="skip MiniLM (about 5 minutes)")
    args = p.parse_args(argv)
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    train, test = load_mnist()
    mnist = []
    for name, net, norm in held_out_models(train):
        mnist.append(mnist_rows(name, net, norm, test, sweep=True, seed=args.seed)
                     | {"tuned": False})
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name in ("fnn", "cnn", "rnn", "lstm"):
        tm = trained_model(name, preset_config("paper", name, args.seed), train, test,
                           device=torch.device("cpu"), progress=False)
        net = build_model(name)
        net.load_state_dict(tm.state)
        mnist.append(mnist_rows(name, net.eval(), ZOO_NORMALIZE, test, sweep=False,
                                seed=args.seed) | {"tuned": True})
    results = {"environment": environment(torch.device("cpu"), args.seed), "mnist": mnist,
               "minilm": None if args.no_minilm else minilm_rows(args.seed),
               "nncodec_qps": list(NNCODEC_QPS), "run_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "default.json", results)
    atomic_write_text(out / "default.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
