"""Integer latent tensors and their affine decoders, to one byte string and back.

The stored form of a rate-distortion VAE codec (`vae-rd`, `vae-rd-free`), after EPR's: per
tensor, the decoder's step sizes and the entropy-coded integer latents. Everything is binary and
in manifest order, so the container header carries no per-tensor JSON. All integers are LEB128
varints; a signed one is zigzag-coded.

    per coded tensor (the floating, non-empty tensors of the manifest, in its order):
      flags:u8      bit 0: a column mask follows; bit 1: a row mask follows;
                    bit 2: one step per row (else one step for the tensor);
                    bit 3: fixed-length codes instead of entropy coding;
                    bit 4: the latents (not latent - offset) are coded under the tensor's
                    table of a prior shared by a family of files (`recode_shared`;
                    `coding.entropy.encode_with`: a count, then the ANS words), kept in
                    the family's prior file, not in the record (codec version 2)
                    bit 5: dependent (trellis-coded) quantization: the latents are the levels
                    of `methods.rd.tcq`, each row a chain, and decode to `step * rec` with
                    `rec` its reconstruction (`tcq.reconstruct`) (codec version 3)
      steps         float32 LE, one or `rows` of them (must be finite)
      offset        signed varint: the smallest latent; symbols are latent - offset
      [col mask]    varint length, then a symbol stream of `cols` 0/1 flags
      [row mask]    varint length, then a symbol stream of `rows` 0/1 flags
      latents       varint length, then a symbol stream (`coding.entropy`) of the latents of
                    the kept rows and columns, row-major; fixed-length: varint width, packed

A tensor with >= 2 dims is seen as `rows = shape[0]` by `cols = numel / rows`. A column or row
whose latents are all zero (a pixel the first layer ignores, a dead neuron) is then flagged once
instead of coded once per weight; the encoder keeps a mask only where it makes the bytes smaller.
The weights are `step * latent` in float32, exactly (`decode_affine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaecompress.coding.entropy import (
    Table,
    decode_symbols,
    decode_with,
    encode_symbols,
    encode_with,
    pack_uint,
    packed_size,
    read_varint,
    unpack_uint,
    write_varint,
)
from vaecompress.errors import FormatError
from vaecompress.methods.rd import tcq

COL_MASK, ROW_MASK, ROW_STEPS, FIXED, SHARED, TCQ = 1, 2, 4, 8, 16, 32
# The codecs' version of a file whose records use TCQ; the newest a reader of these records
# reads (a family's member under a shared prior is version 2: `methods.rd.shared`).
TCQ_VERSION = 3
MAX_LATENT = 2**31 - 1  # |latent| bound a reader accepts
_SLICE = 2**20  # latents converted at a time when decoding


def zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def grid(shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(rows, cols) under which a tensor is masked and given per-row steps."""
    n = int(np.prod(shape)) if len(shape) else 1
    if len(shape) < 2 or n == 0:
        return 1, n
    return int(shape[0]), n // int(shape[0])


def decode_affine(z: np.ndarray, steps: np.ndarray, shape: tuple[int, ...], *,
                  trellis: bool = False) -> np.ndarray:
    """float32 weights of integer latents: one step, or one per row; `trellis`: the latents
    are dependent quantization's levels (`methods.rd.tcq`)."""
    m = z.reshape(grid(shape))
    zf = tcq.reconstruct(m) if trellis else m.astype(np.float32)
    return _scale(zf, steps).reshape(shape)


def _stream(out: bytearray, blob: bytes) -> None:
    write_varint(out, len(blob))
    out += blob


def _fixed(symbols: np.ndarray) -> bytes:
    out = bytearray()
    width = max(1, int(symbols.max(initial=0)).bit_length())
    write_varint(out, width)
    if symbols.size:
        out += pack_uint(symbols, width)
    return bytes(out)


def _body(z: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None, fixed: bool,
          offset: int) -> bytes:
    sub = z
    if cols is not None:
        sub = sub[:, cols]
    if rows is not None:
        sub = sub[rows]
    sym = sub.reshape(-1) - offset
    return _fixed(sym) if fixed else encode_symbols(sym)


