"""Is any command slower with vaecompress's own thread count than with OMP_NUM_THREADS=1?

    PYTHONPATH=src .venv/bin/python benchmarks/threads.py --out /tmp/threads.json

Runs a few representative `vaecompress` commands, each in fresh processes, under three thread
settings: the defaults (no OMP_NUM_THREADS, MKL_NUM_THREADS or VAECOMPRESS_THREADS: the library
picks, `runinfo.auto_threads`), `OMP_NUM_THREADS=1`, and `VAECOMPRESS_THREADS=2`. Every round
runs every (workload, setting) pair in a rotated order. Per
workload it reports the median wall time of each setting, the ratio defaults / OMP_NUM_THREADS=1,
and a verdict: the defaults are "slower beyond noise" when every run with them is slower than
every OMP_NUM_THREADS=1 run of the same workload (`verdict`).

Workloads (the zoo's cached models of `--preset`; small enough for a few seconds each):
  train-rnn          `train rnn --epochs 1 --limit N`: RNN training steps, then its test accuracy
  evaluate-cnn       `evaluate cnn`: the CNN's forward pass over the 10,000 test images
  vae-paper-fnn      `compress fnn --codec vae-paper --set epochs=1 --set n_variants=N`: one
                     VAE epoch on the FNN's noisy variants
  vae-rd-free-fnn    `compress fnn --codec vae-rd-free --set steps=N`: rate-distortion steps
  decompress-vae-rd-free  `decompress` of a vae-rd-free file of the FNN (made before the rounds)
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchlib import (
    check_same_source,
    clean_env,
    console_script,
    finish_run,
    interleave,
    run_process,
    start_run,
    summary,
    write_json,
)

SETTINGS = {
    "defaults": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "VAECOMPRESS_THREADS=2": {"VAECOMPRESS_THREADS": "2"},
}
PROBE = "from vaecompress.runinfo import auto_threads; print(auto_threads())"


def cached_models(preset: str, names: tuple[str, ...], seed: int) -> dict[str, Path]:
    """The zoo models of `preset` (trained once and cached, as bench and reproduce do)."""
    import torch

    from vaecompress.data import load_mnist
    from vaecompress.experiments.common import trained_model
    from vaecompress.zoo.train import preset_config

    train, test = load_mnist()
    return {n: trained_model(n, preset_config(preset, n, seed), train, test,
                             device=torch.device("cpu"), progress=False).path for n in names}


def workloads(folder: Path, models: dict[str, Path], args: argparse.Namespace,
              ) -> dict[str, Callable[[], list[str]]]:
    """Each workload's argv, made afresh per call (each run writes a new output file)."""
    cli = console_script()
    n = itertools.count()

    def out(suffix: str) -> str:
        return str(folder / f"out{next(n)}{suffix}")

    fnn, cnn = str(models["fnn"]), str(models["cnn"])
    quiet = ["--quiet", "--device", "cpu"]
    return {
        "train-rnn": lambda: [*cli, "train", "rnn", "-o", out(".safetensors"), "--epochs", "1",
                              "--limit", str(args.rnn_limit), *quiet],
        "evaluate-cnn": lambda: [*cli, "evaluate", cnn, *quiet],
        "vae-paper-fnn": lambda: [*cli, "compress", fnn, "-o", out(".vaec"), "--codec",
                                  "vae-paper", "--set", "epochs=1", "--set",
                                  f"n_variants={args.variants}", "--no-eval", *quiet],
        "vae-rd-free-fnn": lambda: [*cli, "compress", fnn, "-o", out(".vaec"), "--codec",
                                    "vae-rd-free", "--set", f"steps={args.rd_steps}",
                                    "--no-eval", *quiet],
        "decompress-vae-rd-free": lambda: [*cli, "decompress",
                                           str(folder / "fnn-vae-rd-free.vaec"), "-o",
                                           out(".safetensors")],
    }


def _wall_s(make: Callable[[], list[str]], env: dict[str, str]) -> float:
    return run_process(make(), env=env).wall_s


