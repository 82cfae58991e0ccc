"""`vaecompress bench`: every codec on the same trained models, rate against accuracy, one run.

Each operating point compresses the model to real bytes, rebuilds it from those bytes alone and
measures its test accuracy. Records carry both ratios, timings and peak memory; `bench.json` is
written first, `bench.md` and `rate_accuracy.png` are drawn from it (`experiments.bench_report`).
A peer codec that is not installed is skipped with a line saying how to install it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext, get_codec_class, make_codec
from vaecompress.data import load_mnist
from vaecompress.errors import UserError
from vaecompress.experiments.common import RecordStore, config_hash, evaluate_state, trained_model
from vaecompress.io import atomic_write_json
from vaecompress.runinfo import environment, resolve_device, seed_everything
from vaecompress.zoo import get_spec
from vaecompress.zoo.train import make_finetuner, preset_config

Point = dict[str, Any]

# Operating points per codec. `quick` is small enough for CI on one model; `full` sweeps each
# method across its range so the curves can be compared at equal accuracy.
GRIDS: dict[str, dict[str, list[Point]]] = {
    "quick": {
        "zstd": [{}],
        "int8": [{"granularity": "channel"}],
        "int4": [{"granularity": "channel"}],
        "prune": [{"sparsity": 0.8, "finetune_epochs": 0.25}],
        "kmeans": [{"bits": 4}],
        "deep-compression": [{"prune_epochs": 0.5, "quant_epochs": 0.25, "prune_stages": 2}],
        "nncodec": [{"qp": -32}],
        "vae-paper": [{"latent": 64, "epochs": 30, "patience": 10}],
    },
    "full": {
        "zstd": [{}],
        "int8": [
            {"granularity": g, "entropy": e} for g in ("tensor", "channel") for e in (False, True)
        ],
        "int4": [
            {"granularity": g, "entropy": e} for g in ("tensor", "channel") for e in (False, True)
        ],
        "prune": [{"sparsity": s, "finetune_epochs": 1.0} for s in (0.5, 0.7, 0.8, 0.9)],
        "kmeans": [{"bits": b, "entropy": True} for b in (2, 3, 4, 5, 6)],
        "deep-compression": [{"sparsity": s} for s in (0.85, 0.92, 0.96)],
        "nncodec": [{"qp": q} for q in (-44, -38, -32, -26, -20, -14)],
        # The latent sweep lives in `reproduce`; here the paper's codec is one point per model.
        "vae-paper": [{"latent": 64, "epochs": 100, "patience": 20, "batch_size": 128}],
    },
}
CODECS = tuple(GRIDS["full"])


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    models: tuple[str, ...]
    codecs: tuple[str, ...]
    seed: int = 0

    def model_preset(self) -> str:
        return "paper" if self.preset == "full" else "quick"


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _available(codec: str) -> str | None:
    """None if usable, else the one line saying how to get it."""
    if codec == "nncodec":
        from vaecompress.codecs.nncodec_peer import NOT_INSTALLED, nncodec_available

        return None if nncodec_available() else NOT_INSTALLED
    return None


def _measure(
    name: str,
    state: dict[str, torch.Tensor],
    acc_orig: float,
    codec: str,
    point: Point,
    ctx: CodecContext,
    test: Any,
) -> dict[str, Any]:
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    rss_ok = _peak_rss_reset()
    res = compress(state, codec, ctx=ctx, **point)
    t0 = time.perf_counter()
    rebuilt = decompress(res.data, res.externals)
    decompress_s = time.perf_counter() - t0
    acc, _ = evaluate_state(name, rebuilt, test, device=ctx.device)
    return {
        "model": name,
        "codec": codec,
        "settings": point,
        **res.accounting.to_json(),
        "acc_orig": acc_orig,
        "acc_recon": acc,
        "acc_drop": acc_orig - acc,
        "compress_s": res.compress_s,
        "decompress_s": decompress_s,
        "peak_rss_bytes": _peak_rss_bytes() if rss_ok else None,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(ctx.device) if cuda else None,
        "bits_per_param": 8
        * (res.accounting.file_bytes + res.accounting.external_bytes)
        / res.accounting.params,
    }


def bench(
    cfg: BenchConfig,
    out: Path,
    *,
    device: torch.device,
    data_dir: str | None,
    progress: bool = True,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    train, test = load_mnist(data_dir)
    store = RecordStore(out / "records")
    skipped: dict[str, str] = {}
    for codec in cfg.codecs:
        hint = _available(codec)
        if hint:
            skipped[codec] = hint
            print(f"bench: skipping {codec}: {hint}")
    jobs = [
        (m, c, p)
        for m in cfg.models
        for c in cfg.codecs
        if c not in skipped
        for p in GRIDS[cfg.preset][c]
    ]
    records = []
    bar = tqdm(jobs, desc="bench", unit="point", disable=not progress)
    for name, codec, point in bar:
        bar.set_postfix(model=name, codec=codec)
        trained = trained_model(
            name,
            preset_config(cfg.model_preset(), name, cfg.seed),
            train,
            test,
            device=device,
            progress=progress,
        )
        # Keyed on every resolved setting, so a changed codec default is measured anew.
        resolved = make_codec(codec, **point).settings_json()
        key = config_hash(
            {
                "model": trained.key,
                "codec": codec,
                "version": get_codec_class(codec).version,
                "settings": resolved,
                "seed": cfg.seed,
                "device": device.type,
            }
        )
        rec = store.get(key)
        if rec is None:
            ctx = CodecContext(
                device=device,
                seed=cfg.seed,
                progress=progress,
                label=f"{name} {codec}",
                finetune=make_finetuner(name, train, device=device, seed=cfg.seed),
            )
            rec = _measure(name, trained.state, trained.accuracy, codec, point, ctx, test)
            rec["codec_settings"] = resolved
            store.put(key, rec)
        records.append(rec)
    bar.close()
    results = {
        "environment": environment(device, cfg.seed),
        "config": {
            "preset": cfg.preset,
            "models": list(cfg.models),
            "codecs": list(cfg.codecs),
            "grid": {c: GRIDS[cfg.preset][c] for c in cfg.codecs},
            "seed": cfg.seed,
            "model_preset": cfg.model_preset(),
        },
        "skipped": skipped,
        "records": records,
        "run_s": time.perf_counter() - t_start,  # this invocation; reused work costs ~0
    }
    atomic_write_json(out / "bench.json", results)
    return results


def run_bench(args: argparse.Namespace) -> int:
    from vaecompress.experiments.bench_report import write_bench_report

    models = tuple(get_spec(m.strip()).name for m in args.models.split(",") if m.strip())
    codecs = tuple(c.strip() for c in args.codecs.split(",")) if args.codecs else CODECS
    for c in codecs:
        get_codec_class(c)
        if c not in GRIDS[args.preset]:
            raise UserError(f"codec '{c}' has no operating points in the bench grid")
    cfg = BenchConfig(args.preset, models, codecs, args.seed)
    out = Path(args.out)
    t0 = time.perf_counter()
    results = bench(
        cfg,
        out,
        device=resolve_device(args.device),
        data_dir=args.data_dir,
        progress=not args.quiet,
    )
    summary = write_bench_report(results, out)
    print(
        f"bench ({args.preset}) done in {time.perf_counter() - t0:.0f} s: {out / 'bench.json'}, "
        f"{out / 'bench.md'}, {out / 'rate_accuracy.png'}"
    )
    print(summary)
    return 0
