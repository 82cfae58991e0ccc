"""Integer symbol streams to bytes and back: entropy coding and fixed-width bit packing.

Boundary: this module knows nothing about weights, tensors or containers. It turns arrays of
non-negative integers into self-contained byte strings (everything the decoder needs, including
the frequency table, is inside them) and back, deterministically and identically on every
machine. The baseline codecs (quantization, k-means, Deep Compression) build on it.

Stream layout (`encode_symbols`), all integers LEB128 varints unless said otherwise:

    mode:u8  n
    mode 0 (empty):    nothing more
    mode 1 (constant): symbol
    mode 2 (packed):   width (bits per symbol), then ceil(n*width/8) bytes, MSB first
    mode 3 (ANS):      k (distinct symbols), k symbol deltas (first absolute, then gap-1),
                       k quantized counts (each >= 1), then the ANS words (uint32 LE)

The encoder picks whichever mode is smallest. The ANS model is a categorical distribution over
the k symbols present only (so a large alphabet with few symbols used costs nothing), with
probabilities = count / sum(count) computed in float64 from the stored integers, so the decoder
rebuilds exactly the model the encoder used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

from vaecompress.errors import FormatError

MODE_EMPTY, MODE_CONST, MODE_PACKED, MODE_ANS = 0, 1, 2, 3
MAX_SYMBOL = 2**32 - 1
# constriction's categorical model has 24-bit precision: every symbol needs at least 2**-24 of
# the mass, so tables far below that are safe. Larger sets of distinct symbols are packed.
MAX_ANS_DISTINCT = 2**20
_UNPACK_SLICE = 2**17  # values unpacked at a time, in units of 8
# A categorical model of 24-bit precision gives no symbol more than 1 - 2**-24 of the mass, so
# an ANS stream spends at least -log2(1 - 2**-24) bits a symbol (about 8.6e-8); a stream of N
# bytes may declare at most that many symbols (plus the coder's 64 bits of state), checked
# against the stored table's own largest probability before decoding.
_ANS_PRECISION = 24
# Count totals tried when quantizing the frequency table: a coarse table is cheaper to store and
# costs little coding efficiency on short streams; the best total is chosen per stream.
_COUNT_TOTALS = (2**6, 2**8, 2**10, 2**12, 2**16)


# ------------------------------------------------------------------------------ varints


def write_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varints are unsigned")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); FormatError when the data ends inside the varint."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise FormatError("symbol stream is truncated (inside a varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise FormatError("symbol stream holds an over-long varint")


def _varint_len(value: int) -> int:
    return max(1, math.ceil(value.bit_length() / 7))


# ---------------------------------------------------------------------- bit packing


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers at `bits` each, MSB first (two 4-bit values share a byte:
    the first in the high nibble); byte-aligned widths are stored little-endian."""
    v = np.asarray(values).astype(np.uint64, copy=False).reshape(-1)
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    if bits in (8, 16, 32):
        return v.astype(f"<u{bits // 8}").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bitarr = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1)).tobytes()


def uint_dtype(bits: int) -> np.dtype:
    """The narrowest unsigned integer type that holds `bits`-bit values."""
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


