"""`vaecompress bench`: every codec's operating points on a task's models, measured one way.

A *bench task* (`BenchTask`) supplies what differs between models: the models and their
weights, each codec's operating points, how faithful a rebuilt model is, and the finetuner and
probe a codec may use. Two exist, chosen by the preset (`bench_presets`): the MNIST zoo
(`experiments.bench_zoo`: test accuracy of fnn/cnn/rnn/lstm) and all-MiniLM-L6-v2
(`experiments.bench_minilm`: embedding fidelity on two sentence sets). The runner knows neither.
For each (model, codec, point) it compresses the model to real bytes, rebuilds it from those
bytes alone, asks the task how faithful the rebuilt model is, and records both ratios, the
times and the peak memory of compressing and of decompressing.

Each finished point is one record under `records/`, keyed by a hash of everything that decides
it (`record_key`), and reused by every later run into the same folder: an interrupted run
resumes, and a record missing a field the task measures is measured again. A codec's training
keeps its resumable state under `checkpoints/` by the same key. A method that uses the task's
data is given the task's finetuner; the others are not. A peer codec that is not installed is
skipped with its install hint. `bench.json` (the environment, the resolved config, every
record) is written first; the task's report draws `bench.md` and a plot from it alone.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from vaecompress.api import compress, decompress
from vaecompress.codecs import CodecContext, get_codec_class, make_codec
from vaecompress.errors import UserError
from vaecompress.experiments.bench_presets import PRESETS
from vaecompress.experiments.common import (
    RecordStore,
    checkpoint_path,
    config_hash,
    remove_if_empty,
)
from vaecompress.files import atomic_write_json
from vaecompress.format import FORMAT_VERSION
from vaecompress.io import StateDict
from vaecompress.runinfo import (
    environment,
    git_revision,
    resolve_device,
    seed_everything,
    trim_memory,
)
from vaecompress.tasks.probe import Probe
from vaecompress.training.finetune import Finetuner

Point = dict[str, Any]

# Per-record report fields a codec may give (`CompressResult.report`), kept in the record.
REPORT_FIELDS = ("vae_epochs", "vae_train_s", "train_s", "nonzero_fraction", "weighting",
                 "snr_db",
                 # the warm-started vae-rd: where its time goes, and where it stopped
                 "warm_start_s", "task_s", "rate_s", "validation_s", "warm_snr_db",
                 "best_step", "steps_run", "feedback_tensors",
                 # vae-rd without data: the inputs made from the model
                 "synthesize_s", "synthetic_batches")


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    models: tuple[str, ...]
    codecs: tuple[str, ...]
    seed: int = 0


@dataclass(frozen=True)
class Subject:
    """A model the bench compresses: its name in records, what identifies it (part of every
    record's key: for a model the bench trained, its training's configuration and its
    weights' sha256, `experiments.common.TrainedModel.identity`) and its tensors."""

    name: str
    key: str
    state: StateDict


class BenchTask(Protocol):
    """What the runner asks of a task. `fidelity_fields` are the record fields `fidelity`
    writes: a stored record without one of them is measured again."""

    name: str
    fidelity_fields: tuple[str, ...]

    def select_models(self, names: list[str] | None) -> tuple[str, ...]:
        """The models to bench: `names` checked (None: the task's default)."""
        ...

    def default_codecs(self) -> tuple[str, ...]:
        """The codecs with operating points, in run order."""
        ...

    def grid(self, codec: str) -> list[Point]:
        """The operating points of `codec` (settings overrides; empty: none)."""
        ...

    def subject(self, name: str, checkpoints: Path) -> Subject:
        """The model `name`, trained (resumably, under `checkpoints`) or loaded."""
        ...

    def finetuner(self, name: str) -> Finetuner:
        """The task's loss and data, for a method that uses them."""
        ...

    def probe(self, name: str) -> Probe:
        """The model run on synthetic inputs, for the data-free codecs' weighting."""
        ...

    def fidelity(self, name: str, rebuilt: StateDict) -> dict[str, Any]:
        """How faithful the rebuilt model is: the fields `fidelity_fields`."""
        ...

    def config(self) -> dict[str, Any]:
        """What the task adds to `bench.json`'s config."""
        ...

    def report(self, results: dict[str, Any], out: Path) -> str:
        """Write `bench.md` (and a plot) from `results` alone; return the summary table."""
        ...


def make_task(preset: str, *, seed: int, device: torch.device, progress: bool,
              data_dir: str | None, retrain: bool = False) -> BenchTask:
    """The bench task of `preset` (`PRESETS`); building it reads no data yet. `retrain`: train
    the zoo's models here instead of taking the package's reference weights."""
    if preset not in PRESETS:
        raise UserError(f"unknown bench preset '{preset}'; choose from {', '.join(PRESETS)}")
    kind, own = PRESETS[preset]
    if kind == "minilm":
        if data_dir is not None:
            raise UserError(f"--data-dir is the MNIST folder of the zoo presets; preset "
                            f"'{preset}' reads none: leave it out")
        if retrain:
            raise UserError(f"--retrain trains the zoo's models; preset '{preset}' trains "
                            "none: leave it out")
        from vaecompress.experiments.bench_minilm import MiniLMBench

        return MiniLMBench(own, seed=seed, device=device, progress=progress)
    from vaecompress.experiments.bench_zoo import ZooBench

    return ZooBench(own, seed=seed, device=device, progress=progress, data_dir=data_dir,
                    retrain=retrain)


def record_key(model_key: str, codec: str, resolved: Point, seed: int,
               device: torch.device) -> str:
    """The key of a record: every resolved setting (a changed codec default is measured
    anew), the codec's format version, the model, the seed and the kind of device."""
    return config_hash({"model": model_key, "codec": codec,
                        "version": get_codec_class(codec).version, "settings": resolved,
                        "seed": seed, "device": device.type})


def peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where not possible.
    The memory the C allocator keeps after an earlier point is given back first: kept, it
    would count in the base and hide that much of the next point's peak (measured on MiniLM:
    the same vae-rd peak of about 2.0 GB read as 52 bytes a parameter added in a fresh process
    and as 23 after another point)."""
    trim_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
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


def plan(cfg: BenchConfig, task: BenchTask) -> tuple[list[tuple[str, str, Point]],
                                                     dict[str, str]]:
    """(jobs: (model, codec, settings) in run order, skipped codecs with their install hint)."""
    skipped = {c: hint for c in cfg.codecs if (hint := _available(c))}
    jobs = [(m, c, p) for m in cfg.models for c in cfg.codecs if c not in skipped
            for p in task.grid(c)]
    return jobs, skipped


def measure(task: BenchTask, subject: Subject, codec: str, point: Point,
            ctx: CodecContext) -> dict[str, Any]:
    """Compress `subject` at `point`, rebuild it from the bytes alone, ask the task how
    faithful it is. Peak memory is measured for compressing and for decompressing apart;
    `peak_added_bytes_per_param` is what compressing added above the memory held before it,
    per float parameter."""
    params = sum(v.numel() for v in subject.state.values() if v.is_floating_point())
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    rss_ok = peak_rss_reset()
    rss_before = peak_rss_bytes() if rss_ok else None
    res = compress(subject.state, codec, ctx=ctx, **point)
    peak_compress = peak_rss_bytes() if rss_ok else None
    peak_cuda = torch.cuda.max_memory_allocated(ctx.device) if cuda else None
    res.rebuilt = None  # compress's own check decode: decompress below rebuilds from the bytes
    rss_ok = peak_rss_reset()
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    rebuilt = decompress(res.data, res.externals, stats=stats)
    decompress_s = time.perf_counter() - t0
    peak_decompress = peak_rss_bytes() if rss_ok else None
    acc = res.accounting
    mparams = params / 1e6
    return {
        "model": subject.name,
        "codec": codec,
        "settings": point,
        **acc.to_json(),
        **task.fidelity(subject.name, rebuilt),
        "weights_snr_db": res.fidelity.get("snr_db"),
        "compress_s": res.compress_s,
        "decompress_s": decompress_s,
        # A peer that runs in a worker process reports the time inside it: that is its coder.
        "compress_s_inside_worker": res.report.get("encode_s_inside_worker"),
        "decompress_s_inside_worker": stats.get("decode_s_inside"),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_compress,
        "peak_rss_decompress_bytes": peak_decompress,
        "peak_cuda_bytes": peak_cuda,
        "compress_s_per_mparam": res.compress_s / mparams,
        "decompress_s_per_mparam": decompress_s / mparams,
        "peak_added_bytes_per_param": (None if peak_compress is None or rss_before is None
                                       else (peak_compress - rss_before) / params),
        "bits_per_param": 8 * (acc.file_bytes + acc.external_bytes) / acc.params,
        "report": {k: res.report[k] for k in REPORT_FIELDS if k in res.report},
    }


def bench(cfg: BenchConfig, task: BenchTask, out: Path, *, device: torch.device,
          progress: bool = True) -> dict[str, Any]:
    """Measure every (model, codec, point) of `cfg` not yet in `out/records`; write and return
    `out/bench.json`'s content."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    store = RecordStore(out / "records")
    checkpoints = out / "checkpoints"
    jobs, skipped = plan(cfg, task)
    for codec, hint in skipped.items():
        print(f"bench: skipping {codec}: {hint}")
    subjects: dict[str, Subject] = {}
    records = []
    bar = tqdm(jobs, desc=f"bench {task.name}", unit="point", disable=not progress)
    for name, codec, point in bar:
        bar.set_postfix(model=name, codec=codec)
        if name not in subjects:
            subjects[name] = task.subject(name, checkpoints)
        records.append(_record(cfg, task, store, subjects[name], (name, codec, point),
                               device=device, progress=progress, checkpoints=checkpoints))
    bar.close()
    remove_if_empty(checkpoints)
    results = {
        "environment": environment(device, cfg.seed),
        "config": {
            "preset": cfg.preset,
            "task": task.name,
            "models": list(cfg.models),
            "codecs": list(cfg.codecs),
            "grid": {c: task.grid(c) for c in cfg.codecs},
            "seed": cfg.seed,
            **task.config(),
        },
        "skipped": skipped,
        "records": records,
        "run_s": time.perf_counter() - t_start,  # this invocation; reused work costs ~0
    }
    atomic_write_json(out / "bench.json", results)
    return results