def encode_tensor(z: np.ndarray, steps: np.ndarray, *, entropy: bool = True,
                  masks: bool = True, trellis: bool = False) -> bytes:
    """One tensor's record: `z` its integer latents (its own shape), `steps` float32 (1 or rows);
    `trellis`: the latents are dependent quantization's levels (flag TCQ)."""
    shape = z.shape
    r, c = grid(shape)
    m = np.asarray(z).reshape(r, c)
    if m.size and not np.issubdtype(m.dtype, np.integer):
        m = m.astype(np.int64)
    lo, hi = (int(m.min()), int(m.max())) if m.size else (0, 0)
    if max(-lo, hi) > MAX_LATENT:
        raise ValueError("latent out of range")
    # int32 wherever the latents and their span fit (the stream is the same): a large tensor's
    # coding holds half the bytes it would in int64
    m = m.astype(np.int32 if hi - min(lo, 0) < 2**31 else np.int64, copy=False)
    steps = np.asarray(steps, dtype="<f4").reshape(-1)
    if steps.size not in (1, r) or not np.isfinite(steps).all():
        raise ValueError("steps must be finite, one per tensor or one per row")
    flags = (ROW_STEPS if steps.size > 1 else 0) | (0 if entropy else FIXED) \
        | (TCQ if trellis else 0)
    offset = int(m.min(initial=0))
    best: tuple[int, bytes] | None = None
    nonzero = m != 0
    options: list[tuple[bool, bool]] = [(False, False)]
    if masks and len(shape) >= 2 and m.size:
        options += [(True, False), (False, True), (True, True)]
    for use_cols, use_rows in options:
        cols = nonzero.any(axis=0) if use_cols else None
        rows = (nonzero if cols is None else nonzero[:, cols]).any(axis=1) if use_rows else None
        rec = bytearray()
        f = flags | (COL_MASK if use_cols else 0) | (ROW_MASK if use_rows else 0)
        rec.append(f)
        rec += steps.tobytes()
        write_varint(rec, zigzag(offset))
        if cols is not None:
            _stream(rec, encode_symbols(cols.astype(np.int64)))
        if rows is not None:
            _stream(rec, encode_symbols(rows.astype(np.int64)))
        _stream(rec, _body(m, rows, cols, not entropy, offset))
        if best is None or len(rec) < best[0]:
            best = (len(rec), bytes(rec))
    assert best is not None
    return best[1]


def _read_stream(data: memoryview, pos: int) -> tuple[memoryview, int]:
    length, pos = read_varint(data, pos)
    if pos + length > len(data):
        raise FormatError("latent record is truncated")
    return data[pos : pos + length], pos + length


def _read_mask(data: memoryview, pos: int, n: int) -> tuple[np.ndarray, int]:
    blob, pos = _read_stream(data, pos)
    mask = decode_symbols(blob, n)
    if mask.size and int(mask.max()) > 1:
        raise FormatError("latent mask holds a value other than 0 and 1")
    return mask.astype(bool), pos


@dataclass(frozen=True)
class _Record:
    """One tensor's record, parsed but not decoded."""

    flags: int
    head: bytes  # steps, offset and mask streams as stored
    steps: np.ndarray
    offset: int
    cols: np.ndarray | None
    rows: np.ndarray | None
    body: memoryview
    n: int  # latents in the body
    end: int


