"""Crafted hostile files (issue 21): small files that declare far more than they hold, header
edits with every integrity field recomputed, names no file system or safetensors takes. Each
case is made here, by code, and decoded in a fresh process whose peak memory above its base is
measured; `tests/test_hostile.py` asserts the outcomes, and the long run writes the results file
that docs/format.md ("Hostile files") shows:

    python scripts/hostile.py [--out results/hostile/hostile.json] [--only NAME,...]
    python scripts/hostile.py --markdown --docs    # its table, and the fuzzer's, into the docs

Outcomes: `rejected` (FormatError/UserError: one line, exit 2 on the command line), `decoded`
(a file whose payload really holds what its manifest declares), `memory-error`, `crash`
(anything else) and `timeout`.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from vaecompress import api
from vaecompress.coding.entropy import MODE_CONST, write_varint
from vaecompress.format import ROLE_AUX, ROLE_CODE, Container, Payload, dumps, loads

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "hostile" / "hostile.json"
MB = 2**20
ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK = 2**17  # the largest block a zstd frame may hold
FUZZ_RESULTS = ROOT / "results" / "hostile" / "fuzz-codecs.json"  # scripts/fuzz.py --codecs --out


# ------------------------------------------------------------------------------ building


def zstd_rle_frame(size: int, *, declare: int | None = None, byte: int = 0) -> bytes:
    """A zstd frame of `size` copies of `byte` as RLE blocks (4 bytes per 128 KiB block), with
    `declare` (default `size`) as its frame content size; `declare=-1` leaves it out."""
    declare = size if declare is None else declare
    if declare < 0:
        # no content size, no single segment: a window descriptor of 128 KiB
        head = struct.pack("<IBB", ZSTD_MAGIC, 0x00, (17 - 10) << 3)
    else:
        head = struct.pack("<IBQ", ZSTD_MAGIC, 0xE0, declare)  # FCS 8 bytes, single segment
    blocks = bytearray()
    left = size
    while True:
        n = min(left, ZSTD_BLOCK)
        left -= n
        last = 1 if left == 0 else 0
        blocks += (last | (1 << 1) | (n << 3)).to_bytes(3, "little") + bytes([byte])
        if last:
            return head + bytes(blocks)


def const_stream(n: int, symbol: int = 0) -> bytes:
    """A `coding.entropy` stream of `n` copies of one symbol (a few bytes for any `n`)."""
    out = bytearray([MODE_CONST])
    write_varint(out, n)
    write_varint(out, symbol)
    return bytes(out)


def _container(codec: str, tensors: list[dict], state: dict, payloads: list[Payload],
               expect: dict[str, torch.Tensor] | None = None) -> bytes:
    """A file whose checksum record is that of `expect` (what an honest writer of these
    payloads would have recorded), or none when `expect` is None."""
    c = Container(codec={"name": codec, "version": 1, "settings": {}}, tensors=tensors,
                  codec_state=state, payloads=payloads)
    if expect is not None:
        seal(c, expect)
    return dumps(c)


def seal(c: Container, state: dict[str, torch.Tensor]) -> None:
    """Record the checksum of `state` as the writer does (the integrity field recomputed)."""
    c.meta[api.DECODED_KEY] = api.decoded_record(state, exact=True)


def _zeros(name: str, shape: list[int]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape)}


def vae_rd_const(n: int) -> bytes:
    """A `vae-rd` latent record whose stream is one constant symbol, for a tensor of n floats."""
    rec = bytearray([0])  # flags: one step, entropy-coded, no masks
    rec += struct.pack("<f", 1.0)
    write_varint(rec, 0)  # offset 0
    body = const_stream(n)
    write_varint(rec, len(body))
    rec += body
    tensors = [{"name": "w", "shape": [n], "dtype": "float32"}]
    return _container("vae-rd", tensors, {}, [Payload("latents", "rd-latents", ROLE_CODE,
                                                      bytes(rec))], _zeros("w", [n]))


def vae_rd_overflow() -> bytes:
    """A finite step times a latent that overflows float32: rejected, one line, no warning."""
    rec = bytearray([0]) + struct.pack("<f", 3e38)
    write_varint(rec, 0)
    body = const_stream(4, 5)
    write_varint(rec, len(body))
    rec += body
    tensors = [{"name": "w", "shape": [4], "dtype": "float32"}]
    return _container("vae-rd", tensors, {}, [Payload("latents", "rd-latents", ROLE_CODE,
                                                      bytes(rec))], _zeros("w", [4]))


def int8_const(n: int) -> bytes:
    tensors = [{"name": "w", "shape": [2, n // 2], "dtype": "float32"}]
    q = const_stream(n)
    state = {"bias": "float32", "bits": 8, "entropy": True, "granularity": "tensor", "q": [len(q)],
             "scale": "float32", "scheme": "affine"}
    return _container("int8", tensors, state, [
        Payload("q", "ans", ROLE_CODE, q),
        Payload("scales", "raw-f32", ROLE_CODE, struct.pack("<ff", 0.0, 1.0))],
        _zeros("w", [2, n // 2]))


def kmeans_const(n: int) -> bytes:
    tensors = [{"name": "w", "shape": [2, n // 2], "dtype": "float32"}]
    idx = const_stream(n)
    state = {"bias": "float32", "entropy": True, "global": False, "k": [1], "seg": [len(idx)]}
    return _container("kmeans", tensors, state, [
        Payload("codebooks", "raw-f32", ROLE_CODE, struct.pack("<f", 0.0)),
        Payload("indices", "ans", ROLE_CODE, idx)], _zeros("w", [2, n // 2]))


def deep_compression_const(n: int) -> bytes:
    tensors = [{"name": "w", "shape": [2, n // 2], "dtype": "float32"}]
    gaps, idx = const_stream(n), const_stream(n)
    state = {"bias": "float16", "t": [[1, n, len(gaps), len(idx)]]}
    data = struct.pack("<f", 0.0) + gaps + idx
    return _container("deep-compression", tensors, state,
                      [Payload("code", "dc-streams", ROLE_CODE, data)], _zeros("w", [2, n // 2]))


def zstd_frame_lies(size: int) -> bytes:
    """A zstd payload for 4 floats whose frame declares, and holds, `size` bytes of zeros."""
    tensors = [{"name": "w", "shape": [4], "dtype": "float32"}]
    return _container("zstd", tensors, {"raw_bytes": 16},
                      [Payload("weights", "zstd", ROLE_CODE, zstd_rle_frame(size))],
                      _zeros("w", [4]))


def zstd_frame_claims(declare: int) -> bytes:
    """A 20-byte zstd frame for 4 floats that claims `declare` bytes of content."""
    tensors = [{"name": "w", "shape": [4], "dtype": "float32"}]
    return _container("zstd", tensors, {"raw_bytes": 16},
                      [Payload("weights", "zstd", ROLE_CODE, zstd_rle_frame(16, declare=declare))],
                      _zeros("w", [4]))


def prune_huge(n: int) -> bytes:
    """`prune` of one tensor of n floats, all pruned: a bitmask of n/8 zero bytes as RLE."""
    raw = (n + 7) // 8
    tensors = [{"name": "w", "shape": [n], "dtype": "float32"}]
    state = {"raw_bytes": raw, "tensors": [["m", 0]], "values": "float32", "zstd": True}
    return _container("prune", tensors, state,
                      [Payload("sparse", "zstd", ROLE_CODE, zstd_rle_frame(raw))], None)


def _tiny_file(codec: str, **settings: object) -> Container:
    torch.manual_seed(0)
    state = {"a.weight": torch.randn(30, 60), "a.bias": torch.randn(30),
             "b.weight": torch.randn(30, 60), "steps": torch.tensor(3)}
    return loads(api.compress(state, codec, **settings).data)


VAE_PAPER_TINY = {"chunk_size": 64, "latent": 4, "hidden": (16,), "n_variants": 4, "epochs": 2,
                  "patience": 2, "batch_size": 4}


VAE_PAPER_WIDE = VAE_PAPER_TINY | {"chunk_size": 512, "hidden": (512,)}  # 265k decoder weights


def vae_paper_layers(layers: int) -> bytes:
    """A valid vae-paper file whose header declares `layers` hidden layers of width 1; its
    decoder has room for 2 * layers weights up to 120,000 layers, so the count check passes."""
    c = _tiny_file("vae-paper", **VAE_PAPER_WIDE)
    c.codec_state["vae"]["hidden"] = [1] * layers
    return dumps(c)


def passthrough_named(name: str) -> bytes:
    """A zstd file whose integer tensor, kept in the passthrough safetensors blob, is `name`."""
    from vaecompress.io import state_to_bytes

    t = torch.arange(3)
    tensors = [{"name": name, "shape": [3], "dtype": "int64"}]
    return _container("zstd", tensors, {"raw_bytes": 0}, [
        Payload("weights", "zstd", ROLE_CODE, zstd_rle_frame(0, declare=0)),
        Payload("passthrough", "safetensors", ROLE_AUX, state_to_bytes({name: t}))],
        {name: t})


def external_named(name: str) -> bytes:
    """A vae-paper file whose decoder is an external called `name`."""
    from vaecompress.format import External

    c = _tiny_file("vae-paper", **VAE_PAPER_TINY, external_decoder=True)
    old = c.externals[0]
    c.externals = [External(name, old.kind, old.role, old.sha256, old.length)]
    return dumps(c)


# name -> (maker, what a correct reader does: "rejected" or "decoded")
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "vae-rd const stream, 64 Mi floats": (lambda: vae_rd_const(2**26), "decoded"),
    "int8 const stream, 64 Mi floats": (lambda: int8_const(2**26), "decoded"),
    "kmeans const stream, 64 Mi floats": (lambda: kmeans_const(2**26), "decoded"),
    "deep-compression const streams, 64 Mi floats": (lambda: deep_compression_const(2**26),
                                                     "decoded"),
    "zstd frame holds 512 MiB for 16 bytes": (lambda: zstd_frame_lies(512 * MB), "rejected"),
    "zstd frame claims 2**40 bytes for 16": (lambda: zstd_frame_claims(2**40), "rejected"),
    # no checksum record (its digest would take hashing 8 GiB): decoded, then refused for it
    "prune 2**31 floats, all pruned, no checksum": (lambda: prune_huge(2**31), "rejected"),
    "vae-paper 120,000 hidden layers": (lambda: vae_paper_layers(120_000), "rejected"),
    "vae-rd step overflows float32": (vae_rd_overflow, "rejected"),
}


# ------------------------------------------------------------------------------ measuring


_CHILD = r"""
import json, resource, sys, time, warnings
from vaecompress.api import decompress
from vaecompress.errors import FormatError, UserError
data = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        decompress(data)
        out["outcome"] = "decoded"
    except (FormatError, UserError) as e:
        out["outcome"], out["message"] = "rejected", str(e)
    except MemoryError:
        out["outcome"] = "memory-error"
    except Exception as e:
        out["outcome"], out["message"] = "crash", f"{type(e).__name__}: {e}"
