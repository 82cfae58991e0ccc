"""The bench on all-MiniLM-L6-v2 (22.7M parameters): every codec, rate against embedding fidelity.

    python -m vaecompress.experiments.minilm --out results/minilm [--codecs a,b] [--seed 0]

What `vaecompress bench` does for the MNIST zoo, for the large real model: each operating point
compresses the model (its safetensors file as stored, the int64 `position_ids` included) to
real bytes, rebuilds it from those bytes alone and measures the rebuilt model's sentence
embeddings against the original's (`tasks.sentence`: mean cosine over 1,039 sentences, share of
nearest neighbours kept). Codecs that retrain on the task (`vae-rd`, `prune`,
`deep-compression`) distil the original model's embeddings on 2,048 other sentences. Records
carry both ratios, compression and decompression time, peak RSS and the same per million
parameters; `bench.json` is written first, `bench.md` and `rate_fidelity.png` are drawn from it
(`experiments.minilm_report`). Finished points are kept under `records/` and reused, so an
interrupted run resumes; a peer codec that is not installed is skipped with its install hint.

`GRID` holds the operating points, sized for a shared 2-core CPU (under an hour for every codec,
one torch thread): each codec's budget, cut from its default, is stated beside its points. The
most expensive are the VAE codecs and the retraining ones, whose per-step cost grows with the
model (22.7M latents or 11,091 chunks, against 54k-214k parameters and 27-105 chunks for the
zoo).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaecompress.api import compress, decompress
from vaecompress.codecs import REGISTRY, CodecContext, get_codec_class, make_codec
from vaecompress.errors import UserError
from vaecompress.experiments.bench import _available, _peak_rss_bytes, _peak_rss_reset
from vaecompress.experiments.common import RecordStore, config_hash
from vaecompress.io import atomic_write_json
from vaecompress.runinfo import (
    auto_threads,
    environment,
    git_revision,
    resolve_device,
    seed_everything,
)
from vaecompress.zoo import minilm

Point = dict[str, Any]

# Operating points on MiniLM, measured on a shared 2-core CPU (one torch thread, other jobs
# running): one distillation step (a batch of 32 sentences) takes 2-3 s there, one whole-model
# step of the RD VAE about 4 s, one vae-paper epoch over 10 variants about 50 s.
GRID: dict[str, list[Point]] = {
    "zstd": [{}],  # level 19: about two minutes on 91 MB
    "int8": [{}],
    "int4": [{}],
    "prune": [{"sparsity": 0.5, "finetune_epochs": 1.0}],  # 64 distillation steps
    "kmeans": [{"bits": b, "entropy": True} for b in (4, 6)],
    "deep-compression": [{"sparsity": 0.5, "prune_stages": 1, "prune_epochs": 1.0,
                          "quant_epochs": 0.5}],  # 64 + 32 distillation steps
    "nncodec": [{"qp": q} for q in (-38, -26)],
    # The paper's VAE at a budget this machine can pay: 10 noisy variants instead of 100 and 4
    # epochs at batch 512 instead of up to 500 (the file's size does not depend on them).
    "vae-paper": [{"latent": 64, "n_variants": 10, "epochs": 4, "patience": 4,
                   "batch_size": 512, "lr": 1e-3}],
    # 64 steps (one epoch) instead of 2 epochs; lam in units of the distillation loss 1 - cos.
    # init_bins=16: the default first step (std / 4, tuned on the MNIST zoo) is too coarse for
    # MiniLM in runs this short (docs/minilm.md).
    "vae-rd": [{"lam": 0.01, "epochs": 1.0}, {"lam": 0.01, "epochs": 1.0, "init_bins": 16.0}],
    # The trained form (solver=adam): 100 whole-model steps instead of the default 1500.
    "vae-rd-free": [*({"solver": "adam", "lam": lam, "steps": 100} for lam in (0.01, 0.1)),
                    {"solver": "adam", "lam": 0.01, "steps": 100, "init_bins": 16.0}],
}
# `--preset datafree` (issue 18): every method that needs the weights alone, swept far enough
# to pass every fidelity level, in the order they run (the default first). Sized for a shared
# 2-core CPU, where each point costs one to two minutes: NNCodec every third qp step (its step
# grows by 2^(3/4) per three) from where it passes the strictest level on both sentence sets,
# HQQ at 3, 4 and 8 bits.
DATAFREE: dict[str, list[Point]] = {
    # The default's weighting (the model run on random tokens, SentenceTask.probe) and the
    # weights alone, as for a bare file given to `vaecompress compress`.
    "vae-rd-free": [*({"snr": float(s), "weighting": "auto"} for s in (10, 12, 14, 18, 22, 25,
                                                                        28, 30, 33, 36)),
                    *({"snr": float(s), "weighting": "relative"} for s in (30, 35, 40, 45))],
    "nncodec": [{"qp": q} for q in range(-44, -19, 3)],
    "zstd": [{}],
    "zipnn": [{}],
    "int8": [{"granularity": g, "entropy": True} for g in ("tensor", "channel")],
    "int4": [{"granularity": "channel", "entropy": True}],
    "kmeans": [{"bits": b, "entropy": True} for b in (4, 6)],
    "hqq": [*({"bits": b, "group_size": 64} for b in (3, 4, 8)), {"bits": 4, "group_size": 128}],
}
PRESETS = {"minilm": GRID, "datafree": DATAFREE}
MODEL = minilm.NAME


def default_codecs(grid: dict[str, list[Point]]) -> tuple[str, ...]:
    """Every registered codec with points in `grid`, in registry order."""
    return tuple(c for c in REGISTRY if c in grid)


def _measure(task: Any, state: dict[str, torch.Tensor], codec: str, point: Point,
             ctx: CodecContext) -> dict[str, Any]:
    params = sum(v.numel() for v in state.values() if v.is_floating_point())
    rss_ok = _peak_rss_reset()
    rss_before = _peak_rss_bytes() if rss_ok else None
    res = compress(state, codec, ctx=ctx, **point)
    peak_compress = _peak_rss_bytes() if rss_ok else None
    res.rebuilt = None  # compress's own check decode: decompress below rebuilds from the bytes
    rss_ok = _peak_rss_reset()
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    rebuilt = decompress(res.data, res.externals, stats=stats)
    decompress_s = time.perf_counter() - t0
    peak_decompress = _peak_rss_bytes() if rss_ok else None
    fid = task.fidelity(rebuilt)
    # The same on text of another kind than any codec or default was tuned on (Austen).
    held = {f"heldout_{k}": v for k, v in task.fidelity(rebuilt, eval_set="heldout").items()}
    acc = res.accounting
    mparams = params / 1e6
    report = {k: res.report[k] for k in ("vae_epochs", "vae_train_s", "train_s",
                                         "nonzero_fraction", "weighting", "snr_db")
              if k in res.report}
    return {
        "model": MODEL,
        "codec": codec,
        "settings": point,
        **acc.to_json(),
        **fid,
        **held,
        "weights_snr_db": res.fidelity.get("snr_db"),
        "compress_s": res.compress_s,
        "decompress_s": decompress_s,
        "compress_s_inside_worker": res.report.get("encode_s_inside_worker"),
        "decompress_s_inside_worker": stats.get("decode_s_inside"),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_compress,
        "peak_rss_decompress_bytes": peak_decompress,
        "compress_s_per_mparam": res.compress_s / mparams,
        "decompress_s_per_mparam": decompress_s / mparams,
        "peak_added_bytes_per_param": (None if peak_compress is None or rss_before is None
                                       else (peak_compress - rss_before) / params),
        "bits_per_param": 8 * (acc.file_bytes + acc.external_bytes) / acc.params,
        "report": report,
    }


def bench(codecs: tuple[str, ...], out: Path, *, seed: int = 0,
          device: torch.device | None = None, progress: bool = True,
          preset: str = "minilm") -> dict[str, Any]:
    """Measure every (codec, point) of the preset's grid not yet in `out/records`, write
    `out/bench.json`."""
    grid = PRESETS[preset]
    from vaecompress.tasks.sentence import SentenceTask

    t_start = time.perf_counter()
    device = device or torch.device("cpu")
    hint = minilm.missing()
    if hint is not None:
        raise UserError(hint)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    state = minilm.load_state()
    store = RecordStore(out / "records")
    skipped = {c: h for c in codecs if (h := _available(c))}
    for codec, h in skipped.items():
        print(f"minilm bench: skipping {codec}: {h}")
    # In the grid's order (the data-free preset runs the default first), reported by codec.
    order = [c for c in grid if c in codecs]
    jobs = [(c, p) for c in order if c not in skipped for p in grid[c]]
    task = finetuner = probe = None
    records = []
    bar = tqdm(jobs, desc="minilm bench", unit="point", disable=not progress)
    for codec, point in bar:
        bar.set_postfix(codec=codec)
        resolved = make_codec(codec, **point).settings_json()
        key = config_hash({"model": f"{MODEL}-{minilm.PARAMS}", "codec": codec,
                           "version": get_codec_class(codec).version, "settings": resolved,
                           "seed": seed, "device": device.type})
        rec = store.get(key)
        if rec is None:
            task = task or SentenceTask(device)
            if get_codec_class(codec).uses_task and finetuner is None:
                finetuner = task.finetuner(seed)
            probe = probe or task.probe(seed=seed)
            ctx = CodecContext(device=device, seed=seed, progress=progress,
                               label=f"{MODEL} {codec}", finetune=finetuner, probe=probe)
            rec = _measure(task, state, codec, point, ctx)
            rec["codec_settings"] = resolved
            rec["git_revision"] = git_revision()
            store.put(key, rec)
        records.append(rec)
    bar.close()
    results = {
        "environment": environment(device, seed),
        "config": {"preset": preset, "models": [MODEL], "codecs": list(codecs),
                   "grid": {c: grid[c] for c in codecs}, "seed": seed,
                   "params": minilm.PARAMS, "eval_sentences": "tasks/data/eval.txt",
                   "heldout_sentences": "tasks/data/heldout.txt",
                   "train_sentences": "tasks/data/train.txt"},
        "skipped": skipped,
        "records": records,
        "run_s": time.perf_counter() - t_start,  # this invocation; reused records cost ~0
    }
    atomic_write_json(out / "bench.json", results)
    return results


def main(argv: list[str] | None = None) -> int:
    from vaecompress.experiments.minilm_report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/minilm", help="results folder (default: runs/minilm)")
    p.add_argument("--codecs", help="comma-separated codecs (default: every codec of the "
                   "preset)")
    p.add_argument("--preset", default="minilm", choices=sorted(PRESETS),
                   help="minilm: every codec at a budget (GRID); datafree: the methods that "
                   "need the weights alone, swept densely (DATAFREE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    auto_threads()
    grid = PRESETS[args.preset]
    codecs = (tuple(c.strip() for c in args.codecs.split(",") if c.strip()) if args.codecs
              else default_codecs(grid))
    for c in codecs:
        get_codec_class(c)  # an unknown codec is a one-line error
        if c not in grid:
            raise UserError(f"codec '{c}' has no MiniLM operating points in preset "
                            f"'{args.preset}'; choose from {', '.join(grid)}")
    out = Path(args.out)
    t0 = time.perf_counter()
    results = bench(codecs, out, seed=args.seed, device=resolve_device(args.device),
                    progress=not args.quiet, preset=args.preset)
    summary = write_report(results, out)
    print(f"minilm bench done in {time.perf_counter() - t0:.0f} s: {out / 'bench.json'}")
    print(summary)
    return 0


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