def _parse(data: memoryview, pos: int, shape: tuple[int, ...]) -> _Record:
    r, c = grid(shape)
    if pos >= len(data):
        raise FormatError("latent records end before the manifest's tensors do")
    flags = data[pos]
    start = pos = pos + 1
    if flags & ~(COL_MASK | ROW_MASK | ROW_STEPS | FIXED | SHARED | TCQ) or \
            (flags & FIXED and flags & SHARED):
        raise FormatError(f"latent record has unknown flags {flags:#x}")
    n_steps = r if flags & ROW_STEPS else 1
    if pos + 4 * n_steps > len(data):
        raise FormatError("latent record is truncated (inside its steps)")
    steps = np.frombuffer(bytes(data[pos : pos + 4 * n_steps]), dtype="<f4")
    pos += 4 * n_steps
    if not np.isfinite(steps).all():
        raise FormatError("latent record has a non-finite step")
    u, pos = read_varint(data, pos)
    offset = unzigzag(u)
    if abs(offset) > MAX_LATENT:
        raise FormatError("latent offset is out of range")
    cols = rows = None
    if flags & COL_MASK:
        cols, pos = _read_mask(data, pos, c)
    if flags & ROW_MASK:
        rows, pos = _read_mask(data, pos, r)
    head = bytes(data[start:pos])
    kept_c = int(cols.sum()) if cols is not None else c
    kept_r = int(rows.sum()) if rows is not None else r
    body, pos = _read_stream(data, pos)
    return _Record(flags, head, steps, offset, cols, rows, body, kept_r * kept_c, pos)


def _own_latents(rec: _Record) -> np.ndarray:
    """The narrow symbols (latent - offset) of a record coded under its own table."""
    n = rec.n
    if rec.flags & FIXED:
        width, p = read_varint(rec.body, 0)
        if not 1 <= width <= 32 or p + packed_size(n, width) != len(rec.body):
            raise FormatError("fixed-length latents have the wrong size")
        sym = unpack_uint(rec.body[p:], width, n) if n else np.zeros(0, np.uint8)
    else:
        sym = decode_symbols(rec.body, n)
    if sym.size and max(abs(rec.offset), abs(rec.offset + int(sym.max()))) > MAX_LATENT:
        raise FormatError("latent out of range")
    return sym


def decode_tensor(data: memoryview, pos: int, shape: tuple[int, ...],
                  table: Table | None = None) -> tuple[np.ndarray, int]:
    """(float32 weights of `shape`, position after the record); FormatError on any damage.
    `table`: the tensor's table of the shared prior, for a record coded under it."""
    r, c = grid(shape)
    rec = _parse(data, pos, shape)
    n = rec.n
    lat = np.empty(n, dtype=np.float32)
    if rec.flags & SHARED:
        if table is None:
            raise FormatError("a latent record is coded under a shared prior that was not "
                              "given (the family's prior file)")
        vals = decode_with(rec.body, n, table)
        if vals.size and int(np.abs(vals).max()) > MAX_LATENT:
            raise FormatError("latent out of range")
        lat[:] = vals
    else:
        sym = _own_latents(rec)
        # float32 latents, made a slice at a time from the narrow symbols: the working set is
        # the rebuilt tensor itself (4 bytes a weight) and one slice, whatever their width.
        for lo in range(0, n, _SLICE):
            part = sym[lo : lo + _SLICE].astype(np.int64)
            part += rec.offset
            lat[lo : lo + _SLICE] = part
    kept_c = int(rec.cols.sum()) if rec.cols is not None else c
    kept_r = int(rec.rows.sum()) if rec.rows is not None else r
    sub = lat.reshape(kept_r, kept_c)
    if rec.cols is not None:
        full_rows = np.zeros((kept_r, c), dtype=np.float32)
        full_rows[:, rec.cols] = sub
        sub = full_rows
    if rec.rows is not None:
        m = np.zeros((r, c), dtype=np.float32)
        m[rec.rows] = sub
    else:
        m = sub
    if rec.flags & TCQ:  # the levels' reconstructions, each row's chain over all its columns
        m = tcq.reconstruct(m.astype(np.int64))
    w = _scale(m, rec.steps).reshape(shape)
    if not np.isfinite(w).all():
        raise FormatError("latent record decodes to non-finite weights")
    return w, rec.end


def latents_of(data: bytes, specs: list[dict]) -> list[np.ndarray]:
    """The integer latents (int64) each non-empty tensor's record keeps (the rows and columns
    its masks keep, in order), from records coded under their own tables."""
    view = memoryview(data)
    out: list[np.ndarray] = []
    pos = 0
    for spec in specs:
        shape = tuple(int(d) for d in spec["shape"])
        if int(np.prod(shape)) == 0:
            continue
        rec = _parse(view, pos, shape)
        if rec.flags & SHARED:
            raise ValueError("the records are already coded under a shared prior")
        out.append(_own_latents(rec).astype(np.int64) + rec.offset)
        pos = rec.end
    return out


