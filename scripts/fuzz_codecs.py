"""Fuzz every codec's decoder: mutate valid files of each registered, available codec and check
that decoding either gives back the same tensors or fails with FormatError/UserError, never
another exception, and never a non-finite weight from a lossy codec.

    python scripts/fuzz.py --codecs 2000 [--seed 0] [--mem-mb 2048] [--only int8,zstd]

The files are made from one tiny state_dict (an MLP, an int64 buffer, an empty and a scalar
float tensor). Half the cases use the container fuzzer's mutations (`scripts/fuzz.py`: bit
flips, truncation, random bytes, header edits with the CRC recomputed); the other half reach the
codec: a payload's bits, bytes or length changed with its sha256 recomputed, or one value of the
codec state or manifest replaced (sizes, counts, dimensions, statistics), sometimes with the
checksum of the rebuilt tensors dropped. Files are decoded with a cap
of 64 MiB on the declared model size (`api.decompress(max_bytes=...)`); the address space is
limited as in `scripts/fuzz.py`, so an allocation beyond that bound is a crash too. Outcomes:

- `same`: the decoded tensors equal the original file's;
- `rejected`: FormatError or UserError (e.g. "pass the decoder");
- `different`: a header edit with the CRC recomputed decoded to other finite tensors (allowed
  only for those edits, e.g. one that removed the checksum record);
- `crash`: anything else.
"""

from __future__ import annotations

import collections
import json
import random
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz
from fuzz import CRC_FIXED, MUTATORS, category

from vaecompress.api import compress, decompress
from vaecompress.codecs import REGISTRY, CodecContext, Finetuner
from vaecompress.errors import FormatError, UserError
from vaecompress.format import Payload, dumps, loads

MAX_BYTES = 64 * 2**20  # the declared-size cap the fuzzed decoder runs with
SETTINGS: dict[str, dict] = {
    "vae-paper": {"chunk_size": 64, "latent": 4, "hidden": (16,), "n_variants": 4, "epochs": 2,
                  "patience": 2, "batch_size": 4},
    "vae-rd": {"epochs": 1.0},
    "vae-rd-free": {"steps": 10},
}


@dataclass
class CodecFile:
    codec: str
    data: bytes
    externals: dict[str, bytes]
    decoded: dict[str, torch.Tensor]


def _task() -> tuple[dict[str, torch.Tensor], Finetuner]:
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    net.register_buffer("steps", torch.tensor(5, dtype=torch.int64))
    net.register_buffer("empty", torch.zeros(0, 3))
    net.register_buffer("scale", torch.tensor(0.75))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(64, 12, generator=g)
    y = (x @ torch.randn(12, 4, generator=g)).argmax(1)

    def loss(state: Mapping[str, torch.Tensor], batch: tuple) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(net, dict(state), (batch[0],)), batch[1])

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for i in range(0, 64, 16):
                yield x[i : i + 16], y[i : i + 16]

    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return state, Finetuner(loss, batches, steps_per_epoch=4)


# ------------------------------------------------ mutations that reach the codec's decoder

INTERESTING = [0, 1, -1, 2, 3, 7, 255, 2**16, 2**31, 2**32 + 1, 2**40, 2**62, -(2**40), 0.5,
               1e30, 1e300, -1e300, "x", "", [], [0], [2**40], {}, None, True]


def m_payload(data: bytes, rng: random.Random) -> bytes:
    """Bits, bytes or length of one payload changed, its sha256 recomputed (and sometimes the
    checksum of the rebuilt tensors dropped, as in a file written before it): only the
    codec's decoder and the checksum stand between this and a broken model."""
    c = loads(data)
    if not c.payloads:
        return data
    i = rng.randrange(len(c.payloads))
    blob = bytearray(c.payloads[i].data)
    how = rng.choice(["flip", "flip", "byte", "truncate", "extend"])
    if how in ("flip", "byte") and blob:
        for _ in range(rng.choice([1, 1, 2, 8])):
            j = rng.randrange(len(blob))
            blob[j] = blob[j] ^ (1 << rng.randrange(8)) if how == "flip" else rng.randrange(256)
    elif how == "truncate":
        blob = blob[: rng.randrange(len(blob) + 1)]
    else:
        blob += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    p = c.payloads[i]
    c.payloads[i] = Payload(p.name, p.kind, p.role, bytes(blob))
    if rng.random() < 0.3:
        c.meta.pop("vaecompress.decoded", None)
    return dumps(c)


def m_codec_field(data: bytes, rng: random.Random) -> bytes:
    """One value of the codec state or the manifest replaced, the CRC recomputed."""
    _, text, _ = fuzz.split(data)
    h = json.loads(text)
    paths = [p for p in fuzz._nodes(h) if p and p[0] in ("codec_state", "tensors")][1:]
    if not paths:
        return data
    path = rng.choice(paths)
    parent = h
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    choices = list(INTERESTING)
    if isinstance(old, int | float) and not isinstance(old, bool):
        choices += [old * 2, old + 1, old - 1, -old]
    parent[path[-1]] = rng.choice(choices)
    if rng.random() < 0.3:
        h["meta"].pop("vaecompress.decoded", None)
    return fuzz.with_text(data, json.dumps(h).encode())


