"""Where the task-aware codec's memory goes on MiniLM (issue 19): the peak resident memory of one
`vae-rd` compression warm-started from the closed form, phase by phase, above the process's
memory once the model, its task and its probe are loaded.

    python benchmarks/warm_memory.py [--snr 14] [--steps 12]   # -> benchmarks/results/

One fresh process per run (`--child`; `--reps` of them, the median reported, the others kept in
the JSON): a thread samples the resident set every 5 ms and charges
it to every phase open at that moment (each phase is a function of the library, wrapped here:
the closed form, the probe, the warm start's model, its steps, checks and export, the latent
coding, the decode check, the fidelity; inside a step, the task's loss (the student's forward,
whose activations autograd keeps), every backward pass and Adam's step). Resident memory
counts what the allocator keeps after a phase frees it, so a phase's figure is the high-water
mark while it ran, not what it alone allocated. The goal (issue 19): under 4 float32 copies of
the parameters plus Adam's two moments, 24 bytes a parameter above the loaded model.

Each point runs under allocator policies (`--allocator`): `cli`, what the command line's
`compress` sets when it starts (`runinfo.release_large_frees`: every block of
`runinfo.COMPRESS_MMAP_THRESHOLD`, 128 KiB, or more its own mapping, given back when freed),
`cli-1mib`, the same at 1 MiB (`runinfo.MMAP_THRESHOLD`, what the other commands set, and
`compress` before 089df63), and `glibc`, glibc's default (its mmap threshold rising
to the largest block freed, so that freed tensors stay in the heap). The policies' processes
are interleaved (round-robin, the order rotated every round), so that their times compare
within the run.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from benchlib import finish_run, start_run, write_json

GOAL_BYTES_PER_PARAM = 24.0
PHASES = [  # (module, attribute, phase)
    ("vaecompress.tasks.probe", "tensor_sensitivities", "probe"),
    ("vaecompress.methods.rd.allocate", "allocate", "closed form"),
    ("vaecompress.methods.rd.vae_rd", "VAERDCodec._feedback", "rounding with feedback"),
    ("vaecompress.methods.rd.model", "RDModel.__init__", "model"),
    ("vaecompress.methods.rd.warm", "_fit_prior", "prior fit"),
    ("vaecompress.methods.rd.warm", "_Run.step", "distillation step"),
    # inside a step (and a check, for the loss; `child` tags the task's loss itself): what
    # holds the memory
    ("torch", "Tensor.backward", "backward"),
    ("torch.optim", "Adam.step", "Adam step"),
    ("vaecompress.methods.rd.warm", "_score", "check"),
    ("vaecompress.methods.rd.warm", "_Run.export", "export"),
    ("vaecompress.methods.rd.latents", "encode_model", "latent coding"),
    ("vaecompress.api", "decoded_record", "decode check"),
    ("vaecompress.api", "weights_fidelity", "fidelity"),
]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Sampler:
    def __init__(self) -> None:
        self.open: list[str] = []
        self.peaks: dict[str, int] = {}
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop:
            r = _rss()
            for tag in {"all", *self.open}:
                self.peaks[tag] = max(self.peaks.get(tag, 0), r)
            time.sleep(0.005)

    def tagged(self, fn: Any, tag: str) -> Any:
        """`fn`, its calls charged to the phase `tag`."""

        def wrapped(*a: Any, **k: Any) -> Any:
            self.open.append(tag)
            try:
                return fn(*a, **k)
            finally:
                self.open.remove(tag)

        return wrapped

    def wrap(self, module: str, attr: str, tag: str) -> None:
        obj: Any = importlib.import_module(module)
        *owners, name = attr.split(".")
        for o in owners:
            obj = getattr(obj, o)
        orig = getattr(obj, name)
        wrapped = self.tagged(orig, tag)
        setattr(obj, name, wrapped)
        if not owners:  # also where a module imported it by name
            for m in list(sys.modules.values()):
                for key, val in list(getattr(m, "__dict__", {}).items()):
                    if val is orig:
                        setattr(m, key, wrapped)


def child(snr: float, steps: int, allocator: str) -> dict[str, Any]:
    import torch

    from vaecompress.api import compress
    from vaecompress.codecs import CodecContext
    from vaecompress.runinfo import COMPRESS_MMAP_THRESHOLD, release_large_frees
    from vaecompress.tasks.sentence import SentenceTask
    from vaecompress.zoo import minilm

    if allocator == "cli":  # what the command line's `compress` sets when it starts
        assert release_large_frees(COMPRESS_MMAP_THRESHOLD)
    elif allocator == "cli-1mib":  # the same policy at the threshold it had before 089df63
        assert ctypes.CDLL("libc.so.6").mallopt(-3, 2**20)  # M_MMAP_THRESHOLD
    torch.set_num_threads(1)
    task = SentenceTask(torch.device("cpu"))
    state = minilm.load_state()
    finetune, probe = task.finetuner(0), task.probe(seed=0)
    n = sum(v.numel() for v in state.values())
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _rss()
    sampler = _Sampler()
    for module, attr, tag in PHASES:
        sampler.wrap(module, attr, tag)
    finetune = dataclasses.replace(finetune, loss=sampler.tagged(finetune.loss, "task loss"))
    t0 = time.perf_counter()
    res = compress(state, "vae-rd", ctx=CodecContext(progress=False, finetune=finetune,
                                                      probe=probe),
                   snr=snr, epochs=steps / finetune.steps_per_epoch)
    wall = time.perf_counter() - t0
    time.sleep(0.05)
    sampler.stop = True
    return {"snr": snr, "steps": steps, "allocator": allocator, "params": n,
            "base_rss_bytes": base,
            "peak_rss_bytes": sampler.peaks["all"], "compress_s": wall,
            "ratio_honest": res.accounting.ratio_honest,
            "added_bytes_per_param": {tag: (peak - base) / n
                                      for tag, peak in sampler.peaks.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snr", type=float, nargs="+", default=[14.0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--reps", type=int, default=3, help="fresh processes per point (median)")
    p.add_argument("--out", default="benchmarks/results/warm_memory.json")
    p.add_argument("--allocator", nargs="+", default=["cli", "cli-1mib", "glibc"],
                   help="cli: large frees given back (runinfo.release_large_frees, as the "
                        "command line runs); cli-1mib: the same at 1 MiB; glibc: its default "
                        "policy")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.snr[0], args.steps, args.allocator[0])))
        return 0
    run = start_run("warm_memory", argv if argv is not None else sys.argv[1:])
    points = []
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    for snr in args.snr:  # fresh processes: resident memory only grows in a process, and the
        # allocator's layout differs a few bytes a parameter; the policies interleaved
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in args.allocator}
        for i in range(args.reps):
            k = i % len(args.allocator)
            for allocator in args.allocator[k:] + args.allocator[:k]:
                out = subprocess.run([sys.executable, __file__, "--child", "--snr", str(snr),
                                      "--steps", str(args.steps), "--allocator", allocator],
                                     check=True, capture_output=True, text=True, env=env)
                runs[allocator].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for allocator, reps in runs.items():
            med = sorted(reps, key=lambda r: r["added_bytes_per_param"]["all"])[len(reps) // 2]
            points.append({**med, "reps": [r["added_bytes_per_param"] for r in reps],
                           "compress_s_reps": [r["compress_s"] for r in reps]})
            print(f"snr {snr}, {allocator}: peak {med['added_bytes_per_param']['all']:.1f} "
                  f"B/param above the loaded model (median of {len(reps)})", file=sys.stderr)
    write_json(args.out, {**finish_run(run), "goal_bytes_per_param": GOAL_BYTES_PER_PARAM,
                          "points": points})
    return 0


if __name__ == "__main__":
    sys.exit(main())
