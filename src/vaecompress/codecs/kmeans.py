"""`kmeans`: weight sharing. Each matrix/kernel's values are clustered into 2**bits centroids
(1-D k-means, linear initialization between min and max as in Han et al. 2016, a fixed number
of Lloyd iterations: deterministic without any seed), and every weight is replaced by its
centroid. Stored: the float32 codebooks and the cluster indices, packed at ceil(log2 k) bits or
entropy-coded. Biases stay float32/float16. With `finetune_epochs > 0` and a finetuner the
centroids are retrained (Deep Compression's trained quantization, `finetune_centroids`).

Boundary: the clustering, the clustered-tensor description and centroid retraining come from
`vaecompress.coding` (`kmeans`, `finetune`); decoding needs no data.
"""

from __future__ import annotations

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
from vaecompress.coding.entropy import (
    decode_symbols,
    encode_symbols,
    pack_uint,
    packed_size,
    split_segments,
    unpack_uint,
)
from vaecompress.coding.floats import (
    FLOAT_KIND,
    FLOAT_STORE,
    float_specs,
    floats_from_bytes,
    floats_to_bytes,
    is_weight,
    numel,
)
from vaecompress.coding.kmeans import Clustered, index_bits, kmeans_1d, reconstruct
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.training.finetune import finetune_centroids

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


# ---------------------------------------------------------------------------- the codec


@register
class KMeansCodec(Codec):
    name = "kmeans"
    version = 1
    Settings = KMeansSettings
    uses_task = True  # only with finetune_epochs > 0: the centroids are retrained

    @classmethod
    def method(cls, settings: Mapping[str, Any]) -> tuple[str, bool]:
        return cls.name, float(settings.get("finetune_epochs", 0) or 0) > 0

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "full":
            return [{"bits": b, "entropy": True} for b in (2, 3, 4, 5, 6)]
        if preset == "datafree":
            return [{"bits": b, "entropy": True} for b in range(2, 9)]
        return [{"bits": 4}]

    def validate(self) -> None:
        s = self.settings
        if isinstance(s.bits, bool) or not isinstance(s.bits, int) or not 1 <= s.bits <= 16:
            raise UserError(f"kmeans: bits must be in 1..16, got {s.bits!r}")
        if s.scope not in SCOPES or s.bias_dtype not in FLOAT_STORE:
            raise UserError(f"kmeans: scope must be one of {SCOPES}, bias_dtype one of "
                            f"{sorted(FLOAT_STORE)}")
        if isinstance(s.iters, bool) or not isinstance(s.iters, int) or s.iters < 0:
            raise UserError(f"kmeans: iters must be a non-negative integer, got {s.iters!r}")

    def cluster(self, state: StateDict, ctx: CodecContext) -> tuple[
            dict[str, Clustered], dict[str, np.ndarray], StateDict, dict[str, Any]]:
        """(clustered weights, codebooks, other float tensors, report): everything `encode`
        writes, also the reconstruction (`reconstruct`) exactly as decoding gives it."""
        s = self.settings
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

    def streams(self) -> bool:
        return self.settings.scope != "global"  # a codebook per tensor, none shared

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
        for spec in float_specs(c.tensors):
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