def _record(cfg: BenchConfig, task: BenchTask, store: RecordStore, subject: Subject,
            job: tuple[str, str, dict[str, Any]], *, device: torch.device, progress: bool,
            checkpoints: Path) -> dict[str, Any]:
    """One point's record: reused from the store under its key, else measured (also when the
    stored one lacks a fidelity field the task now measures) and stored."""
    name, codec, point = job
    resolved = make_codec(codec, **point).settings_json()
    key = record_key(subject.key, codec, resolved, cfg.seed, device)
    rec = store.get(key)
    lacking = [f for f in task.fidelity_fields if rec is not None and f not in rec]
    if lacking:
        print(f"bench: measuring {name} {codec} {point} again: its record {key} lacks "
              f"{', '.join(lacking)}")
    if rec is not None and not lacking:
        return rec
    uses_data = get_codec_class(codec).method(resolved)[1]
    ctx = CodecContext(
        device=device, seed=cfg.seed, progress=progress, label=f"{name} {codec}",
        finetune=task.finetuner(name) if uses_data else None,
        checkpoint=checkpoint_path(checkpoints, key),
        # The architecture is known, as for `vaecompress compress` of a zoo model or with
        # --arch: the default codec weighs tensors by the model on noise inputs.
        probe=task.probe(name),
    )
    rec = measure(task, subject, codec, point, ctx)
    rec["codec_settings"] = resolved
    # Records are reused across invocations: each keeps the revision that measured it, and
    # the container format its file was written in (not in the key: a new format that only
    # shrinks the header would otherwise measure every record again; the report names them).
    rec["git_revision"] = git_revision()
    rec["format_version"] = FORMAT_VERSION
    store.put(key, rec)
    return rec


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def run_bench(args: argparse.Namespace) -> int:
    """The `bench` command: the preset's task, its models and codecs checked before any work."""
    device = resolve_device(args.device)
    task = make_task(args.preset, seed=args.seed, device=device, progress=not args.quiet,
                     data_dir=args.data_dir, retrain=args.retrain)
    models = task.select_models(_names(args.models))
    codecs = tuple(_names(args.codecs) or task.default_codecs())
    for c in codecs:
        get_codec_class(c)  # an unknown codec is a one-line error
        if not task.grid(c):
            raise UserError(f"codec '{c}' has no operating points for preset '{args.preset}'; "
                            f"choose from {', '.join(task.default_codecs())}")
    out = Path(args.out)
    t0 = time.perf_counter()
    results = bench(BenchConfig(args.preset, models, codecs, args.seed), task, out,
                    device=device, progress=not args.quiet)
    summary = task.report(results, out)
    print(f"bench ({args.preset}) done in {time.perf_counter() - t0:.0f} s: "
          f"{out / 'bench.json'}, {out / 'bench.md'}")
    print(summary)
    return 0
