"""Scaling: compression and decompression time and peak memory against the number of parameters.

    PYTHONPATH=src .venv/bin/python benchmarks/scaling.py --out benchmarks/results/scaling-cpu.json

Models, from 54k to 50M parameters:
  rnn, fnn       the paper's RNN (54,538) and FNN (185,300) at their seeded initial weights
                 (time and memory do not depend on the values; no MNIST needed)
  minilm         all-MiniLM-L6-v2 (22,713,216, real weights; needs the extra `minilm`, else
                 skipped)
  synthetic-50m  50,380,800 float32: 12 blocks of four 1024 x 1024 matrices and their biases,
                 Student-t values (5 degrees of freedom, heavy-tailed like trained weights)
                 scaled to std 0.02-0.05 per tensor, seeded
Codecs, each at a fixed budget so that its time measures its work per parameter:
  zstd (level 19), kmeans (bits 4), vae-rd-free (20 whole-model steps instead of 1500),
  vae-paper (1 epoch over 10 noisy variants, batch 512; its default is up to 500 epochs over
  100), nncodec (qp -32; skipped when its venv is missing).

Each (model, codec) is compressed in a fresh process (this script with `--worker`), which writes
the file and its externals to a temp folder, then decompressed from those bytes in another
fresh process. A worker reports its own resident memory, read from /proc/self/status: `base`
(interpreter, torch and vaecompress imported), `loaded` (the model's tensors made; for
decompression the file read) and `peak` (the kernel's high-water mark VmHWM, reset just before
the call), the call's wall time, and the peak RSS of any child it waited for (NNCodec codes in
a process of its own venv).

Reported per codec: time and peak memory per million parameters at each size, the log-log
slope of time and of added memory against parameters between the two largest sizes and over
all sizes (1 is linear), and issue 12's memory target: peak memory above `base` during
compression (the input tensors included) under 3 x the float32 parameters plus the VAE's own
training state (vae-paper: the VAE's weights, gradients and two Adam moments; vae-rd-free: the
per-weight latents, their gradients and two Adam moments; the other codecs: none).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("rnn", "fnn", "minilm", "synthetic-50m")
CODECS: dict[str, dict[str, Any]] = {
    "zstd": {},
    "kmeans": {"bits": 4},
    "vae-rd-free": {"steps": 20},
    "vae-paper": {"latent": 64, "n_variants": 10, "epochs": 1, "patience": 1,
                  "batch_size": 512, "lr": 1e-3},
    "nncodec": {"qp": -32},
}
SYNTH_BLOCKS, SYNTH_DIM = 12, 1024
TIMEOUT_S = 3600.0


# ------------------------------------------------------------------ inside a worker process


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux)


def synthetic_state(seed: int = 0) -> dict[str, Any]:
    """SYNTH_BLOCKS blocks of four SYNTH_DIM^2 matrices and biases, heavy-tailed, seeded."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(torch.tensor(5.0))
    state: dict[str, torch.Tensor] = {}
    for b in range(SYNTH_BLOCKS):
        for m in ("q", "k", "v", "o"):
            std = 0.02 + 0.03 * float(torch.rand((), generator=gen))
            torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
            w = t.sample((SYNTH_DIM, SYNTH_DIM))
            state[f"block{b}.{m}.weight"] = w.mul_(std / float(w.std()))
            state[f"block{b}.{m}.bias"] = torch.randn(SYNTH_DIM, generator=gen) * 0.01
    return state


def load_model(name: str) -> dict[str, Any]:
    import torch

    if name == "synthetic-50m":
        return synthetic_state()
    if name == "minilm":
        from vaecompress.zoo import minilm

        return minilm.load_state()
    from vaecompress.zoo import build_model

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in build_model(name).state_dict().items()}


def worker(req: dict[str, Any]) -> dict[str, Any]:
    import torch

    from vaecompress.api import compress, decompress
    from vaecompress.codecs import CodecContext
    from vaecompress.runinfo import auto_threads

    auto_threads()
    folder = Path(req["folder"])
    base = _status_bytes("VmRSS")
    if req["op"] == "compress":
        state = load_model(req["model"])
        loaded = _status_bytes("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        res = compress(state, req["codec"], ctx=CodecContext(progress=False), **req["settings"])
        wall = time.perf_counter() - t0
        peak = _status_bytes("VmHWM")
        (folder / "file").write_bytes(res.data)
        for name, blob in res.externals.items():
            (folder / f"ext.{name}").write_bytes(blob)
        params = sum(v.numel() for v in state.values() if v.is_floating_point())
        extra = {"params": params, "file_bytes": res.accounting.file_bytes,
                 "external_bytes": res.accounting.external_bytes,
                 "ratio_honest": res.accounting.ratio_honest,
                 "codec_s": res.compress_s, "report": {
                     k: res.report[k] for k in ("vae_epochs", "vae_train_s", "train_s",
                                                "encode_s_inside_worker") if k in res.report}}
    else:
        data = (folder / "file").read_bytes()
        exts = {p.name.removeprefix("ext."): p.read_bytes() for p in folder.glob("ext.*")}
        loaded = _status_bytes("VmRSS")
        _reset_peak()
        stats: dict[str, Any] = {}
        t0 = time.perf_counter()
        rebuilt = decompress(data, exts, stats=stats)
        wall = time.perf_counter() - t0
        peak = _status_bytes("VmHWM")
        params = sum(v.numel() for v in rebuilt.values() if v.is_floating_point())
        extra = {"params": params, "report": stats}
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"wall_s": wall, "base_rss_bytes": base, "loaded_rss_bytes": loaded,
            "peak_rss_bytes": peak, "peak_child_rss_bytes": child or None,
            "torch_threads": torch.get_num_threads(), **extra}