def unpack_uint(data: bytes | memoryview, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_uint`: `n` values in the narrowest unsigned type of `bits` bits.
    `data` must be exactly `packed_size(n, bits)` bytes: a count that its bytes cannot hold is
    refused before anything is allocated."""
    need = packed_size(n, bits)
    if len(data) != need:
        raise FormatError(f"packed data holds {len(data)} bytes, {need} needed")
    if bits in (8, 16, 32):
        return np.frombuffer(bytes(data), dtype=f"<u{bits // 8}").astype(uint_dtype(bits))
    dtype = uint_dtype(bits)
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if bits == 4:  # two to a byte, high nibble first
        out = np.empty(2 * raw.size, dtype=np.uint8)
        out[0::2], out[1::2] = raw >> 4, raw & 0x0F
        return out[:n]
    out = np.zeros(n, dtype=dtype)
    # In slices, one bit plane at a time: n*bits bits of working space at most a slice's.
    step = 8 * _UNPACK_SLICE  # a multiple of 8 values starts on a byte boundary for any width
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        chunk = raw[lo * bits // 8 : (hi * bits + 7) // 8]
        planes = np.unpackbits(chunk, count=(hi - lo) * bits).reshape(hi - lo, bits)
        acc = np.zeros(hi - lo, dtype=dtype)
        for b in range(bits):
            acc = (acc << dtype.type(1)) | planes[:, b]
        out[lo:hi] = acc
    return out


def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


# -------------------------------------------------------------------- entropy coding


def _quantize_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """Counts rescaled to about `total`, every present symbol kept at >= 1 (integer only, so the
    result is the same everywhere)."""
    n = int(counts.sum())
    if total >= n:
        return counts.astype(np.int64)
    q = (counts.astype(np.int64) * total + n // 2) // n
    return np.maximum(q, 1)


def _table_bytes(symbols: np.ndarray, q: np.ndarray) -> int:
    deltas = np.diff(symbols, prepend=-1) - 1
    return sum(_varint_len(int(d)) for d in deltas) + sum(_varint_len(int(c)) for c in q)


def _estimate_bits(counts: np.ndarray, q: np.ndarray) -> float:
    p = q / q.sum()
    return float(-(counts * np.log2(p)).sum())


def _categorical(q: np.ndarray) -> constriction.stream.model.Categorical:
    probs = q.astype(np.float64) / float(q.sum())
    return constriction.stream.model.Categorical(probs, perfect=False)


def _histogram(s: np.ndarray, hi: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """(the distinct symbols in order, their counts, a function giving each symbol's rank among
    them as int32). Over a small alphabet by counting (no sorted copy of the symbols: a large
    tensor's stream is coded at a few bytes a symbol), else by sorting; the same results."""
    if hi <= 2 * s.size + 1024:
        full = np.bincount(s, minlength=hi + 1)
        present = np.flatnonzero(full)

        def by_table() -> np.ndarray:
            rank = np.zeros(hi + 1, dtype=np.int32)
            rank[present] = np.arange(present.size, dtype=np.int32)
            return rank[s]

        return present, full[present], by_table
    present, counts = np.unique(s, return_counts=True)
    return present, counts, lambda: np.searchsorted(present, s).astype(np.int32)


def encode_symbols(symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
    """Encode non-negative integers (< alphabet_size when given) into a self-contained stream."""
    s = np.asarray(symbols).reshape(-1)
    if s.size and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {s.dtype}")
    if not (s.dtype.kind == "i" or (s.dtype.kind == "u" and s.dtype.itemsize <= 4)):
        s = s.astype(np.int64)  # narrower integers kept as they are: the same stream
    n = int(s.size)
    out = bytearray()
    if n == 0:
        out.append(MODE_EMPTY)
        write_varint(out, 0)
        return bytes(out)
    lo, hi = int(s.min()), int(s.max())
    limit = MAX_SYMBOL if alphabet_size is None else alphabet_size - 1
    if lo < 0 or hi > min(limit, MAX_SYMBOL):
        raise ValueError(f"symbols must lie in [0, {min(limit, MAX_SYMBOL)}], got [{lo}, {hi}]")
    if lo == hi:
        out.append(MODE_CONST)
        write_varint(out, n)
        write_varint(out, lo)
        return bytes(out)

    width = max(1, hi.bit_length())
    packed_cost = packed_size(n, width) + _varint_len(width)
    present, counts, ranks_of = _histogram(s, hi)
    best: tuple[float, np.ndarray] | None = None
    if len(present) <= MAX_ANS_DISTINCT:
        for total in _COUNT_TOTALS:
            q = _quantize_counts(counts, total)
            cost = _estimate_bits(counts, q) / 8 + 8 + _table_bytes(present, q) \
                + _varint_len(len(present))
            if best is None or cost < best[0]:
                best = (cost, q)
            if total >= n:
                break
    words = None
    if best is not None and best[0] < packed_cost:
        words = _ans_words(ranks_of(), best[1])
    if words is None or best is None:
        out.append(MODE_PACKED)
        write_varint(out, n)
        write_varint(out, width)
        out += pack_uint(s, width)
        return bytes(out)

    q = best[1]
    out.append(MODE_ANS)
    write_varint(out, n)
    write_varint(out, len(present))
    prev = -1
    for sym in present.tolist():
        write_varint(out, sym - prev - 1)
        prev = sym
    for c in q.tolist():
        write_varint(out, c)
    out += words
    return bytes(out)


def _ans_words(ranks: np.ndarray, q: np.ndarray) -> bytes | None:
    """The ANS words of `ranks` under table `q`, or None when a reader would refuse them: the
    coder starts from an empty state, where the symbols of rank 0 cost nothing, so a run of
    them at the end of the stream (coded first) can leave fewer words than the reader's bound
    on symbols per byte (`_ans_capacity`) allows for their count. Such a stream is stored
    another way; every stream the reader accepts is written as before."""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks, _categorical(q))
    words = coder.get_compressed().astype("<u4").tobytes()
    return words if len(ranks) <= _ans_capacity(q, len(words)) else None


def decode_symbols(data: bytes | memoryview, n: int | None = None) -> np.ndarray:
    """Decode a stream of `encode_symbols` into the narrowest unsigned type that holds its
    symbols (a constant stream: a read-only broadcast view, no memory per symbol); `n`, when
    given, must match the count stored in the stream (a cheap consistency check against a
    mixed-up segment table). The stream must end exactly where its mode says it does, and its
    count must be one its bytes can hold, checked before anything is allocated."""
    if not data:
        raise FormatError("symbol stream is empty")
    mode = data[0]
    count, pos = read_varint(data, 1)
    if n is not None and count != n:
        raise FormatError(f"symbol stream holds {count} symbols, expected {n}")
    if mode == MODE_EMPTY:
        if count:
            raise FormatError(f"empty symbol stream claims {count} symbols")
        _expect_end(data, pos)
        return np.zeros(0, dtype=np.uint8)
    if mode == MODE_CONST:
        sym, pos = read_varint(data, pos)
        _expect_end(data, pos)
        if sym > MAX_SYMBOL:
            raise FormatError(f"symbol stream holds symbol {sym}, beyond {MAX_SYMBOL}")
        one = np.array(sym, dtype=uint_dtype(max(1, sym.bit_length())))
        return np.broadcast_to(one, (count,))
    if mode == MODE_PACKED:
        width, pos = read_varint(data, pos)
        if not 1 <= width <= 32:
            raise FormatError(f"packed symbol stream has width {width}")
        return unpack_uint(memoryview(data)[pos:], width, count)
    if mode != MODE_ANS:
        raise FormatError(f"unknown symbol stream mode {mode}")
    k, pos = read_varint(data, pos)
    if not 2 <= k <= min(count, MAX_ANS_DISTINCT):
        raise FormatError(f"symbol stream has a table of {k} symbols for {count} symbols")
    present = np.empty(k, dtype=np.int64)
    prev = -1
    for i in range(k):
        d, pos = read_varint(data, pos)
        prev = prev + d + 1
        if prev > MAX_SYMBOL:
            raise FormatError(f"symbol stream holds a symbol beyond {MAX_SYMBOL}")
        present[i] = prev
    q = np.empty(k, dtype=np.int64)
    for i in range(k):
        q[i], pos = read_varint(data, pos)
    if (q < 1).any():
        raise FormatError("symbol stream has a zero count in its table")
    words = bytes(memoryview(data)[pos:])
    if len(words) % 4:
        raise FormatError("ANS data is not a whole number of 32-bit words")
    if count > _ans_capacity(q, len(words)):
        raise FormatError(f"ANS stream of {len(words)} bytes cannot hold {count} symbols "
                          "under its own table")
    compressed = np.frombuffer(words, dtype="<u4").astype(np.uint32)
    try:
        ranks = constriction.stream.stack.AnsCoder(compressed).decode(_categorical(q), count)
    except (ValueError, RuntimeError) as e:  # constriction reports corrupt data this way
        raise FormatError(f"ANS data cannot be decoded: {e}") from None
    return present.astype(uint_dtype(int(present[-1]).bit_length()))[np.asarray(ranks)]


def _ans_capacity(q: np.ndarray, nbytes: int) -> int:
    """The most symbols an ANS stream of `nbytes` can hold under table `q`: each symbol
    costs at least -log2(p_max) bits, p_max the largest probability the 24-bit model can give
    (the table's, raised by the rounding of each of the others to 2**-24), plus 64 bits of
    coder state and a margin of one symbol in a million for the float arithmetic."""
    total = float(q.sum())
    p_max = min(float(q.max()) / total + len(q) * 2.0**-_ANS_PRECISION,
                1 - (len(q) - 1) * 2.0**-_ANS_PRECISION)
    bits = -math.log2(p_max)
    return int((8 * nbytes + 64) / bits * (1 + 1e-6)) + 1


def _expect_end(data: bytes | memoryview, pos: int) -> None:
    if pos != len(data):
        raise FormatError(f"symbol stream has {len(data) - pos} bytes after its end")


# ------------------------------------------------------- tables kept outside the stream


@dataclass(frozen=True)
class Table:
    """A frequency table kept outside the streams coded under it (a prior that several files
    share, stored once): the distinct values, sorted (any int64), and their counts (>= 1)."""

    values: np.ndarray  # int64, strictly increasing
    counts: np.ndarray  # int64, >= 1, one per value


def pooled_table(arrays: list[np.ndarray]) -> Table:
    """The table of the values of all `arrays` together, its counts quantized to the total of
    `_COUNT_TOTALS` that makes the table (stored once) and all the arrays coded under it the
    smallest (every value present kept at >= 1)."""
    flat = np.concatenate([np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays])
    if flat.size == 0:
        raise ValueError("no values to count")
    values, counts = np.unique(flat, return_counts=True)
    if len(values) > MAX_ANS_DISTINCT:
        raise ValueError(f"{len(values)} distinct values; a table holds {MAX_ANS_DISTINCT}")
    zig = np.where(np.diff(values, prepend=0) >= 0, 2 * np.diff(values, prepend=0),
                   -2 * np.diff(values, prepend=0) - 1)
    value_bytes = sum(_varint_len(int(z)) for z in zig)
    best: tuple[float, np.ndarray] | None = None
    for total in _COUNT_TOTALS:
        q = _quantize_counts(counts, total)
        cost = _estimate_bits(counts, q) / 8 + value_bytes + sum(_varint_len(int(c)) for c in q)
        if best is None or cost < best[0]:
            best = (cost, q)
        if total >= flat.size:
            break
    assert best is not None
    return Table(values.astype(np.int64), best[1])


def encode_with(values: np.ndarray, table: Table) -> bytes:
    """`n` (varint), then the ANS words of `values` under `table` (ValueError when a value is
    not in it, or when a reader would refuse the stream: `_ans_words`). A table of one value
    codes no words."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    out = bytearray()
    write_varint(out, int(v.size))
    if v.size == 0 or len(table.values) == 1:
        if v.size and not bool((v == table.values[0]).all()):
            raise ValueError("a value is not in the table")
        return bytes(out)
    ranks = np.searchsorted(table.values, v)
    if bool((ranks >= len(table.values)).any()) or \
            not bool((table.values[np.minimum(ranks, len(table.values) - 1)] == v).all()):
        raise ValueError("a value is not in the table")
    words = _ans_words(ranks.astype(np.int32), table.counts)
    if words is None:
        raise ValueError("the stream would hold more symbols than its bytes can under the "
                         "table (a free run of its first value)")
    return bytes(out + words)


def decode_with(data: bytes | memoryview, n: int, table: Table) -> np.ndarray:
    """The int64 values of a stream of `encode_with` under `table`; its count must be `n` and
    one its bytes can hold, checked before anything is allocated."""
    count, pos = read_varint(data, 0)
    if count != n:
        raise FormatError(f"symbol stream holds {count} symbols, expected {n}")
    words = bytes(memoryview(data)[pos:])
    if len(table.values) == 1:
        _expect_end(data, pos)
        return np.full(count, table.values[0], dtype=np.int64)
    if len(words) % 4:
        raise FormatError("ANS data is not a whole number of 32-bit words")
    if count > _ans_capacity(table.counts, len(words)):
        raise FormatError(f"ANS stream of {len(words)} bytes cannot hold {count} symbols "
                          "under the shared table")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    compressed = np.frombuffer(words, dtype="<u4").astype(np.uint32)
    try:
        ranks = constriction.stream.stack.AnsCoder(compressed).decode(
            _categorical(table.counts), count)
    except (ValueError, RuntimeError) as e:
        raise FormatError(f"ANS data cannot be decoded: {e}") from None
    return table.values[np.asarray(ranks)]


def tables_to_bytes(tables: list[Table | None]) -> bytes:
    """Tables in order (None: no table for that slot): per slot a varint k (0: none), the k
    values as zigzag varints of their gaps (the first absolute), the k counts as varints."""
    out = bytearray()
    write_varint(out, len(tables))
    for t in tables:
        if t is None:
            write_varint(out, 0)
            continue
        write_varint(out, len(t.values))
        prev = 0
        for v in t.values.tolist():
            d = v - prev
            write_varint(out, 2 * d if d >= 0 else -2 * d - 1)
            prev = v
        for c in t.counts.tolist():
            write_varint(out, c)
    return bytes(out)


def tables_from_bytes(data: bytes, *, max_tables: int) -> list[Table | None]:
    """The tables of `tables_to_bytes`, every field checked (FormatError)."""
    view = memoryview(data)
    n, pos = read_varint(view, 0)
    if n > max_tables:
        raise FormatError(f"the prior holds {n} tables, more than the {max_tables} expected")
    out: list[Table | None] = []
    for _ in range(n):
        k, pos = read_varint(view, pos)
        if k == 0:
            out.append(None)
            continue
        if k > min(MAX_ANS_DISTINCT, len(data)):
            raise FormatError(f"a table of the prior declares {k} values")
        values = np.empty(k, dtype=np.int64)
        prev = 0
        for i in range(k):
            u, pos = read_varint(view, pos)
            prev += u // 2 if u % 2 == 0 else -(u + 1) // 2
            if abs(prev) > 2**31:
                raise FormatError("a table of the prior holds a value out of range")
            values[i] = prev
        counts = np.empty(k, dtype=np.int64)
        for i in range(k):
            counts[i], pos = read_varint(view, pos)
        if (counts < 1).any() or counts.sum() > 2**24 or \
                (k > 1 and not bool((np.diff(values) > 0).all())):
            raise FormatError("a table of the prior is malformed")
        out.append(Table(values, counts))
    _expect_end(view, pos)
    return out


# ------------------------------------------------------------------------ segments


def join_segments(parts: list[bytes]) -> tuple[bytes, list[int]]:
    """Concatenate byte strings; the lengths go into the codec state so each can be found."""
    return b"".join(parts), [len(p) for p in parts]


def split_segments(data: bytes, lengths: list[int]) -> list[bytes]:
    if not isinstance(lengths, list) or not all(isinstance(x, int) and x >= 0 for x in lengths):
        raise FormatError("segment table must be a list of non-negative integers")
    if sum(lengths) != len(data):
        raise FormatError(f"segments add up to {sum(lengths)} bytes, payload has {len(data)}")
    out, pos = [], 0
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    return out
