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
from vaecompress.experiments.common import (
    RecordStore,
    checkpoint_path,
    config_hash,
    evaluate_state,
    remove_if_empty,
    trained_model,
)
from vaecompress.io import atomic_write_json
from vaecompress.runinfo import environment, git_revision, resolve_device, seed_everything
from vaecompress.tasks.probe import classifier_probe
from vaecompress.zoo import build_model, get_spec
from vaecompress.zoo.train import ZOO_NORMALIZE, make_finetuner, preset_config

Point = dict[str, Any]

# `ablation` measures what each ingredient of a codec contributes (`Codec.operating_points`
# gives the variants; run it with `--codecs` naming the codecs that have them).
# `datafree` sweeps every method that needs the weights alone densely (issue 18), on the zoo.
PRESETS = ("quick", "full", "ablation", "datafree")


def grid(codec: str, preset: str) -> list[Point]:
    """The operating points of a codec: its own `operating_points(preset)`. `quick` is small
    enough for CI on one model; `full` sweeps each method across its range so the curves can be
    compared at equal accuracy."""
    cls = get_codec_class(codec)
    points = [dict(p) for p in cls.operating_points(preset)]
    if preset == "datafree":  # nothing that trains on the task's data
        points = [p for p in points if not cls.method(p)[1]]
    return points


def default_codecs(preset: str = "full") -> tuple[str, ...]:
    """Every registered codec that has operating points for `preset`, in registry order."""
    import vaecompress.codecs as codecs

    return tuple(c for c in codecs.REGISTRY if grid(c, preset))


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    models: tuple[str, ...]
    codecs: tuple[str, ...]
    seed: int = 0

    def model_preset(self) -> str:
        return "quick" if self.preset == "quick" else "paper"


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
    return get_codec_class(codec).available()


def plan(cfg: BenchConfig) -> tuple[list[tuple[str, str, Point]], dict[str, str]]:
    """(jobs: (model, codec, settings) in run order, skipped codecs with their install hint)."""
    skipped = {c: hint for c in cfg.codecs if (hint := _available(c))}
    jobs = [(m, c, p) for m in cfg.models for c in cfg.codecs if c not in skipped
            for p in grid(c, cfg.preset)]
    return jobs, skipped


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
    stats: dict[str, Any] = {}
    rebuilt = decompress(res.data, res.externals, stats=stats)
    decompress_s = time.perf_counter() - t0
    # A peer that runs in a worker process reports the time inside it: that is its decoder.
    encode_inside = res.report.get("encode_s_inside_worker")
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
        "compress_s_inside_worker": encode_inside,
        "decompress_s_inside_worker": stats.get("decode_s_inside"),
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
    jobs, skipped = plan(cfg)
    for codec, hint in skipped.items():
        print(f"bench: skipping {codec}: {hint}")
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
            checkpoints=out / "checkpoints",
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
                checkpoint=checkpoint_path(out / "checkpoints", key),
                # The zoo's architecture is known, as for `vaecompress compress` of a zoo
                # model: the default codec weighs tensors by the model run on noise images.
                probe=classifier_probe(build_model(name), (1, 28, 28),
                                       normalize=ZOO_NORMALIZE, seed=cfg.seed, device=device),
            )
            rec = _measure(name, trained.state, trained.accuracy, codec, point, ctx, test)
            rec["codec_settings"] = resolved
            # Records are reused across invocations: each keeps the revision that measured it.
            rec["git_revision"] = git_revision()
            store.put(key, rec)
        records.append(rec)
    bar.close()
    remove_if_empty(out / "checkpoints")
    results = {
        "environment": environment(device, cfg.seed),
        "config": {
            "preset": cfg.preset,
            "models": list(cfg.models),
            "codecs": list(cfg.codecs),
            "grid": {c: grid(c, cfg.preset) for c in cfg.codecs},
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
    codecs = (tuple(c.strip() for c in args.codecs.split(",") if c.strip()) if args.codecs
              else default_codecs(args.preset))
    for c in codecs:
        if not grid(c, args.preset):  # also: an unknown codec is a one-line error here
            raise UserError(f"codec '{c}' has no operating points for preset '{args.preset}'")
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