out["warnings"] = [str(w.message) for w in caught]
out["decode_s"] = time.perf_counter() - t0
out["peak_mb_above_base"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def measure(data: bytes, *, timeout_s: float = 120.0) -> dict:
    """Decode `data` in a fresh process: outcome, message, seconds and peak MB above the
    process's base (its ru_maxrss before and after decoding)."""
    with tempfile.NamedTemporaryFile(suffix=".vaec") as f:
        f.write(data)
        f.flush()
        try:
            p = subprocess.run([sys.executable, "-c", _CHILD, f.name], capture_output=True,
                               text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"outcome": "timeout", "decode_s": timeout_s}
    if p.returncode != 0 or not p.stdout.strip():
        return {"outcome": "crash", "message": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def markdown(summary: dict) -> str:
    """The table docs/format.md shows ("Hostile files"), drawn from the results file."""
    lines = ["| case | file | declares | outcome | peak above base | decode |",
             "|------|-----:|---------:|---------|----------------:|-------:|"]
    for r in summary["rows"]:
        lines.append(f"| {r['case']} | {r['file_bytes']:,} B | {r['declared_bytes'] / MB:,.0f} MiB "
                     f"| {r['outcome']} | {r.get('peak_mb_above_base', 0):,.0f} MB "
                     f"| {r.get('decode_s', 0):.2f} s |")
    lines.append(f"\n{summary['cases']} cases: {summary['clean']} clean, {summary['not_clean']} "
                 f"not clean; worst peak {summary['worst_peak_mb_above_base']:,.0f} MB above base.")
    return "\n".join(lines) + "\n"


def doc_tables(results: Path = RESULTS) -> dict[str, str]:
    """The tables docs/format.md shows between `<!-- NAME:begin -->` and `<!-- NAME:end -->`:
    "hostile" from this script's results, "fuzz" from the codec fuzzer's."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuzz_codecs

    return {"hostile": markdown(json.loads(results.read_text())),
            "fuzz": fuzz_codecs.markdown(json.loads(FUZZ_RESULTS.read_text()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", default="")
    ap.add_argument("--markdown", action="store_true",
                    help="print the table of an existing results file (--out) and stop")
    ap.add_argument("--docs", action="store_true",
                    help="with --markdown: write the table into docs/format.md")
    args = ap.parse_args(argv)
    if args.markdown:
        tables = doc_tables(args.out)
        if args.docs:
            doc = ROOT / "docs" / "format.md"
            text = doc.read_text(encoding="utf-8")
            for name, table in tables.items():
                begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
                head, rest = text.split(f"{begin}\n")
                text = f"{head}{begin}\n{table}{end}{rest.split(end, 1)[1]}"
            doc.write_text(text, encoding="utf-8")
        print("\n".join(tables.values()), end="")
        return 0
    only = [s for s in args.only.split(",") if s]
    rows = []
    for name, (make, expected) in CASES.items():
        if only and name not in only:
            continue
        data = make()
        r = measure(data)
        row = {"case": name, "file_bytes": len(data), "expected": expected,
               "declared_bytes": loads(data).decoded_bytes, **r}
        rows.append(row)
        print(f"{name:48s} {len(data):>9,d} B  {r['outcome']:9s} "
              f"{r.get('peak_mb_above_base', float('nan')):8.1f} MB  "
              f"{r.get('decode_s', 0):6.2f} s  {r.get('message', '')[:60]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cases": len(rows),
               "clean": sum(r["outcome"] == r["expected"] for r in rows),
               "worst_peak_mb_above_base": max((r.get("peak_mb_above_base", 0) for r in rows),
                                               default=0.0),
               "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
               "torch": torch.__version__, "rows": rows}
    summary["not_clean"] = summary["cases"] - summary["clean"]
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary), end="")
    return 0 if summary["not_clean"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
