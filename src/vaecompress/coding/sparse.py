"""Sparsity: which weights survive magnitude pruning, and where they are, as bytes.

`magnitude_masks` picks the survivors (exactly `round(sparsity * n)` zeros, per tensor or over all
tensors pooled, deterministic ties); `encode_positions` stores a keep-mask as a packed bitmask or
as index deltas in the narrowest of uint8/16/32, whichever is smaller.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vaecompress.errors import FormatError, UserError

SCOPES = ("layer", "global")


def _keep_largest(mags: np.ndarray, n_zero: int) -> np.ndarray:
    """Boolean mask with exactly `n_zero` False entries, the smallest magnitudes; ties are broken
    by position (a stable sort), so the mask is deterministic."""
    order = np.argsort(mags, kind="stable")
    mask = np.ones(mags.size, dtype=bool)
    mask[order[:n_zero]] = False
    return mask


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float],
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep-masks (bool, same shapes) for the given tensors. `sparsity` may be one number or one
    per tensor (layer scope only)."""
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {SCOPES}, got '{scope}'")
    mags = {k: v.detach().to("cpu", torch.float32).abs().reshape(-1).numpy()
            for k, v in weights.items()}
    sp = {k: float(sparsity[k] if isinstance(sparsity, Mapping) else sparsity) for k in mags}
    if any(not 0.0 <= s <= 1.0 for s in sp.values()):
        raise UserError(f"sparsity must be in [0, 1], got {sorted(sp.values())}")
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise UserError("global pruning takes a single sparsity")
        pooled = np.concatenate(list(mags.values())) if mags else np.zeros(0, np.float32)
        flat = _keep_largest(pooled, round(float(sparsity) * pooled.size))
        out, pos = {}, 0
        for k, v in weights.items():
            out[k] = torch.from_numpy(flat[pos : pos + v.numel()].copy()).reshape(v.shape)
            pos += v.numel()
        return out
    return {k: torch.from_numpy(_keep_largest(m, round(sp[k] * m.size))).reshape(weights[k].shape)
            for k, m in mags.items()}


POSITION_MODES = ("m", "d1", "d2", "d4")


def encode_positions(mask: np.ndarray) -> tuple[str, bytes]:
    """(mode, bytes) of a flat keep-mask: "m" packed bitmask, or "d1"/"d2"/"d4" index deltas
    (first index, then differences) at 1/2/4 bytes; the smaller one wins."""
    bitmask = np.packbits(mask.astype(np.uint8)).tobytes()
    pos = np.flatnonzero(mask)
    deltas = np.diff(pos, prepend=0)
    top = int(deltas.max(initial=0))
    width = 1 if top < 2**8 else 2 if top < 2**16 else 4
    if width * pos.size < len(bitmask):
        return f"d{width}", deltas.astype(f"<u{width}").tobytes()
    return "m", bitmask


def decode_positions(mode: str, data: bytes, n: int, nnz: int) -> np.ndarray:
    """Flat keep-mask from `encode_positions`' output."""
    if mode == "m":
        if len(data) != (n + 7) // 8:
            raise FormatError("bitmask has the wrong size")
        if nnz == 0:  # all pruned: no bit may be set, and none needs unpacking
            if np.frombuffer(data, dtype=np.uint8).any():
                raise FormatError("bitmask does not match its count of surviving weights")
            return np.zeros(n, dtype=bool)
        mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).view(bool)
        if int(mask.sum()) != nnz:
            raise FormatError("bitmask does not match its count of surviving weights")
        return mask
    if mode not in ("d1", "d2", "d4"):
        raise FormatError(f"unknown position encoding '{mode}'")
    width = int(mode[1])
    if len(data) != width * nnz:
        raise FormatError("index deltas have the wrong size")
    pos = np.cumsum(np.frombuffer(data, dtype=f"<u{width}").astype(np.int64))
    if pos.size and (pos[-1] >= n or (np.diff(pos) <= 0).any()):
        raise FormatError("index deltas point outside their tensor")
    mask = np.zeros(n, dtype=bool)
    mask[pos] = True
    return mask


def position_bytes(mode: str, n: int, nnz: int) -> int:
    return (n + 7) // 8 if mode == "m" else int(mode[1]) * nnz
