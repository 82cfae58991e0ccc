"""`deep-compression`: Han, Mao and Dally (ICLR 2016), pruning + trained quantization +
entropy coding, as a codec.

1. Pruning. Magnitude pruning of every matrix/kernel (tensors with >= 2 dims; recurrent
   weights count as fully connected), reached in `prune_stages` equal steps, each followed by
   retraining with the mask re-applied after every step (Han prunes and retrains iteratively).
   Per-layer targets (`scope="layer"`): the largest tensor loses `sparsity` of its weights, a
   tensor n times smaller keeps n**size_exponent times more of its weights (capped at all), the
   way the paper prunes small and sensitive layers less (LeNet-300-100: 92/91/74 %). The
   defaults (0.96, 0.5) prune the FNN to 96/89/80/63/9 % per layer, 94 % overall. With
   `size_exponent=0` every layer gets `sparsity`; `scope="global"` pools all weights instead.
2. Trained quantization. The survivors of each tensor are clustered by 1-D k-means with linear
   initialization (`conv_bits`, default 8, for conv kernels; `fc_bits`, default 5, for the
   rest), then the centroids are retrained: the weights are built from the centroids by
   index_select and scatter, so each centroid's gradient is the sum of its weights' gradients.
3. Entropy coding. Per tensor, two streams go through constriction's ANS coder with their own
   stored integer frequency tables (`coding.entropy.encode_symbols`): the cluster indices of the
   survivors, and the gaps between consecutive survivors (the number of pruned weights in
   between, in row-major order). Gaps are coded directly over their own alphabet instead of
   Han's 4/8-bit gaps with filler zeros: the table lists only the gaps that occur, and a rare
   long gap costs one symbol rather than a chain of fillers.

Biases stay float (float16 by default: they are retrained and few). Everything coded goes in
one payload (one header entry, not one per tensor), with a small table in the codec state.

Boundary: without `ctx.finetune` the steps run without retraining (noted in the report);
decoding needs only the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
from vaecompress.coding.entropy import decode_symbols, encode_symbols, split_segments
from vaecompress.coding.floats import (
    FLOAT_STORE,
    float_specs,
    floats_from_bytes,
    floats_to_bytes,
    is_weight,
    numel,
)
from vaecompress.coding.kmeans import Clustered, kmeans_1d, reconstruct
from vaecompress.coding.sparse import magnitude_masks
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, Container, Payload
from vaecompress.io import StateDict
from vaecompress.training.finetune import finetune_centroids, masked_finetune

SCOPES = ("layer", "global")
PAYLOAD = "code"


@dataclass(frozen=True)
class DeepCompressionSettings:
    sparsity: float = 0.96  # pruned fraction of the largest weight tensor (or of all: global)
    size_exponent: float = 0.5  # a tensor n times smaller keeps n**size_exponent times more
    scope: str = "layer"  # layer: per-tensor targets by the rule above; global: pooled magnitude
    prune_stages: int = 3  # prune in this many equal steps, each followed by retraining
    prune_epochs: float = 3.0  # retraining epochs of the pruning, all stages together
    prune_lr: float = 1e-3  # Adam learning rate of the pruning retraining
    conv_bits: int = 8  # centroids of conv kernels: 2**conv_bits (the paper's 8)
    fc_bits: int = 5  # centroids of fc and recurrent matrices: 2**fc_bits (the paper's 5)
    kmeans_iters: int = 30
    quant_epochs: float = 1.0  # centroid retraining epochs
    quant_lr: float = 1e-4  # Adam learning rate of the centroid retraining
    bias_dtype: str = "float16"  # tensors with < 2 dims: float32 | float16


@dataclass
class DeepCompressed:
    """The compressed model before serialization; `state()` is exactly what decoding gives."""

    clustered: dict[str, Clustered]
    codebooks: dict[str, np.ndarray]
    floats: StateDict  # unclustered float tensors, before rounding to bias_dtype
    passthrough: StateDict
    manifest: dict[str, tuple[list[int], torch.dtype]]
    bias_dtype: str
    report: dict[str, Any] = field(default_factory=dict)

    def state(self) -> StateDict:
        out: StateDict = {}
        for k, (shape, dtype) in self.manifest.items():
            if k in self.passthrough:
                out[k] = self.passthrough[k]
            elif k in self.clustered:
                out[k] = reconstruct(self.clustered[k], self.codebooks).to(dtype)
            elif numel(shape) == 0:
                out[k] = torch.zeros(shape, dtype=dtype)
            else:
                vals = floats_from_bytes(floats_to_bytes(self.floats[k], self.bias_dtype),
                                         self.bias_dtype, numel(shape))
                out[k] = torch.from_numpy(vals.copy()).reshape(shape).to(dtype)
        return out


def layer_sparsities(sizes: Mapping[str, int], sparsity: float,
                     size_exponent: float) -> dict[str, float]:
    """Per-tensor pruned fractions: the largest tensor gets `sparsity`, a tensor n times smaller
    keeps n**size_exponent times more of its weights."""
    if not sizes:
        return {}
    n_max = max(sizes.values())
    return {k: 1.0 - min(1.0, (1.0 - sparsity) * (n_max / max(n, 1)) ** size_exponent)
            for k, n in sizes.items()}


@register
class DeepCompressionCodec(Codec):
    name = "deep-compression"
    version = 1
    Settings = DeepCompressionSettings
    uses_task = True

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        if preset == "full":
            return [{"sparsity": s} for s in (0.85, 0.92, 0.96, 0.98, 0.99)]
        return [{"prune_epochs": 0.5, "quant_epochs": 0.25, "prune_stages": 2}]

    def validate(self) -> None:
        s = self.settings
        if s.scope not in SCOPES:
            raise UserError(f"deep-compression: scope must be one of {SCOPES}, got '{s.scope}'")
        if s.bias_dtype not in FLOAT_STORE:
            raise UserError(f"deep-compression: bias_dtype must be one of {sorted(FLOAT_STORE)}")
        if not (1 <= s.conv_bits <= 16 and 1 <= s.fc_bits <= 16):
            raise UserError("deep-compression: conv_bits and fc_bits must be in 1..16")
        if not 0.0 <= s.sparsity < 1.0 or s.prune_stages < 1:
            raise UserError("deep-compression: sparsity must be in [0, 1), prune_stages >= 1")

    def quantize(self, state: StateDict, ctx: CodecContext) -> DeepCompressed:
        """Steps 1 and 2: prune (and retrain), cluster the survivors (and retrain centroids)."""
        s = self.settings
        coded, raw = split_passthrough(state)
        current = dict(state)
        sizes = {k: v.numel() for k, v in coded.items() if is_weight(list(v.shape)) and v.numel()}
        targets = layer_sparsities(sizes, s.sparsity, s.size_exponent)
        report: dict[str, Any] = {}
        if ctx.finetune is None:
            report["note"] = "no finetuner in the context: pruned and clustered without retraining"
        stages = s.prune_stages if ctx.finetune is not None else 1
        masks: dict[str, torch.Tensor] = {}
        prune_losses: list[float] = []
        for stage in range(1, stages + 1):
            frac = stage / stages
            weights = {k: current[k] for k in sizes}
            if s.scope == "global":
                masks = magnitude_masks(weights, s.sparsity * frac, "global")
            else:
                masks = magnitude_masks(weights, {k: t * frac for k, t in targets.items()})
            current, losses = masked_finetune(current, masks, ctx, s.prune_epochs / stages,
                                              s.prune_lr, desc=f"prune {stage}/{stages}")
            prune_losses += losses
        # Without retraining the masked weights are still in `current`: zero them here.
        for k, m in masks.items():
            current[k] = current[k] * m.to(current[k].dtype)

        clustered: dict[str, Clustered] = {}
        codebooks: dict[str, np.ndarray] = {}
        for k in sizes:
            flat_mask = masks[k].reshape(-1).numpy()
            positions = np.flatnonzero(flat_mask).astype(np.int64)
            values = current[k].detach().to("cpu", torch.float32).reshape(-1).numpy()[positions]
            bits = s.conv_bits if coded[k].dim() >= 3 else s.fc_bits
            codebooks[k], idx = kmeans_1d(values, 2**bits, s.kmeans_iters)
            clustered[k] = Clustered(list(coded[k].shape), idx, k, positions)
        floats, quant_losses = finetune_centroids(current, clustered, codebooks, ctx,
                                                  s.quant_epochs, s.quant_lr)
        report["prune_loss"], report["quant_loss"] = prune_losses, quant_losses
        report["sparsity"] = {k: 1.0 - len(cl.index) / sizes[k] for k, cl in clustered.items()}
        manifest = {k: (list(v.shape), v.dtype) for k, v in state.items()}
        return DeepCompressed(clustered, codebooks, floats, dict(raw), manifest, s.bias_dtype,
                              report)

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        dc = self.quantize(state, ctx)
        coded, raw = split_passthrough(state)
        parts: list[bytes] = []
        table: list[list[int]] = []
        layers: dict[str, dict[str, int]] = {}
        for k, v in coded.items():
            if v.numel() == 0:
                continue
            if k not in dc.clustered:
                parts.append(floats_to_bytes(dc.floats[k], dc.bias_dtype))
                continue
            cl = dc.clustered[k]
            assert cl.positions is not None
            book = dc.codebooks[k]
            gaps = np.diff(cl.positions, prepend=-1) - 1
            g = encode_symbols(gaps, v.numel())
            i = encode_symbols(cl.index, max(len(book), 1))
            parts += [book.astype("<f4").tobytes(), g, i]
            table.append([len(book), len(cl.index), len(g), len(i)])
            layers[k] = {"n": v.numel(), "nnz": len(cl.index), "k": len(book), "gap_bytes": len(g),
                         "index_bytes": len(i), "codebook_bytes": 4 * len(book)}
        c = self.new_container(state)
        c.codec_state = {"bias": dc.bias_dtype, "t": table}
        c.payloads.append(Payload(PAYLOAD, "dc-streams", ROLE_CODE, b"".join(parts)))
        add_passthrough(c, raw)
        nnz = sum(x["nnz"] for x in layers.values())
        coded_bytes = sum(x["gap_bytes"] + x["index_bytes"] for x in layers.values())
        report = {**dc.report, "layers": layers,
                  "bits_per_survivor": 8 * coded_bytes / nnz if nnz else 0.0}
        return Encoded(c, report=report)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        st = c.codec_state
        try:
            bias = str(st["bias"])
            table = [[int(x) for x in row] for row in st["t"]]
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"deep-compression codec state is malformed: {e}") from None
        if bias not in FLOAT_STORE or any(len(row) != 4 for row in table):
            raise FormatError("deep-compression codec state has unknown values")
        data = c.payload(PAYLOAD, kinds=["dc-streams"]).data
        rows = iter(table)
        out: StateDict = {}
        pos = 0
        for spec in float_specs(c.tensors):
            shape, n = list(spec["shape"]), numel(spec["shape"])
            if n == 0:
                out[spec["name"]] = torch.zeros(shape)
                continue
            if not is_weight(shape):
                size = n * np.dtype(FLOAT_STORE[bias]).itemsize
                vals = floats_from_bytes(data[pos : pos + size], bias, n)
                pos += size
                out[spec["name"]] = torch.from_numpy(vals.copy()).reshape(shape)
                continue
            row = next(rows, None)
            if row is None:
                raise FormatError("deep-compression: fewer table rows than weight tensors")
            k, nnz, gap_len, idx_len = row
            if not (0 <= nnz <= n and 0 <= k <= max(nnz, 1) and gap_len >= 0 and idx_len >= 0):
                # Checked before decoding: no stream may declare more symbols than the tensor.
                raise FormatError(f"deep-compression: table row of '{spec['name']}' is out "
                                  "of range")
            end = pos + 4 * k + gap_len + idx_len
            if end > len(data):
                raise FormatError("deep-compression payload is truncated")
            book_b, gap_b, idx_b = split_segments(data[pos:end], [4 * k, gap_len, idx_len])
            pos = end
            book = np.frombuffer(book_b, dtype="<f4").astype(np.float32)
            gaps = decode_symbols(gap_b, nnz)
            idx = decode_symbols(idx_b, nnz)
            # The last position, summed exactly before the positions are: no overflow, and
            # positions in the narrowest type that holds the tensor's indices.
            if nnz and (_last_position(gaps, n) >= n or int(idx.max()) >= k):
                raise FormatError(f"deep-compression: stream of '{spec['name']}' is out of range")
            positions = np.cumsum(gaps, dtype=np.uint32 if n <= 2**32 else np.int64)
            np.add(positions, np.arange(nnz, dtype=positions.dtype), out=positions)
            out[spec["name"]] = reconstruct(Clustered(shape, idx, "b", positions), {"b": book})
        if next(rows, None) is not None or pos != len(data):
            raise FormatError("deep-compression payload holds more than the manifest needs")
        return join_passthrough(c, out)


def _last_position(gaps: np.ndarray, n: int) -> int:
    """sum(gaps) + len(gaps) - 1 in exact integers, or n when a gap alone reaches n (slices
    of 2**20 gaps below n <= 2**40 sum within uint64)."""
    if int(gaps.max()) >= n:
        return n
    total = sum(int(gaps[i : i + 2**20].sum(dtype=np.uint64)) for i in range(0, gaps.size, 2**20))
    return total + gaps.size - 1
