"""`zipnn`: ZipNN (Hershcovitch et al. 2024), lossless compression of float weights, as an
optional peer codec: the bar for the project's `zstd`.

ZipNN groups the bytes of a float array by position (all exponent bytes together, then each
mantissa byte: the exponent byte of trained weights is highly skewed, the mantissa bytes are
nearly random), moves the sign bit next to the mantissa, and Huffman-codes each byte group per
256 KiB chunk, storing a chunk raw where Huffman saves under 5 %. It runs the real package
(zipnn 0.5.4, a C extension; `scripts/setup.sh zipnn`) through its public `ZipNN` byte API.

What is stored: the floating tensors are concatenated in manifest order per storage dtype
(float32, float16, bfloat16; float64, which ZipNN has no mode for, goes through its float32 mode
as pairs of 32-bit words, still exact), the concatenation is cut into segments of at most
`SEGMENT_BYTES`, and each segment's ZipNN stream (its 32-byte header, chunk table and coded
bytes, all counted) is one `code` payload named `<dtype>.<k>`. Integer and bool tensors travel
in the usual `passthrough` payload. Decoding reads only the payloads and the manifest and gives
back every bit (NaN and Inf included).

ZipNN's decoder (C) trusts its stream: a damaged chunk table makes it read or write out of
bounds, and a damaged Huffman chunk makes it free a buffer twice (glibc aborts the process). So
decoding is guarded twice. First `check_stream` verifies all of a stream that the C code relies
on: the header is the one this ZipNN writes for that dtype (version, byte/bit reordering,
chunk size), the lengths match the manifest, every chunk's type is raw or Huffman, the
cumulative sizes grow and add up to the stream's length, and a raw chunk is exactly as long as
its output. Then the C decoder (`zipnn_core.combine_dtype`, what `ZipNN.decompress` calls for
a byte stream, with the parameters of the checked header) runs in a worker process of this
interpreter (`python -I`, importing only that extension: about 50 ms to start): a crash there
is a `FormatError` here. The worker's own time is `last_decode_s` (as for `nncodec`). Segments
keep the C decoder's stack arrays (one entry per chunk) small whatever the model's size.
ZipNN's compressor rewrites its input buffer in place, so it is given a private copy.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    import_failure,
    join_passthrough,
    peer_hint,
    register,
    split_passthrough,
)
from vaecompress.coding.floats import float_specs, numel, tensor_bytes, tensor_from_bytes
from vaecompress.errors import FormatError, UserError
from vaecompress.format import DTYPE_ITEMSIZE, ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.params.vector import dtype_from_name

ZIPNN_VERSION = "0.5.4"
NOT_INSTALLED = (f"zipnn is not installed: run scripts/setup.sh zipnn (pip install --no-deps "
                 f"zipnn=={ZIPNN_VERSION}; it builds a small C extension)")
KIND = "zipnn"
# The ZipNN mode (its bytearray_dtype) of each storage dtype, and its byte groups per word.
WORDS = {"float32": "float32", "float64": "float32", "float16": "float16", "bfloat16": "bfloat16"}
GROUPS = {"float32": 4, "float16": 2, "bfloat16": 2}
CHUNK = 256 * 1024  # ZipNN's default compression_chunk (its Huffman blocks stay <= 128 KiB)
SEGMENT_BYTES = 256 * CHUNK  # 64 MiB of raw floats per ZipNN stream
HEADER = 32
CHUNK_RAW, CHUNK_HUFFMAN = 0, 1

_ZIPNN: dict[str, Any] = {}  # "class" -> zipnn.ZipNN, or "why" -> why it cannot be imported


def _zipnn_class() -> Any:
    if not _ZIPNN:
        try:
            _ZIPNN["class"] = importlib.import_module("zipnn").ZipNN
        except Exception as e:  # ImportError, or a broken build of the extension
            _ZIPNN["why"] = import_failure(e)
    return _ZIPNN.get("class")


def zipnn_available() -> bool:
    return _zipnn_class() is not None


def _zipnn(word: str, threads: int) -> Any:
    cls = _zipnn_class()
    if cls is None:
        raise UserError(ZipNNCodec.available() or NOT_INSTALLED)
    return cls(input_format="byte", bytearray_dtype=word, threads=threads,
               compression_chunk=CHUNK)


def compress_words(raw: bytes, word: str, threads: int = 1) -> bytes:
    """One ZipNN stream of `raw` (a non-empty whole number of `word`s)."""
    return bytes(_zipnn(word, threads).compress(bytearray(raw)))  # it rewrites its input


_REFERENCE: dict[str, bytes] = {}


def _reference_header(word: str) -> bytes:
    """The first 16 header bytes this ZipNN writes in `word` mode (magic, version, byte and
    bit reordering, method, format, flags, chunk size, dtype): a stream must carry the same."""
    if word not in _REFERENCE:
        sample = np.linspace(-1, 1, 64, dtype=np.float32).view(np.uint8).tobytes()
        _REFERENCE[word] = compress_words(sample, word)[:16]
    return _REFERENCE[word]


def check_stream(stream: bytes, word: str, raw_len: int) -> None:
    """Raise FormatError unless `stream` is safe to hand ZipNN's C decoder for `raw_len` bytes
    (see the module docstring for what is checked and why)."""
    groups = GROUPS[word]
    if len(stream) < HEADER or stream[:16] != _reference_header(word):
        raise FormatError(f"zipnn stream header is not that of zipnn {ZIPNN_VERSION} "
                          f"{word} data")
    orig = int.from_bytes(stream[16:24], "little")
    total = int.from_bytes(stream[24:32], "little")
    if orig != raw_len or total != len(stream):
        raise FormatError(f"zipnn stream says {orig} bytes in {total}; the manifest needs "
                          f"{raw_len} in {len(stream)}")
    chunks = -(-raw_len // CHUNK)
    table = HEADER + groups * chunks * 9
    if len(stream) < table:
        raise FormatError("zipnn stream is shorter than its chunk table")
    types = np.frombuffer(stream, np.uint8, groups * chunks, HEADER).reshape(groups, chunks)
    ends = np.frombuffer(stream, "<u8", groups * chunks,
                         HEADER + groups * chunks).reshape(groups, chunks).astype(object)
    if not np.isin(types, (CHUNK_RAW, CHUNK_HUFFMAN)).all():
        raise FormatError("zipnn stream has a chunk of unknown type")
    out_len = _chunk_lengths(raw_len, groups, chunks)
    data = 0
    for b in range(groups):
        start = 0
        for c in range(chunks):
            length = ends[b, c] - start
            if length < 0 or (types[b, c] == CHUNK_RAW and length != out_len[c][b]) \
                    or (types[b, c] == CHUNK_HUFFMAN and length == 0):
                raise FormatError(f"zipnn stream: chunk {c} of byte group {b} has a bad size")
            start = ends[b, c]
        data += start
    if table + data != len(stream):
        raise FormatError(f"zipnn stream holds {len(stream) - table} coded bytes, its chunk "
                          f"table {data}")



def _chunk_lengths(raw_len: int, groups: int, chunks: int) -> list[list[int]]:
    """Bytes of each byte group in each chunk once decoded, as ZipNN's decoder computes them."""
    full = [CHUNK // groups] * groups
    last = raw_len - CHUNK * (chunks - 1)
    tail = [last // groups + (1 if b < last % groups else 0) for b in range(groups)]
    return [full] * (chunks - 1) + [tail]


# Decodes checked streams with ZipNN's C decoder alone. stdin: one JSON line (the jobs), then
# the streams back to back; stdout: the decoded bytes back to back; stderr: {"elapsed_s": ...}.
WORKER_SOURCE = r"""
import json, sys, time
import zipnn_core
request = json.loads(sys.stdin.buffer.readline())
data = memoryview(sys.stdin.buffer.read())
parts, pos = [], 0
t0 = time.perf_counter()
for size, header, groups, bit_mode, byte_mode, chunk, raw_len in request["jobs"]:
    stream = data[pos + header : pos + size]
    pos += size
    raw = zipnn_core.combine_dtype(stream, groups, bit_mode, byte_mode, chunk, raw_len,
                                   request["threads"])
    if len(raw) != raw_len:
        sys.exit(3)
    parts.append(raw)
elapsed = time.perf_counter() - t0
for raw in parts:
    sys.stdout.buffer.write(raw)
sys.stderr.write(json.dumps({"elapsed_s": elapsed}))
"""
DECODE_TIMEOUT_S = 600.0


def decompress_streams(streams: list[tuple[bytes, str, int]], threads: int = 1
                       ) -> tuple[list[bytes], float | None]:
    """The bytes of (stream, word, raw length) triples, each stream checked first, all decoded
    in one worker process; and the worker's own decoding time."""
    jobs = []
    for stream, word, raw_len in streams:
        check_stream(stream, word, raw_len)
        ref = _reference_header(word)  # == the stream's: the decoder's parameters
        jobs.append([len(stream), HEADER, GROUPS[word], ref[6], ref[5], 2 ** ref[14], raw_len])
    if not jobs:
        return [], None
    request = json.dumps({"jobs": jobs, "threads": max(threads, 1)}).encode() + b"\n"
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", WORKER_SOURCE],
                              input=request + b"".join(s for s, _, _ in streams),
                              capture_output=True, timeout=DECODE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise FormatError(f"zipnn did not finish decoding in {DECODE_TIMEOUT_S:.0f} s") from None
    total = sum(raw_len for _, _, raw_len in streams)
    if proc.returncode != 0 or len(proc.stdout) != total:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise FormatError(f"zipnn stream is corrupt: its decoder exited with status "
                          f"{proc.returncode}" + (f" ({tail[-1][:200]})" if tail else ""))
    out, pos = [], 0
    for _, _, raw_len in streams:
        out.append(proc.stdout[pos : pos + raw_len])
        pos += raw_len
    return out, _elapsed(proc.stderr)


def _elapsed(stderr: bytes) -> float | None:
    try:
        t = json.loads(stderr.decode(errors="replace").strip().splitlines()[-1])["elapsed_s"]
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 else None


def decompress_words(stream: bytes, word: str, raw_len: int, threads: int = 1) -> bytes:
    """One checked stream's bytes (`decompress_streams` of one)."""
    return decompress_streams([(stream, word, raw_len)], threads)[0][0]


@dataclass(frozen=True)
class ZipNNSettings:
    threads: int = 1  # ZipNN's worker threads (same bytes whatever the number); 0: ZipNN's


def _segments(total: int) -> list[tuple[int, int]]:
    return [(start, min(SEGMENT_BYTES, total - start)) for start in range(0, total, SEGMENT_BYTES)]


@register
class ZipNNCodec(Codec):
    name = "zipnn"
    version = 1
    Settings = ZipNNSettings
    lossless = True  # every bit comes back, NaN and Inf included

    def __init__(self, settings: Any = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        # ZipNN's own time of the last `decode`, inside its worker (no process start); None
        # before one. `vaecompress.decompress(stats=...)` reports it as `decode_s_inside`.
        self.last_decode_s: float | None = None

    @classmethod
    def available(cls) -> str | None:
        return peer_hint(NOT_INSTALLED, "zipnn", None if zipnn_available() else _ZIPNN["why"])

    def validate(self) -> None:
        t = self.settings.threads
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 256:
            raise UserError(f"zipnn: threads must be an integer in 0..256, got {t!r}")

    def streams(self) -> bool:
        return True  # lossless: a shard decodes to its own bytes

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        coded, raw = split_passthrough(state)
        blobs: dict[str, list[bytes]] = {}
        for t in coded.values():
            blobs.setdefault(str(t.dtype).removeprefix("torch."), []).append(tensor_bytes(t))
        c = self.new_container(state)
        report: dict[str, Any] = {"raw_bytes": 0, "zipnn_bytes": 0}
        for dtype in sorted(blobs):
            blob = b"".join(blobs[dtype])
            word = WORDS[dtype]
            for k, (start, size) in enumerate(_segments(len(blob))):
                stream = compress_words(blob[start : start + size], word, self.settings.threads)
                c.payloads.append(Payload(f"{dtype}.{k}", KIND, ROLE_CODE, stream))
                report["zipnn_bytes"] += len(stream)
            report["raw_bytes"] += len(blob)
        add_passthrough(c, raw)
        return Encoded(c, report=report)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        specs = float_specs(c.tensors)
        sizes: dict[str, int] = {}
        for spec in specs:
            if spec["dtype"] not in WORDS:
                raise FormatError(f"zipnn cannot hold dtype {spec['dtype']}")
            sizes[spec["dtype"]] = sizes.get(spec["dtype"], 0) + \
                numel(list(spec["shape"])) * DTYPE_ITEMSIZE[spec["dtype"]]
        expected = {f"{d}.{k}" for d, total in sizes.items() for k in range(len(_segments(total)))}
        coded = {p.name for p in c.payloads if p.role == ROLE_CODE}
        if coded != expected:
            raise FormatError(f"zipnn file has payloads {sorted(coded)}, its manifest needs "
                              f"{sorted(expected)}")
        jobs = [(dtype, c.payload(f"{dtype}.{k}", kinds=[KIND]).data, size)
                for dtype, total in sizes.items() for k, (_, size) in enumerate(_segments(total))]
        raws, self.last_decode_s = decompress_streams(
            [(stream, WORDS[dtype], size) for dtype, stream, size in jobs], self.settings.threads)
        blobs = dict.fromkeys(sizes, b"")
        for (dtype, _, _), raw in zip(jobs, raws, strict=True):
            blobs[dtype] += raw
        out: StateDict = {}
        pos = dict.fromkeys(blobs, 0)
        for spec in specs:
            dtype, shape = spec["dtype"], list(spec["shape"])
            size = numel(shape) * DTYPE_ITEMSIZE[dtype]
            data = blobs[dtype][pos[dtype] : pos[dtype] + size]
            pos[dtype] += size
            out[spec["name"]] = tensor_from_bytes(data, dtype_from_name(dtype), shape)
        return join_passthrough(c, out)