def verdict(by_setting: dict[str, list[float]]) -> dict[str, Any]:
    """Defaults / OMP_NUM_THREADS=1 (medians), and "slower beyond noise": every run with the
    defaults slower than every run with OMP_NUM_THREADS=1. Were the two the same, each order of
    the 2n runs would be as likely, and this one has probability 1 / C(2n, n) (1/20 at n=3)."""
    default, one = by_setting["defaults"], by_setting["OMP_NUM_THREADS=1"]
    return {"defaults_over_omp1": summary(default)["median"] / summary(one)["median"],
            "defaults_slower_beyond_noise": min(default) > max(one)}


def _shown(argv: list[str]) -> list[str]:
    """argv as recorded: files by their names, a run's own output as OUT."""
    return [re.sub(r"^out\d+", "OUT", Path(a).name) if a.startswith("/") else a for a in argv]


def run(args: argparse.Namespace) -> dict[str, Any]:
    res = start_run("threads", args.argv)
    res["source_checked"] = check_same_source()
    res["settings"] = {"reps": args.reps, "preset": args.preset, "rnn_limit": args.rnn_limit,
                       "variants": args.variants, "rd_steps": args.rd_steps}
    res["thread_count"] = {
        name: int(run_process([sys.executable, "-c", PROBE], env=clean_env(**env)).stdout)
        for name, env in SETTINGS.items()}
    models = cached_models(args.preset, ("fnn", "cnn"), args.seed)
    with tempfile.TemporaryDirectory(prefix="threads-") as tmp:
        folder = Path(tmp)
        shutil.copy(models["fnn"], folder / "fnn.safetensors")
        run_process([*console_script(), "compress", str(folder / "fnn.safetensors"), "-o",
                     str(folder / "fnn-vae-rd-free.vaec"), "--codec", "vae-rd-free", "--set",
                     f"steps={args.rd_steps}", "--no-eval", "--quiet", "--device", "cpu"],
                    env=clean_env())
        cmds = workloads(folder, models, args)
        tasks = {f"{w} | {s}": partial(_wall_s, make, clean_env(**env))
                 for w, make in cmds.items() for s, env in SETTINGS.items()}
        # No warm-up round: loading the models and making the file have read every input.
        samples = interleave(tasks, args.reps, warmup=0)
        res["workloads"] = {}
        for w, make in cmds.items():
            by_setting = {s: samples[f"{w} | {s}"] for s in SETTINGS}
            res["workloads"][w] = {
                "argv": _shown(make()[1:]),
                "wall_s": {s: summary(v) for s, v in by_setting.items()},
                **verdict(by_setting)}
    res["defaults_never_slower"] = not any(
        w["defaults_slower_beyond_noise"] for w in res["workloads"].values())
    return finish_run(res)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--preset", default="paper", choices=["quick", "paper"],
                   help="training preset of the cached zoo models (default paper)")
    p.add_argument("--rnn-limit", type=int, default=2000,
                   help="training images of train-rnn (default 2000)")
    p.add_argument("--variants", type=int, default=25,
                   help="noisy variants of vae-paper-fnn's training set (default 25)")
    p.add_argument("--rd-steps", type=int, default=60,
                   help="optimizer steps of vae-rd-free-fnn (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    res = run(args)
    print(f"{res['machine']['cpu']}, {res['machine']['usable_cores']} cores, load "
          f"{res['load_average_start']} -> {res['load_average_end']}; torch threads "
          f"{res['thread_count']}; median wall s of {args.reps} rounds:")
    print(f"  {'workload':18s} " + " ".join(f"{s:>22s}" for s in SETTINGS) + "  defaults/omp1")
    for w, r in res["workloads"].items():
        print(f"  {w:18s} " + " ".join(f"{r['wall_s'][s]['median']:22.2f}" for s in SETTINGS)
              + f"  {r['defaults_over_omp1']:.2f}"
              + ("  SLOWER" if r["defaults_slower_beyond_noise"] else ""))
    print(f"defaults never slower beyond noise: {res['defaults_never_slower']}")
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
