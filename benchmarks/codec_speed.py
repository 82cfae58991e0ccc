"""Decode and encode time and peak memory of every codec on the same zoo model, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/codec_speed.py --models fnn --out /tmp/X.json

Per model (the zoo model of `--preset`, trained once and cached as `bench` and `reproduce` do)
and per registered codec at its default settings:

- compress once, in a fresh process (this script with `--worker`), as `vaecompress compress`
  does: the codec's own time (`compress_s`, encoding only), the process's wall time and peak
  RSS, the peak RSS while compressing, and for NNCodec its encode time inside its worker and
  its worker's peak RSS. Codecs that train on the task get the zoo's finetuner (MNIST).
  vae-paper trains its VAE for `--vae-paper-epochs` epochs instead of its default 500 with early
  stopping: the decoder's size, and with it the work of decoding, does not depend on how long
  it trained. Compression is timed once; its times are long and not what is compared here.
- decode in this process, `vaecompress.decompress` on the file's bytes (parsing and the
  checksum check included), `--reps` interleaved rounds; for NNCodec also its own decode call
  inside its worker (`decode_s_inside`), the time issue 12 compares against.
- decode as a fresh process, `vaecompress decompress FILE -o OUT`, `--cli-reps` interleaved
  rounds, wall time and peak RSS (NNCodec's worker included), beside the floor every such
  process pays: `python -c "import vaecompress.api, vaecompress.codecs"`.
- correctness: every decode, in this process and the command's output file, must equal bit for
  bit the tensors that compression's own rebuild gave; a mismatch stops the run.

Reported per VAE codec: its decode time over NNCodec's (in-process against NNCodec inside its
worker, and whole process against whole process).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchlib import (
    check_same_source,
    console_script,
    finish_run,
    interleave,
    run_process,
    start_run,
    summary,
    write_json,
)

SCRIPT = Path(__file__).resolve()
FLOOR = "python -c 'import vaecompress.api, vaecompress.codecs'"


def compress_worker(req: dict[str, Any]) -> None:
    """Runs in a fresh process: compress one model with one codec, write the file, the
    compress-time rebuild and a report of times and memory."""
    from vaecompress.runinfo import auto_threads

    auto_threads()  # as the command line does
    import torch

    from vaecompress.api import compress, save
    from vaecompress.codecs import CodecContext, get_codec_class
    from vaecompress.experiments.bench import peak_rss_bytes, peak_rss_reset
    from vaecompress.io import load_weights_file, save_weights_file

    state, _ = load_weights_file(req["model_file"])
    finetune = None
    if get_codec_class(req["codec"]).uses_task:
        from vaecompress.data import load_mnist
        from vaecompress.tasks.mnist import make_finetuner

        train, _ = load_mnist()
        finetune = make_finetuner(req["model"], train, device="cpu", seed=req["seed"])
    ctx = CodecContext(device=torch.device("cpu"), seed=req["seed"], progress=False,
                       label=req["model"], finetune=finetune)
    rss_before = peak_rss_bytes()
    reset = peak_rss_reset()
    t0 = time.perf_counter()
    res = compress(state, req["codec"], ctx=ctx, **req["settings"])
    wall = time.perf_counter() - t0
    peak = peak_rss_bytes() if reset else None
    save(res, req["file"])
    assert res.rebuilt is not None
    save_weights_file(req["rebuilt"], res.rebuilt)
    a = res.accounting
    Path(req["report"]).write_text(json.dumps({
        "compress_s": res.compress_s,
        "compress_and_rebuild_s": wall,
        "encode_s_inside_worker": res.report.get("encode_s_inside_worker"),
        "encode_s_worker_process": res.report.get("encode_s_worker_process"),
        "rss_before_bytes": rss_before,
        "peak_rss_compressing_bytes": peak,
        "children_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(),
        "file_bytes": a.file_bytes,
        "external_bytes": a.external_bytes,
        "ratio_honest": a.ratio_honest,
        "externals": sorted(res.externals),
    }))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    import torch

    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _externals(file: Path, names: list[str]) -> dict[str, bytes]:
    from vaecompress.api import external_path

    return {n: external_path(file, n).read_bytes() for n in names}


class ModelRun:
    """One model's files and the measurements made on them."""

    def __init__(self, name: str, model_file: Path, folder: Path, seed: int) -> None:
        self.name, self.model_file, self.folder, self.seed = name, model_file, folder, seed
        self.outputs = itertools.count()

    def file(self, codec: str) -> Path:
        return self.folder / f"{self.name}-{codec}.vaec"

    def rebuilt(self, codec: str) -> Path:
        return self.folder / f"{self.name}-{codec}.rebuilt.safetensors"

    def compress(self, codec: str, settings: dict[str, Any]) -> dict[str, Any]:
        report = self.folder / f"{self.name}-{codec}.report.json"
        req = {"model": self.name, "model_file": str(self.model_file), "codec": codec,
               "settings": settings, "seed": self.seed, "file": str(self.file(codec)),
               "rebuilt": str(self.rebuilt(codec)), "report": str(report)}
        proc = run_process([sys.executable, str(SCRIPT), "--worker", json.dumps(req)])
        rep = json.loads(report.read_text())
        return rep | {"process_wall_s": proc.wall_s, "process_maxrss_bytes": proc.maxrss_bytes}

    def decode_tasks(self, codecs: dict[str, dict[str, Any]]) -> dict[str, Callable[[], Any]]:
        """In-process decodes of each codec's file from its bytes, checked against the rebuild."""
        from vaecompress.api import decompress
        from vaecompress.io import load_weights_file

        def task(codec: str) -> Callable[[], dict[str, Any]]:
            data = self.file(codec).read_bytes()
            ext = _externals(self.file(codec), codecs[codec]["compress"]["externals"])
            want, _ = load_weights_file(self.rebuilt(codec))

            def once() -> dict[str, Any]:
                stats: dict[str, Any] = {}
                t0 = time.perf_counter()
                state = decompress(data, ext, stats=stats)
                dt = time.perf_counter() - t0
                if not _same(state, want):
                    raise RuntimeError(f"{codec}: decoding differs from the compress-time rebuild")
                return {"s": dt, "inside_s": stats.get("decode_s_inside")}

            return once

        return {c: task(c) for c in codecs}

    def cli_tasks(self, codecs: dict[str, dict[str, Any]]) -> dict[str, Callable[[], Any]]:
        """Fresh `vaecompress decompress` processes, their outputs checked against the rebuild;
        and the floor: a process that imports what decompress needs and does nothing."""
        from vaecompress.io import load_weights_file

        cli = console_script()

        def task(codec: str) -> Callable[[], dict[str, Any]]:
            want, _ = load_weights_file(self.rebuilt(codec))

            def once() -> dict[str, Any]:
                out = self.folder / f"out{next(self.outputs)}.safetensors"
                proc = run_process([*cli, "decompress", str(self.file(codec)), "-o", str(out)])
                got, _ = load_weights_file(out)
                out.unlink()
                if not _same(got, want):
                    raise RuntimeError(f"{codec}: `decompress` wrote other tensors than the "
                                       "compress-time rebuild")
                return {"s": proc.wall_s, "maxrss": proc.maxrss_bytes}

            return once

        def floor() -> dict[str, Any]:
            proc = run_process([sys.executable, "-c", "import vaecompress.api, vaecompress.codecs"])
            return {"s": proc.wall_s, "maxrss": proc.maxrss_bytes}

        return {FLOOR: floor} | {c: task(c) for c in codecs}