CODEC_MUTATORS = {"payload": m_payload, "codec-field": m_codec_field}
ALL_MUTATORS = {**MUTATORS, **CODEC_MUTATORS}
ALLOWED_DIFFERENT = CRC_FIXED | set(CODEC_MUTATORS)


def available_codecs() -> list[str]:
    return [n for n, cls in REGISTRY.items() if cls.available() is None]


def base_files(codecs: list[str] | None = None) -> list[CodecFile]:
    state, finetuner = _task()
    out = []
    for name in codecs or available_codecs():
        ctx = CodecContext(progress=False, seed=0,
                           finetune=finetuner if REGISTRY[name].uses_task else None)
        res = compress(state, name, ctx=ctx, **SETTINGS.get(name, {}))
        out.append(CodecFile(name, res.data, res.externals, decompress(res.data, res.externals)))
    return out


def _equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(torch.nan_to_num(a[k]), torch.nan_to_num(b[k])) for k in a)


def outcome(f: CodecFile, mutated: bytes, mutator: str) -> str:
    """`same`, `rejected: <message prefix>`, `different`, or `crash: <what>`."""
    try:
        state = decompress(mutated, f.externals, max_bytes=MAX_BYTES)
    except (FormatError, UserError) as e:
        return "rejected: " + category(str(e))
    except Exception as e:  # the property under test: nothing else may escape
        return f"crash: {type(e).__name__}: {str(e)[:200]}"
    if _equal(state, f.decoded):
        return "same"
    if mutator not in ALLOWED_DIFFERENT:
        return "crash: a mutation behind the CRC decoded to other tensors"
    if not REGISTRY[f.codec].lossless and not all(
            bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        return "crash: a lossy codec decoded to non-finite weights"
    return "different"


def markdown(summary: dict) -> str:
    """The table docs/format.md shows ("Codec fuzzing"), drawn from a results file of `run`."""
    lines = ["| codec | cases | same | rejected | different | crash | seconds |",
             "|-------|------:|-----:|---------:|----------:|------:|--------:|"]
    for r in summary["codecs"]:
        lines.append(f"| {r['codec']} | {r['cases']:,} | {r['same']:,} | {r['rejected']:,} "
                     f"| {r['different']:,} | {r['crash']:,} | {r['seconds']:.0f} |")
    lines.append(f"\n`{summary['command']}` (torch {summary['torch']}): {summary['crashes']} "
                 f"crashes; the run's peak resident memory {summary['peak_rss_mb']:,.0f} MB, "
                 f"{summary['base_rss_mb']:,.0f} MB of it before the first case.")
    return "\n".join(lines) + "\n"


def run(cases_per_codec: int, seed: int, only: list[str] | None = None, *,
        out: Path | None = None, command: str = "") -> int:
    """Fuzz each codec; with `out`, write the counts, seconds and the run's peak memory (the
    largest resident size any case reached, ru_maxrss) to that JSON file."""
    files = base_files(only)
    rng = random.Random(seed)
    crashes: list[str] = []
    rows = []
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{cases_per_codec} cases per codec, seed {seed}")
    for f in files:
        counts: collections.Counter[str] = collections.Counter()
        t0 = time.perf_counter()
        for _ in range(cases_per_codec):
            # Half the cases edit what the codec reads; the other half the container's mutations.
            pool = CODEC_MUTATORS if rng.random() < 0.5 else MUTATORS
            name = rng.choice(sorted(pool))
            result = outcome(f, pool[name](f.data, rng), name)
            kind = result.split(":")[0]
            counts[kind] += 1
            if kind == "crash":
                crashes.append(f"{f.codec} {name}: {result}")
        seconds = time.perf_counter() - t0
        summary = "  ".join(f"{k} {counts[k]}" for k in ("same", "rejected", "different", "crash"))
        print(f"  {f.codec:17s} {summary}   [{seconds:.0f} s]", flush=True)
        rows.append({"codec": f.codec, "cases": cases_per_codec, "seconds": round(seconds, 1),
                     **{k: counts[k] for k in ("same", "rejected", "different", "crash")}})
    for c in crashes[:20]:
        print("CRASH", c)
    if out is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "command": command, "cases_per_codec": cases_per_codec, "seed": seed,
            "max_declared_bytes": MAX_BYTES, "torch": torch.__version__,
            "peak_rss_mb": round(peak, 1), "base_rss_mb": round(base_mb, 1),
            "crashes": len(crashes), "codecs": rows}, indent=2) + "\n")
    return 1 if crashes else 0
