"""`kmeans`: weight sharing. Each matrix/kernel's values are clustered into 2**bits centroids
(1-D k-means, linear initialization between min and max as in Han et al. 2016, a fixed number
of Lloyd iterations: deterministic without any seed), and every weight is replaced by its
centroid. Stored: the float32 codebooks and the cluster indices, packed at ceil(log2 k) bits or
entropy-coded. Biases stay float32/float16. With `finetune_epochs > 0` and a finetuner the
centroids are retrained (Deep Compression's trained quantization, `finetune_centroids`).

Boundary: the clustering (`kmeans_1d`), the clustered-tensor description (`Clustered`,
`reconstruct`) and centroid retraining live here and are shared with `deep-compression`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaecompress.codecs.base import (
    Codec,
    CodecContext,
    Encoded,
    add_passthrough,
    join_passthrough,
    register,
    split_passthrough,
)
from vaecompress.codecs.entropy import (
    decode_symbols,
    encode_symbols,
    pack_uint,
    packed_size,
    split_segments,
    unpack_uint,
)
from vaecompress.codecs.prune import finetune_steps, run_finetune
from vaecompress.codecs.quant import is_weight
from vaecompress.codecs.zstd_codec import (
    FLOAT_KIND,
    FLOAT_STORE,
    float_specs,
    floats_from_bytes,
    floats_to_bytes,
    numel,
)
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict

SCOPES = ("tensor", "global")
GLOBAL_BOOK = "*"


@dataclass(frozen=True)
class KMeansSettings:
    bits: int = 5  # 2**bits centroids per codebook
    scope: str = "tensor"  # one codebook per weight tensor, or one shared by all ("global")
    iters: int = 30  # Lloyd iterations (fixed: the result never depends on a tolerance)
    entropy: bool = False  # entropy-code the cluster indices instead of packing them
    bias_dtype: str = "float32"  # tensors with < 2 dims: float32 | float16
    finetune_epochs: float = 0.0  # > 0: retrain the centroids with ctx.finetune
    lr: float = 1e-4  # Adam learning rate of the centroid retraining


# ------------------------------------------------------------------------------ k-means


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float32 ascending, index int64 of each value) for 1-D data.

    In one dimension the nearest centroid is found by bisecting the midpoints of the sorted
    centroids, so each Lloyd step is O(n log k). An empty cluster keeps its centroid.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    k = max(1, min(k, x.size))
    lo, hi = float(x.min()), float(x.max())
    centroids = np.linspace(lo, hi, k) if k > 1 else np.array([(lo + hi) / 2])
    for _ in range(iters):
        idx = _nearest(x, centroids)
        sums = np.bincount(idx, weights=x, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    # The stored centroids are float32: assign against exactly those values.
    c32 = np.sort(centroids.astype(np.float32))
    return c32, _nearest(x, c32.astype(np.float64))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, x).astype(np.int64)


def index_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


# ---------------------------------------------------------------------- clustered tensors


@dataclass
class Clustered:
    """A weight tensor as (positions, cluster index) into a codebook; the rest is zero."""

    shape: list[int]
    index: np.ndarray  # int64, cluster of each coded weight
    book: str  # key of its codebook
    positions: np.ndarray | None = None  # flat positions of the coded weights; None = all


def reconstruct(cl: Clustered, codebooks: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The float32 tensor a decoder rebuilds; the encoder reports exactly this."""
    values = codebooks[cl.book].astype(np.float32)[cl.index]
    if cl.positions is None:
        return torch.from_numpy(values.copy()).reshape(cl.shape)
    full = np.zeros(numel(cl.shape), dtype=np.float32)
    full[cl.positions] = values
    return torch.from_numpy(full).reshape(cl.shape)