# ------------------------------------------------------------------------- the driver


def _run_worker(req: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(req)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{req['op']} {req['model']} {req['codec']} failed:\n"
                           + "\n".join(proc.stderr.strip().splitlines()[-8:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vae_state_bytes(codec: str, settings: dict[str, Any], params: int) -> int:
    """Bytes of the VAE's own training state: its trainable floats, their gradients and the
    two Adam moments (4 float32 copies)."""
    if codec == "vae-rd-free":
        return 16 * params  # one latent per weight (the tensor-wise steps and prior are tiny)
    if codec == "vae-paper":
        from vaecompress.codecs import make_codec
        from vaecompress.methods.paper.model import VAE

        arch = make_codec(codec, **settings).arch()  # type: ignore[attr-defined]
        return 16 * sum(p.numel() for p in VAE(arch).parameters())
    return 0


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x): 1 is linear growth."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per codec: slopes of time and added memory against parameters, and the memory target."""
    out: dict[str, Any] = {}
    for codec in dict.fromkeys(r["codec"] for r in rows):
        rs = sorted((r for r in rows if r["codec"] == codec), key=lambda r: r["params"])
        c = [(r["params"], r["compress"]["wall_s"]) for r in rs]
        d = [(r["params"], r["decompress"]["wall_s"]) for r in rs]
        m = [(r["params"], r["compress_peak_above_base_bytes"]) for r in rs]
        out[codec] = {
            "compress_time_slope_all": slope(c), "compress_time_slope_top2": slope(c[-2:]),
            "decompress_time_slope_all": slope(d), "decompress_time_slope_top2": slope(d[-2:]),
            "compress_memory_slope_top2": slope(m[-2:]),
            "memory_target_met": all(r["memory_target_met"] for r in rs),
            "worst_memory_over_target": max(r["memory_over_target"] for r in rs),
        }
    return out


def measure(model: str, codec: str, settings: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vaecompress-scaling-") as tmp:
        req = {"model": model, "codec": codec, "settings": settings, "folder": tmp}
        comp = _run_worker({**req, "op": "compress"})
        dec = _run_worker({**req, "op": "decompress"})
    params = comp["params"]
    mparams = params / 1e6
    above = comp["peak_rss_bytes"] - comp["base_rss_bytes"]
    target = 3 * 4 * params + vae_state_bytes(codec, settings, params)
    return {
        "model": model, "codec": codec, "settings": settings, "params": params,
        "compress": comp, "decompress": dec,
        "compress_s_per_mparam": comp["wall_s"] / mparams,
        "decompress_s_per_mparam": dec["wall_s"] / mparams,
        "compress_peak_above_base_bytes": above,
        "compress_peak_above_base_per_param": above / params,
        "decompress_peak_above_base_per_param":
            (dec["peak_rss_bytes"] - dec["base_rss_bytes"]) / params,
        "memory_target_bytes": target,
        "memory_target_met": above <= target,
        "memory_over_target": above / target,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="results JSON (required)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not args.out:
        p.error("--out is required")
    from vaecompress.codecs import get_codec_class
    from vaecompress.runinfo import environment
    from vaecompress.zoo import minilm

    t0 = time.perf_counter()
    models = [m for m in args.models.split(",") if m]
    codecs = [c for c in args.codecs.split(",") if c]
    skipped = {c: h for c in codecs if (h := get_codec_class(c).available())}
    if "minilm" in models and (h := minilm.missing()):
        skipped["minilm"] = h
        models.remove("minilm")
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for model in models:
        for codec in codecs:
            if codec in skipped:
                continue
            try:
                row = measure(model, codec, CODECS[codec])
            except (RuntimeError, subprocess.TimeoutExpired) as e:  # recorded, not fatal
                failed.append({"model": model, "codec": codec, "error": str(e)[-2000:]})
                print(f"{model:>14} {codec:>12}: FAILED {str(e).splitlines()[0]}", flush=True)
                continue
            rows.append(row)
            print(f"{model:>14} {codec:>12}: {row['params']:>11,} params, compress "
                  f"{row['compress']['wall_s']:7.1f} s ({row['compress_s_per_mparam']:.2f} s/M), "
                  f"decompress {row['decompress']['wall_s']:6.2f} s, peak above base "
                  f"{row['compress_peak_above_base_bytes'] / 2**20:7.0f} MiB "
                  f"({row['memory_over_target']:.2f} of target)", flush=True)
    results = {
        "benchmark": "scaling",
        "command": "benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment("cpu"),
        "codecs": {c: CODECS[c] for c in codecs},
        "skipped": skipped,
        "rows": rows,
        "failed": failed,
        "analysis": analyse(rows),
        "run_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['run_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
