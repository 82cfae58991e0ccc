"""Fuzz the file container: mutate valid files and check that the reader either returns the
original container or fails with FormatError, never another exception.

    python scripts/fuzz.py 10000 [--seed 0] [--mem-mb 1024]

Each case takes one of a few valid files (versions 1, 2 and 4) and applies one mutation: bit
flips, truncation, appended or overwritten random bytes, preamble field edits, or edits of the
header (its JSON text or parsed value, or the json_len/deflate stream of versions 2 and 4)
stored back with the CRC recomputed, so that they reach the checks behind the CRC. Outcomes:

- `same`: loads returned a container equal to the original;
- `rejected`: FormatError (counted by message prefix with --by-message);
- `different`: a header edit with the CRC recomputed that is still a valid file (a changed meta
  value, say); allowed only for those mutations, and the result must write and read back equal;
- `crash`: anything else, including a different container from an edit the CRC should catch.

The exit status is 1 if any case crashed. The address space is limited (--mem-mb above what the
process holds after start-up), so an allocation beyond that bound is a crash too.
`tests/test_fuzz.py` runs the same mutations under hypothesis in the default suite.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import re
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaecompress.errors import FormatError
from vaecompress.format import Container, External, Payload, dumps, file_sha256, loads
from vaecompress.format.container import PREAMBLE_SIZE
from vaecompress.format.zdict import header_zdict

# -------------------------------------------------------------------------- valid files


def base_containers() -> list[Container]:
    decoder = b"\x01\x02" * 300
    return [
        Container(
            codec={"name": "raw", "version": 1, "settings": {}},
            tensors=[{"name": "w", "shape": [2], "dtype": "float32"}],
            payloads=[Payload("w", "raw-f32", "code", struct.pack("<2f", 1.0, -2.0))],
        ),
        Container(
            codec={"name": "vae", "version": 3, "settings": {"latent": 64, "beta": 0.5}},
            tensors=[
                {"name": "fc.weight", "shape": [4, 3], "dtype": "float32"},
                {"name": "fc.bias", "shape": [4], "dtype": "bfloat16"},
                {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"},
            ],
            codec_state={"chunking": {"chunk_size": 2048, "pad": 3}, "mean": [0.1, -0.2]},
            payloads=[
                Payload("latents", "raw-f16", "code", bytes(range(256))),
                Payload("empty", "bytes", "aux", b""),
                Payload("decoder", "safetensors", "model", decoder),
            ],
            externals=[External("shared", "safetensors", "model", file_sha256(decoder), 600)],
            meta={"model": "mnist-mlp", "accuracy": 0.981, "note": "ünïcode ✓"},
        ),
    ]


def base_files() -> list[tuple[Container, bytes]]:
    return [(c, dumps(c, version=v)) for c in base_containers() for v in (1, 2, 4)]


# -------------------------------------------------------------------------- header access


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """(version, header JSON, payload section) of a valid file."""
    version = struct.unpack_from("<H", data, 8)[0]
    (n,) = struct.unpack_from("<I", data, 12)
    stored = data[PREAMBLE_SIZE : PREAMBLE_SIZE + n]
    text = (
        stored
        if version == 1
        else zlib.decompressobj(-15, zdict=header_zdict(version)).decompress(stored[4:])
    )
    return version, text, data[PREAMBLE_SIZE + n :]


def deflate(text: bytes, version: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                         header_zdict(version))
    return struct.pack("<I", len(text)) + z.compress(text) + z.flush()


def assemble(version: int, stored: bytes, section: bytes) -> bytes:
    """A file with `stored` as its stored header and a correct CRC."""
    pre = b"VAECOMP\x00" + struct.pack("<HHII", version, 0, len(stored), zlib.crc32(stored))
    return pre + stored + section


def with_text(data: bytes, text: bytes) -> bytes:
    version, _, section = split(data)
    return assemble(version, text if version == 1 else deflate(text, version), section)


# -------------------------------------------------------------------------- mutations
# Each takes a valid file and a Random and returns the mutated bytes. Those in CRC_FIXED store
# their result with a recomputed CRC, so a different but valid container is a legal outcome.

HOSTILE = [
    -1,
    0,
    1,
    2**31,
    2**40,
    2**63,
    2**64,
    10**30,
    1.5,
    -0.0,
    1e308,
    True,
    False,
    None,
    "",
    "x" * 2000,
    "\ud800",
    "float32",
    "complex64",
    "Tensor",
    "__class__",
    "code",
    "model",
    "aux",
    "a" * 64,
    [],
    {},
    [1] * 40,
    [2**40, 2**40],
    [2**20, 2**20, 2**20],
    [-1],
    [[[]]],
    {"name": "w", "shape": [2], "dtype": "float32"},
]


def m_bitflip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def m_append(data: bytes, rng: random.Random) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


def m_overwrite(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    n = rng.randint(1, 32)
    return data[:start] + rng.randbytes(n) + data[start + n :]


def m_random_file(data: bytes, rng: random.Random) -> bytes:
    # Random bytes behind a valid magic, version and flags, so they reach the later checks.
    return data[:12] + rng.randbytes(rng.randint(0, 400))


def m_preamble(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    field = rng.choice([(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I")])
    size = struct.calcsize(field[1])
    value = rng.choice([0, 1, 2, 3, 0xFFFF, rng.randrange(256**size)]) % (256**size)
    struct.pack_into(field[1], b, field[0], value)
    return bytes(b)


def m_text(data: bytes, rng: random.Random) -> bytes:
    """Byte edits of the header JSON text."""
    _, text, _ = split(data)
    t = bytearray(text)
    for _ in range(rng.randint(1, 4)):
        op, pos = rng.randrange(3), rng.randrange(len(t))
        if op == 0:
            t[pos] = rng.choice(b'{}[]",:0123456789-.eE \\tnux' + bytes([rng.randrange(256)]))
        elif op == 1:
            del t[pos]
        else:
            t.insert(pos, rng.randrange(256))
    return with_text(data, bytes(t))


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, (*path, i))
    return out


def m_value(data: bytes, rng: random.Random) -> bytes:
    """Edits of the parsed header: replace, delete or add a value, duplicate a list entry."""
    _, text, _ = split(data)
    h = json.loads(text)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_nodes(h)[1:])
        parent = h
        for k in path[:-1]:
            parent = parent[k]
        key, op = path[-1], rng.randrange(4)
        # Copies, never the objects themselves: a shared HOSTILE list edited in place leaked from
        # one case into the next (hypothesis saw flaky replays) and could come to contain itself.
        if op == 0:
            parent[key] = copy.deepcopy(rng.choice(HOSTILE))
        elif op == 1:
            del parent[key]
        elif op == 2 and isinstance(parent, dict):
            parent[rng.choice(["name", "shape", "dtype", "length", "offset", "x"])] = (
                copy.deepcopy(rng.choice(HOSTILE))
            )
        elif isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
    return with_text(data, json.dumps(h).encode())


def m_stored(data: bytes, rng: random.Random) -> bytes:
    """The stored header of version 2 and later: json_len or deflate bytes changed, CRC
    recomputed."""
    version, text, section = split(data)
    if version == 1:
        return m_text(data, rng)
    s = bytearray(deflate(text, version))
    if rng.random() < 0.5:
        lengths = [0, len(text) - 1, len(text) + 1, 2**26 + 1, 2**32 - 1]
        struct.pack_into("<I", s, 0, rng.choice(lengths))
    else:
        for _ in range(rng.randint(1, 4)):
            s[rng.randrange(4, len(s))] ^= 1 << rng.randrange(8)
    return assemble(version, bytes(s), section)


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bitflip": m_bitflip,
    "truncate": m_truncate,
    "append": m_append,
    "overwrite": m_overwrite,
    "random-file": m_random_file,
    "preamble": m_preamble,
    "header-text": m_text,
    "header-value": m_value,
    "stored-header": m_stored,
}
CRC_FIXED = frozenset({"header-text", "header-value", "stored-header"})


def outcome(original: Container, mutated: bytes, mutator: str) -> str:
    """`same`, `rejected: <message prefix>`, `different`, or `crash: <what>`."""
    try:
        c = loads(mutated)
    except FormatError as e:
        return "rejected: " + category(str(e))
    except Exception as e:  # the property under test: nothing else may escape
        return f"crash: {type(e).__name__}: {str(e)[:200]}"
    if c == original:
        return "same"
    if mutator not in CRC_FIXED:
        return "crash: a mutation behind the CRC read as a different container"
    try:  # a valid file must describe a container that writes and reads back equal
        c.decoded_bytes  # noqa: B018
        if loads(dumps(c)) != c:
            return "crash: different container does not round-trip"
    except Exception as e:
        return f"crash: different container does not round-trip: {type(e).__name__}: {e}"
    return "different"


def category(message: str) -> str:
    """A FormatError message without its particulars (names, numbers, JSON parser detail)."""
    m = re.sub(
        r"\b(name|kind|role|dtype|format_version) .*? (is not|does not)", r"\1 _ \2", message
    )
    m = re.sub(r"'[^']*'", "'_'", m)
    m = re.sub(r"0x[0-9a-f]+|(?<![\w-])\d+", "N", m)
    m = m.split(" (")[0]
    if m.startswith("bad header JSON"):
        return "bad header JSON"
    return m if len(m) <= 64 else m[:61] + "..."


# -------------------------------------------------------------------------- command line


def _limit_memory(extra_mb: int) -> None:
    try:
        import resource

        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = vm * 1024 + extra_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, StopIteration, ValueError):
        print("note: no memory limit on this platform", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", type=int, help="number of mutated files to read (per codec "
                    "with --codecs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--mem-mb", type=int, default=1024, help="address space allowed above start; 0: no limit"
    )
    ap.add_argument("--codecs", action="store_true",
                    help="fuzz every codec's decoder instead (scripts/fuzz_codecs.py)")
    ap.add_argument("--only", help="with --codecs: comma-separated codec names")
    ap.add_argument("--out", type=Path, help="with --codecs: write the counts to this JSON file")
    args = ap.parse_args(argv)
    if args.codecs:
        import fuzz_codecs

        files_first = fuzz_codecs.available_codecs()  # imports torch before the limit
        if args.mem_mb > 0:
            _limit_memory(args.mem_mb)
        only = args.only.split(",") if args.only else files_first
        command = " ".join(["python scripts/fuzz.py", *(sys.argv[1:] if argv is None else argv)])
        return fuzz_codecs.run(args.cases, args.seed, only, out=args.out, command=command)
    files = base_files()
    if args.mem_mb > 0:
        _limit_memory(args.mem_mb)
    rng = random.Random(args.seed)
    by_outcome: collections.Counter[str] = collections.Counter()
    by_reason: collections.Counter[str] = collections.Counter()
    by_mutator: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    crashes: list[str] = []
    slowest = 0.0
    for i in range(args.cases):
        original, data = rng.choice(files)
        name = rng.choice(sorted(MUTATORS))
        mutated = MUTATORS[name](data, rng)
        t0 = time.perf_counter()
        result = outcome(original, mutated, name)
        slowest = max(slowest, time.perf_counter() - t0)
        kind = result.split(":")[0]
        by_outcome[kind] += 1
        by_mutator[name][kind] += 1
        if kind == "rejected":
            by_reason[result.removeprefix("rejected: ")] += 1
        if result.startswith("crash"):
            crashes.append(f"case {i} ({name}): {result}")
    print(f"cases {args.cases}, seed {args.seed}, slowest read {slowest * 1000:.1f} ms")
    for kind in ("same", "rejected", "different", "crash"):
        print(f"  {kind:<10} {by_outcome[kind]:>7}")
    print("by mutation:")
    for name in sorted(by_mutator):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(by_mutator[name].items()))
        print(f"  {name:<14} {counts}")
    print("rejections by reason:")
    for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:>7}  {reason}")
    for line in crashes[:20]:
        print(line)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