def ratios(codecs: dict[str, dict[str, Any]], cli: dict[str, Any]) -> dict[str, Any]:
    """Each VAE codec's decode time over NNCodec's, in-process against inside NNCodec's worker
    and whole process against whole process."""
    if "nncodec" not in codecs:
        return {}
    nnc = codecs["nncodec"]["decode"]
    out = {}
    for c, entry in codecs.items():
        if not c.startswith("vae-"):
            continue
        inproc = entry["decode"]["wall_s"]["median"] / nnc["inside_worker_s"]["median"]
        whole = cli[c]["wall_s"]["median"] / cli["nncodec"]["wall_s"]["median"]
        out[c] = {"decode_vs_nncodec_inside_worker": inproc,
                  "cli_decompress_vs_nncodec_cli": whole,
                  "target_met": inproc <= 1.0 and whole <= 1.0}
    return out


def measure_model(name: str, args: argparse.Namespace, codecs: list[str], train: Any,
                  test: Any, folder: Path) -> dict[str, Any]:
    import torch

    from vaecompress.experiments.common import trained_model
    from vaecompress.zoo.train import preset_config

    tm = trained_model(name, preset_config(args.preset, name, args.seed), train, test,
                       device=torch.device("cpu"), progress=False)
    run = ModelRun(name, tm.path, folder, args.seed)
    params = sum(t.numel() for t in tm.state.values() if t.is_floating_point())
    out: dict[str, Any] = {"model": name, "preset": args.preset, "file": tm.path.name,
                           "params": params, "accuracy": tm.accuracy, "codecs": {}}
    entries: dict[str, dict[str, Any]] = out["codecs"]
    for codec in codecs:
        settings = {"epochs": args.vae_paper_epochs} if codec == "vae-paper" else {}
        print(f"{name}: compressing with {codec} {settings or ''}", flush=True)
        entries[codec] = {"settings": settings, "compress": run.compress(codec, settings)}
    print(f"{name}: decoding in this process, {args.reps} rounds", flush=True)
    inproc = interleave(run.decode_tasks(entries), args.reps, warmup=1)
    for codec, samples in inproc.items():
        dec: dict[str, Any] = {"wall_s": summary([s["s"] for s in samples]),
                               "equal_to_rebuild": True}  # else the run has stopped
        inside = [s["inside_s"] for s in samples if s["inside_s"] is not None]
        if inside:
            dec["inside_worker_s"] = summary(inside)
        entries[codec]["decode"] = dec
    print(f"{name}: `vaecompress decompress` processes, {args.cli_reps} rounds", flush=True)
    cli = interleave(run.cli_tasks(entries), args.cli_reps, warmup=1)
    out["cli_decompress"] = {
        c: {"wall_s": summary([s["s"] for s in samples]),
            "maxrss_bytes": summary([s["maxrss"] for s in samples])}
        | ({} if c == FLOOR else {"equal_to_rebuild": True})  # else the run has stopped
        for c, samples in cli.items()}
    out["ratios"] = ratios(entries, out["cli_decompress"])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    res = start_run("codec_speed", args.argv)
    res["source_checked"] = check_same_source()
    from vaecompress.runinfo import auto_threads

    res["threads"] = auto_threads()
    import vaecompress.codecs as codecs_mod
    from vaecompress.data import load_mnist

    wanted = args.codecs.split(",") if args.codecs else list(codecs_mod.REGISTRY)
    res["skipped"] = {c: why for c in wanted
                      if (why := codecs_mod.get_codec_class(c).available())}
    codecs = [c for c in wanted if c not in res["skipped"]]
    if "nncodec" in codecs:
        from vaecompress.codecs.nncodec_peer import _run_worker, nncodec_python

        with tempfile.TemporaryDirectory() as tmp:
            res["versions"]["nncodec"] = _run_worker(nncodec_python(), "probe", Path(tmp),
                                                     300.0)["versions"]
    res["settings"] = {"reps": args.reps, "cli_reps": args.cli_reps,
                       "vae_paper_epochs": args.vae_paper_epochs, "preset": args.preset,
                       "seed": args.seed}
    train, test = load_mnist()
    res["models"] = {}
    with tempfile.TemporaryDirectory(prefix="codec-speed-") as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            res["models"][name] = measure_model(name, args, codecs, train, test, folder)
    return finish_run(res)