def _shared_record(rec: _Record, lat: np.ndarray, table: Table) -> bytes | None:
    """The record with its latents coded under `table`, or None when a reader would refuse
    that stream (`coding.entropy.encode_with`)."""
    try:
        body = encode_with(lat, table)
    except ValueError:
        return None
    out = bytearray([rec.flags | SHARED])
    out += rec.head
    _stream(out, body)
    return bytes(out)


def recode_shared(data: bytes, specs: list[dict], tables: list[Table | None]) -> bytes:
    """The same records with each tensor's latents coded under its table of the shared prior
    where that is smaller than under its own table (flag SHARED); what they decode to is
    unchanged. `tables` holds one entry per non-empty tensor (None: keep its own)."""
    view = memoryview(data)
    out = bytearray()
    pos = i = 0
    for spec in specs:
        shape = tuple(int(d) for d in spec["shape"])
        if int(np.prod(shape)) == 0:
            continue
        rec = _parse(view, pos, shape)
        own = bytes(view[pos : rec.end])
        table = tables[i]
        if table is not None and not rec.flags & (FIXED | SHARED):
            shared = _shared_record(rec, _own_latents(rec).astype(np.int64) + rec.offset,
                                    table)
            if shared is not None and len(shared) < len(own):
                own = shared
        out += own
        pos, i = rec.end, i + 1
    if pos != len(data):
        raise FormatError(f"latent payload has {len(data) - pos} bytes beyond its tensors")
    return bytes(out)


def _scale(zf: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """`decode_affine` in place on float32 latents of the (rows, cols) grid."""
    s = steps.astype(np.float32).reshape(-1, 1) if steps.size > 1 else np.float32(steps[0])
    zf *= s
    return zf


def encode_model(ints: list[np.ndarray], steps: list[np.ndarray], *, entropy: bool = True,
                 masks: bool = True, trellis: bool = False) -> bytes:
    """The records of every coded tensor, back to back (the order is the manifest's);
    `trellis`: every tensor's latents are dependent quantization's levels."""
    return b"".join(encode_tensor(z, s, entropy=entropy, masks=masks, trellis=trellis)
                    for z, s in zip(ints, steps, strict=True))


def estimate_model_bytes(ints: list[np.ndarray]) -> int:
    """About the bytes `encode_model` writes for these latents, without coding them: each
    tensor's order-0 entropy plus a table of two varints per distinct latent (no masks, so
    never much below the real size). For searches that try many quantizations."""
    total = 0.0
    for z in ints:
        flat = np.asarray(z).reshape(-1)
        if flat.size == 0:
            continue
        lo, hi = int(flat.min()), int(flat.max())
        if hi - lo <= 2 * flat.size + 1024:
            counts = np.bincount((flat - lo).astype(np.int64))
            counts = counts[counts > 0]
        else:  # a few latents spread far apart: count without an array of the whole range
            counts = np.unique(flat, return_counts=True)[1]
        p = counts / flat.size
        total += float(-(counts * np.log2(p)).sum()) / 8 + 2 * counts.size + 16
    return math.ceil(total)


def decode_model(data: bytes, specs: list[dict],
                 tables: list[Table | None] | None = None) -> dict[str, np.ndarray]:
    """float32 weights of every non-empty manifest entry in `specs`; empty ones are zeros.
    `tables`: the shared prior, one entry per non-empty tensor, for records coded under it."""
    view = memoryview(data)
    out: dict[str, np.ndarray] = {}
    pos = i = 0
    for spec in specs:
        shape = tuple(int(d) for d in spec["shape"])
        if int(np.prod(shape)) == 0:
            out[spec["name"]] = np.zeros(shape, dtype=np.float32)
            continue
        table = tables[i] if tables is not None and i < len(tables) else None
        out[spec["name"]], pos = decode_tensor(view, pos, shape, table)
        i += 1
    if pos != len(data):
        raise FormatError(f"latent payload has {len(data) - pos} bytes beyond its tensors")
    return out
