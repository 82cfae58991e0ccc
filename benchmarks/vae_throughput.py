"""VAE training throughput against the machine's own matrix-multiply throughput, in one run.

    .venv/bin/python benchmarks/vae_throughput.py --model fnn --out benchmarks/results/X.json

Trains vae-paper's VAE (2048 -> 512 -> 64, the paper's) on the noisy variants of one zoo model's
parameters for a few epochs in each configuration below, and times torch.matmul of two large
square float32 matrices before and after. Per configuration it reports training chunks per
second and the FLOPs of one epoch (forward and backward of every Linear over the training rows,
forward over the validation rows; elementwise work not counted) divided by the epoch's time,
and that rate as a share of the matmul rate. The best epoch and the best matmul repetition are
compared, so that a load spike from another process counts against neither; the median epoch is
reported too. Weights are the model's initial ones: the speed does not depend on their values.

Configurations (same run, same thread count):
  legacy     materialized variants, batch 64, per-tensor Adam (the loop before issue 12)
  stream64   streamed variants, batch 64, fused Adam
  streamN    streamed variants, batch N (--batch, default 512), fused Adam
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchlib import finish_run, start_run, write_json

from vaecompress.methods.paper.model import VAE, VAEArch
from vaecompress.methods.paper.train import VAETrainConfig, train_vae
from vaecompress.params.variants import NoiseConfig, VariantStream, make_variants
from vaecompress.params.vector import chunk, flatten, layout_of
from vaecompress.runinfo import auto_threads
from vaecompress.zoo import build_model


def matmul_gflops(n: int, reps: int, device: torch.device) -> float:
    """Best-of-`reps` float32 throughput of an n x n by n x n product, in GFLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def linear_sizes(arch: VAEArch) -> list[tuple[int, int, bool]]:
    """(in, out, first) of every Linear of the VAE, in the order the data meets them."""
    vae = VAE(arch)
    out = []
    for name, m in vae.named_modules():
        if isinstance(m, torch.nn.Linear):
            out.append((m.in_features, m.out_features, name.startswith("encoder.0.0")))
    return out


def epoch_flops(arch: VAEArch, n_train: int, n_val: int) -> float:
    """Forward 2ab per sample and Linear a->b; backward 2ab for the weight gradient and 2ab for
    the input gradient, which the first layer (the data) does not need."""
    fwd = sum(2 * a * b for a, b, _ in linear_sizes(arch))
    bwd = sum(2 * a * b * (1 if first else 2) for a, b, first in linear_sizes(arch))
    return n_train * (fwd + bwd) + n_val * fwd


def run(args: argparse.Namespace) -> dict:
    res = start_run("vae_throughput", args.argv)
    threads = auto_threads()
    device = torch.device(args.device)
    state = build_model(args.model).state_dict()
    vec = flatten(state, layout_of(state))
    vec = (vec - vec.mean()) / vec.std()
    chunks, _ = chunk(vec, 2048)
    chunks = chunks.to(device)
    arch = VAEArch()
    noise = NoiseConfig()
    stream = VariantStream(chunks, noise, seed=0)
    n_train, n_val = len(stream.train), len(stream.val)
    flops = epoch_flops(arch, n_train, n_val)
    mm = [matmul_gflops(args.matmul_n, args.matmul_reps, device)]
    configs = {
        "legacy": (64, False, False),
        "stream64": (64, True, True),
        f"stream{args.batch}": (args.batch, True, True),
    }
    results = {}
    for name, (bs, streamed, fused) in configs.items():
        if streamed:
            train, val = stream.train, stream.val
        else:
            train, val = make_variants(chunks, noise, seed=0)
        cfg = VAETrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=bs,
                             fused_adam=fused)
        _, hist = train_vae(train, val, arch, cfg, progress=False)
        best, med = min(hist.epoch_s), statistics.median(hist.epoch_s)
        results[name] = {
            "batch_size": bs,
            "streamed_variants": streamed,
            "fused_adam": fused,
            "epoch_s": hist.epoch_s,
            "chunks_per_s": n_train / best,
            "gflops": flops / best / 1e9,
            "gflops_median_epoch": flops / med / 1e9,
        }
        del train, val
    mm.append(matmul_gflops(args.matmul_n, args.matmul_reps, device))
    peak = max(mm)
    for r in results.values():
        r["share_of_matmul"] = r["gflops"] / peak
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return finish_run(res | {
        "threads": threads,
        "device": str(device),
        "gpu": gpu,
        "model": args.model,
        "n_chunks": chunks.shape[0],
        "vae": arch.to_json(),
        "train_rows": n_train,
        "val_rows": n_val,
        "epoch_gflop": flops / 1e9,
        "matmul": {"n": args.matmul_n, "gflops_runs": mm, "gflops": peak},
        "configs": results,
    })


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    res = run(args)
    m = res["matmul"]["gflops"]
    print(f"{res['machine']['cpu']}, {res['threads']} thread(s), {res['device']}, load "
          f"{res['load_average_start']} -> {res['load_average_end']}; "
          f"matmul {m:.1f} GFLOP/s; one epoch {res['epoch_gflop']:.1f} GFLOP "
          f"({res['model']}, {res['train_rows']} + {res['val_rows']} rows)")
    for name, r in res["configs"].items():
        print(f"  {name:10s} {r['chunks_per_s']:8.0f} chunks/s  {r['gflops']:6.1f} GFLOP/s  "
              f"{100 * r['share_of_matmul']:5.1f}% of matmul  (epochs "
              f"{', '.join(f'{s:.2f}' for s in r['epoch_s'])} s)")
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