def report(res: dict[str, Any]) -> None:
    print(f"{res['machine']['cpu']}, {res['threads']} thread(s), load "
          f"{res['load_average_start']} -> {res['load_average_end']}")
    for m in res["models"].values():
        print(f"{m['model']} ({m['params']:,} params): decode median in-process / CLI process "
              "(peak RSS), compress once")
        for c, e in m["codecs"].items():
            cli = m["cli_decompress"][c]
            inside = e["decode"].get("inside_worker_s")
            extra = f" (inside worker {inside['median']:.4f} s)" if inside else ""
            print(f"  {c:17s} {e['decode']['wall_s']['median']:8.4f} s{extra}  "
                  f"{cli['wall_s']['median']:6.2f} s ({cli['maxrss_bytes']['median'] / 2**20:.0f}"
                  f" MiB)  compress {e['compress']['compress_s']:7.2f} s "
                  f"({e['compress']['process_maxrss_bytes'] / 2**20:.0f} MiB)")
        print(f"  {FLOOR}: {m['cli_decompress'][FLOOR]['wall_s']['median']:.2f} s")
        for c, r in m["ratios"].items():
            print(f"  {c}: {r['decode_vs_nncodec_inside_worker']:.3f} x NNCodec's decode "
                  f"(inside its worker), {r['cli_decompress_vs_nncodec_cli']:.3f} x as processes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fnn", help="comma-separated zoo models (default fnn)")
    p.add_argument("--codecs", help="comma-separated codecs (default: every registered one)")
    p.add_argument("--preset", default="paper", choices=["quick", "paper"],
                   help="training preset of the zoo models (default paper, as bench --preset "
                   "full uses)")
    p.add_argument("--reps", type=int, default=9, help="in-process decode rounds (default 9)")
    p.add_argument("--cli-reps", type=int, default=5,
                   help="`vaecompress decompress` rounds (default 5)")
    p.add_argument("--vae-paper-epochs", type=int, default=2,
                   help="vae-paper's training epochs (default 2; decoding does not depend on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file to write (default: print only)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        compress_worker(json.loads(args.worker))
        return 0
    args.argv = list(sys.argv[1:] if argv is None else argv)
    res = run(args)
    report(res)
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
