"""Why the zoo ships reference weights: on what a classifier's training depends besides its seed.

    .venv/bin/python benchmarks/training_determinism.py --out results/training-determinism  # ~5 min

Each of the zoo's four models is trained (`zoo.train.train_model`, seed 0, one epoch over the
first 8,192 training images) in a fresh process under each of these settings, and the sha256
of its weights (`family.delta.base_sha256`, what the bench's records are keyed on) is
compared:

- torch's thread count: 1 (what `runinfo.auto_threads` chooses on 2 cores) and 2 (on 3-4
  cores; 8 threads from 9 cores on);
- the instruction set torch's kernels dispatch to: the processor's own, or AVX2 forced on all
  three libraries that choose one by themselves (`ATEN_CPU_CAPABILITY=avx2` for torch's own
  kernels, `MKL_CBWR=AVX2` for MKL's matrix products, `ONEDNN_MAX_CPU_ISA=AVX2` for oneDNN's
  convolutions and recurrent cells): what another processor would run.

Each setting runs twice, so that a difference is the setting's, not the run's. And the FNN is
trained at the `paper` preset (15 epochs, all 60,000 images; about 20 s) in this machine's
default setting, and compared with the reference weights the package ships (`zoo.reference`):
on the machine that trained them, training reproduces them; elsewhere it need not.

Writes `OUT/training_determinism.json` (with the run's environment) and
`OUT/training_determinism.md` drawn from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vaecompress.family.delta import base_sha256
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.runinfo import environment

MODELS = ("fnn", "cnn", "rnn", "lstm")
LIMIT = 8192
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS: tuple[tuple[str, int, bool], ...] = (
    ("1 thread, own instruction set", 1, False),
    ("2 threads, own instruction set", 2, False),
    ("1 thread, AVX2 forced", 1, True),
    ("2 threads, AVX2 forced", 2, True),
)
REPEATS = 2

def _worker(name: str, threads: int, preset: str) -> None:
    """In the fresh process: train one model, print its digest as a line of JSON."""
    import torch

    from vaecompress.data import load_mnist
    from vaecompress.zoo.train import TrainConfig, preset_config, train_model

    torch.set_num_threads(threads)
    train, _ = load_mnist()
    cfg = (preset_config("paper", name, 0) if preset == "paper"
           else TrainConfig(epochs=1, limit=int(preset)))
    res = train_model(name, train, cfg, progress=False)
    print(json.dumps({"sha256": base_sha256(res.model.state_dict()),
                      "capability": torch.backends.cpu.get_cpu_capability(),
                      "train_s": res.train_s, "config": asdict(cfg)}))


def _train(name: str, threads: int, avx2: bool, preset: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in AVX2}
    if avx2:
        env.update(AVX2)
    out = subprocess.run([sys.executable, __file__, "--worker", name, str(threads), preset],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# What a zoo model's training depends on besides its seed",
        "",
        f"git {env['git_revision']}, torch {env['torch']}, {env['cpu']} ({env['cpu_count']} "
        f"cores), {env['time_utc']}. Made by `benchmarks/training_determinism.py`; "
        f"{results['run_s']:.0f} s. One epoch over the first {LIMIT:,} training images, seed "
        "0, in a fresh process per run; each cell: the first 12 hex digits of the weights' "
        "sha256 in each of the runs (equal digits: the same weights).",
        "",
        "| model | " + " | ".join(s for s, _, _ in SETTINGS) + " |",
        "|---|" + "---|" * len(SETTINGS),
    ]
    for m in MODELS:
        cells = []
        for s, _, _ in SETTINGS:
            runs = [r for r in results["runs"] if r["model"] == m and r["setting"] == s]
            cells.append(" / ".join(r["sha256"][:12] for r in runs))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Kernels dispatched to, by setting: " + "; ".join(
        f"{s}: {next(r['capability'] for r in results['runs'] if r['setting'] == s)}"
        for s, _, _ in SETTINGS) + "."]
    ref = results.get("reference")
    if ref:
        same = "the same weights" if ref["trained"] == ref["shipped"] else "other weights"
        lines += ["", f"The FNN at the `paper` preset trained here ({ref['train_s']:.0f} s): "
                  f"`{ref['trained'][:12]}`; the reference the package ships: "
                  f"`{ref['shipped'][:12]}` ({same})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/training-determinism")
    p.add_argument("--report", action="store_true", help="redraw the .md from the .json")
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "THREADS", "PRESET"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return 0
    out = Path(args.out)
    if args.report:
        results = json.loads((out / "training_determinism.json").read_text())
        atomic_write_text(out / "training_determinism.md", render(results))
        return 0
    t0 = time.perf_counter()
    runs = []
    for m in MODELS:
        for setting, threads, avx2 in SETTINGS:
            for rep in range(REPEATS):
                r = _train(m, threads, avx2, str(LIMIT))
                runs.append({"model": m, "setting": setting, "threads": threads,
                             "avx2_forced": avx2, "repeat": rep, **r})
                print(f"{m:5s} {setting:32s} {r['sha256'][:12]} ({r['capability']})",
                      flush=True)
    from vaecompress.zoo import reference

    entry = next(e for e in reference.entries() if e.model == "fnn")
    trained = _train("fnn", 1, False, "paper")
    results = {
        "environment": environment("cpu", 0), "limit": LIMIT, "avx2_env": AVX2,
        "settings": [{"setting": s, "threads": t, "avx2_forced": a} for s, t, a in SETTINGS],
        "runs": runs,
        "reference": {"trained": trained["sha256"], "train_s": trained["train_s"],
                      "shipped": base_sha256(reference.load(entry))},
        "run_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "training_determinism.json", results)
    atomic_write_text(out / "training_determinism.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