def finetune_centroids(state: StateDict, clustered: Mapping[str, Clustered],
                       codebooks: dict[str, np.ndarray], ctx: CodecContext, epochs: float,
                       lr: float, desc: str = "centroids") -> tuple[StateDict, list[float]]:
    """Deep Compression's trained quantization: the weights are a function of the centroids
    (scatter of centroid[index] into the positions), so backprop gives each centroid the sum of
    the gradients of its weights. The unclustered float tensors (biases) are trained too.
    Updates `codebooks` in place; returns the other retrained tensors and the loss curve."""
    steps = finetune_steps(ctx, epochs)
    coded, raw = split_passthrough(state)
    if steps == 0:
        return {k: v for k, v in coded.items() if k not in clustered}, []
    dev = ctx.device
    books = {k: torch.tensor(v, dtype=torch.float32, device=dev, requires_grad=True)
             for k, v in codebooks.items()}
    free = {k: v.detach().to(dev, torch.float32).clone().requires_grad_(True)
            for k, v in coded.items() if k not in clustered}
    fixed = {k: v.to(dev) for k, v in raw.items()}
    gather = {k: (torch.from_numpy(cl.index).to(dev),
                  None if cl.positions is None else torch.from_numpy(cl.positions).to(dev))
              for k, cl in clustered.items()}

    def make_state() -> dict[str, torch.Tensor]:
        out = {**fixed, **free}
        for k, cl in clustered.items():
            idx, pos = gather[k]
            vals = books[cl.book].index_select(0, idx)
            if pos is None:
                out[k] = vals.reshape(cl.shape)
            else:
                w = torch.zeros(numel(cl.shape), device=dev, dtype=vals.dtype)
                out[k] = w.index_add(0, pos, vals).reshape(cl.shape)
        return out

    params = {**{f"book:{k}": v for k, v in books.items()}, **free}
    losses = run_finetune(params, make_state, ctx.finetune, steps, lr,
                          desc=f"{desc} {ctx.label}".strip(), progress=ctx.progress)
    for k, v in books.items():
        codebooks[k] = v.detach().to("cpu").numpy().astype(np.float32)
    return {k: v.detach().to("cpu").to(coded[k].dtype) for k, v in free.items()}, losses


# ---------------------------------------------------------------------------- the codec


@register
class KMeansCodec(Codec):
    name = "kmeans"
    version = 1
    Settings = KMeansSettings

    def cluster(self, state: StateDict, ctx: CodecContext) -> tuple[
            dict[str, Clustered], dict[str, np.ndarray], StateDict, dict[str, Any]]:
        """(clustered weights, codebooks, other float tensors, report): everything `encode`
        writes, also the reconstruction (`reconstruct`) exactly as decoding gives it."""
        s = self.settings
        if not 1 <= s.bits <= 16:
            raise UserError(f"kmeans: bits must be in 1..16, got {s.bits}")
        if s.scope not in SCOPES or s.bias_dtype not in FLOAT_STORE:
            raise UserError(f"kmeans: scope must be one of {SCOPES}, bias_dtype one of "
                            f"{sorted(FLOAT_STORE)}")
        coded, _ = split_passthrough(state)
        weights = {k: v.detach().to("cpu", torch.float32).reshape(-1).numpy()
                   for k, v in coded.items() if is_weight(list(v.shape)) and v.numel() > 0}
        clustered: dict[str, Clustered] = {}
        codebooks: dict[str, np.ndarray] = {}
        if s.scope == "global" and weights:
            pooled = np.concatenate(list(weights.values()))
            codebooks[GLOBAL_BOOK], idx = kmeans_1d(pooled, 2**s.bits, s.iters)
            pos = 0
            for k, w in weights.items():
                clustered[k] = Clustered(list(coded[k].shape), idx[pos : pos + w.size], GLOBAL_BOOK)
                pos += w.size
        else:
            for k, w in weights.items():
                codebooks[k], idx = kmeans_1d(w, 2**s.bits, s.iters)
                clustered[k] = Clustered(list(coded[k].shape), idx, k)
        report: dict[str, Any] = {}
        if s.finetune_epochs > 0 and ctx.finetune is None:
            report["note"] = "no finetuner in the context: centroids not retrained"
        others, losses = finetune_centroids(state, clustered, codebooks, ctx,
                                            s.finetune_epochs, s.lr)
        report["finetune_loss"] = losses
        return clustered, codebooks, others, report

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        clustered, codebooks, others, report = self.cluster(state, ctx)
        coded, raw = split_passthrough(state)
        book_keys = list(codebooks)
        books = [codebooks[k].astype("<f4").tobytes() for k in book_keys]
        segments: list[bytes] = []
        floats: list[bytes] = []
        for k in coded:
            if k in clustered:
                cl = clustered[k]
                width = index_bits(len(codebooks[cl.book]))
                segments.append(encode_symbols(cl.index, len(codebooks[cl.book])) if s.entropy
                                else pack_uint(cl.index, width))
            elif coded[k].numel() > 0:
                floats.append(floats_to_bytes(others[k], s.bias_dtype))
        c = self.new_container(state)
        c.codec_state = {"bias": s.bias_dtype, "entropy": s.entropy, "global": s.scope == "global",
                         "k": [len(codebooks[k]) for k in book_keys],
                         "seg": [len(x) for x in segments]}
        for name, kind, blob in (("codebooks", "raw-f32", b"".join(books)),
                                 ("indices", "ans" if s.entropy else "packed", b"".join(segments)),
                                 ("floats", FLOAT_KIND[s.bias_dtype], b"".join(floats))):
            if blob:
                c.payloads.append(Payload(name, kind, ROLE_CODE, blob))
        add_passthrough(c, raw)
        report["codebook_sizes"] = {k: len(v) for k, v in codebooks.items()}
        return Encoded(c, report=report)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        st = c.codec_state
        try:
            bias, entropy, shared = str(st["bias"]), bool(st["entropy"]), bool(st["global"])
            ks, seg_lengths = [int(k) for k in st["k"]], list(st["seg"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"kmeans codec state is malformed: {e}") from None
        names = {p.name for p in c.payloads}
        blob = {n: c.payload(n).data if n in names else b""
                for n in ("codebooks", "indices", "floats")}
        if sum(ks) * 4 != len(blob["codebooks"]) or any(k < 1 for k in ks):
            raise FormatError("kmeans: codebook payload does not match the codebook sizes")
        all_books = np.frombuffer(blob["codebooks"], dtype="<f4").astype(np.float32)
        books = np.split(all_books, np.cumsum(ks)[:-1]) if ks else []
        segments = iter(split_segments(blob["indices"], seg_lengths))
        out: StateDict = {}
        book_i = float_pos = 0
        for spec in float_specs(c):
            shape, n = list(spec["shape"]), numel(spec["shape"])
            if n == 0:
                out[spec["name"]] = torch.zeros(shape)
                continue
            if not is_weight(shape):
                size = n * np.dtype(FLOAT_STORE[bias]).itemsize if bias in FLOAT_STORE else 0
                vals = floats_from_bytes(blob["floats"][float_pos : float_pos + size], bias, n)
                float_pos += size
                out[spec["name"]] = torch.from_numpy(vals.copy()).reshape(shape)
                continue
            if book_i >= len(books):
                raise FormatError("kmeans: fewer codebooks than weight tensors")
            book = books[0] if shared else books[book_i]
            book_i += 0 if shared else 1
            seg = next(segments, None)
            if seg is None:
                raise FormatError("kmeans: fewer index segments than weight tensors")
            if entropy:
                idx = decode_symbols(seg, n)
            else:
                width = index_bits(len(book))
                if len(seg) != packed_size(n, width):
                    raise FormatError(f"kmeans: indices of '{spec['name']}' have the wrong size")
                idx = unpack_uint(seg, width, n)
            if idx.size and int(idx.max()) >= len(book):
                raise FormatError(f"kmeans: index beyond the codebook in '{spec['name']}'")
            out[spec["name"]] = reconstruct(Clustered(shape, idx, "b"), {"b": book})
        if next(segments, None) is not None or float_pos != len(blob["floats"]):
            raise FormatError("kmeans: payloads hold more data than the manifest needs")
        return join_passthrough(c, out)
