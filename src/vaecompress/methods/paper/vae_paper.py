"""`vae-paper`: the method of Cheng et al. (2024), sections 2-4, as a codec.

flatten -> normalize -> chunk (2048, zero-padded) -> train a VAE on 100 noisy variants (made
per batch, `params.variants`) -> the encoder's mean of each true chunk is the code. Decoding:
decoder -> un-pad -> de-normalize -> un-flatten. The decoder travels in the file (default) or
in its own file referenced by sha256.

Chunking: the paper cuts the whole parameter vector, so a chunk may hold the end of one tensor
and the start of the next (`chunking="vector"`, the default). `chunking="tensor"` pads each
tensor to whole chunks of its own (more chunks, none mixing two tensors); the file records it
(`chunk_per` in the codec state). The setting is written into the header only when it is not
the default, so that files made with the defaults are byte for byte those of earlier versions.

Dtypes: every floating tensor (float16, bfloat16, float64 too) is coded in float32 and cast
back to its own dtype (float64 loses its extra precision); integer and bool tensors travel
exactly beside the code.

Normalization is this project's fix for the known collapse: the paper feeds raw weights, whose
spread (0.05-0.1) makes a unit-variance likelihood negligible beside the KL term.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
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
from vaecompress.coding.floats import float_specs
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_CODE, ROLE_MODEL, Container, External, Payload
from vaecompress.io import StateDict, state_from_bytes, state_to_bytes
from vaecompress.methods.paper.model import VAEArch, build_decoder
from vaecompress.methods.paper.train import VAETrainConfig, train_vae
from vaecompress.params.variants import NoiseConfig, VariantStream
from vaecompress.params.vector import (
    Chunking,
    ParamLayout,
    chunk,
    chunk_tensors,
    flatten,
    layout_of,
    tensor_chunks,
    unchunk,
    unchunk_tensors,
    unflatten,
)

NORMALIZE = ("tensor", "global", "none")
CHUNKING = ("vector", "tensor")


@dataclass(frozen=True)
class VAEPaperSettings:
    chunk_size: int = 2048
    latent: int = 64
    hidden: tuple[int, ...] = (512,)
    normalize: str = "tensor"  # per-tensor mean/std, one global mean/std, or raw weights
    noise_kind: str = "gaussian"
    noise_fraction: float = 0.5
    noise_scale: float = 0.05
    n_variants: int = 100
    val_fraction: float = 0.2
    epochs: int = 500
    patience: int = 30
    batch_size: int = 64
    lr: float = 3e-4  # 1e-3 makes the validation ELBO jump by hundreds of nats per epoch
    sigma_x: float = 0.05
    external_decoder: bool = False
    chunking: str = "vector"  # vector: the paper's, across tensors; tensor: padded per tensor


def _stats(coded: Mapping[str, torch.Tensor], layout: ParamLayout, mode: str) -> dict:
    if mode not in NORMALIZE:
        raise UserError(f"normalize must be one of {NORMALIZE}, got '{mode}'")
    if mode == "none":
        return {"mode": mode}
    if mode == "global":
        v = torch.cat([coded[s.name].detach().float().reshape(-1) for s in layout.specs])
        std = float(v.std()) if v.numel() > 1 else 1.0
        return {"mode": mode, "mean": float(v.mean()), "std": std if std > 0 else 1.0}
    means, stds = [], []
    for s in layout.specs:
        t = coded[s.name].detach().float().reshape(-1)
        std = float(t.std()) if t.numel() > 1 else 0.0
        means.append(float(t.mean()) if t.numel() else 0.0)  # an empty tensor has no mean
        # A constant tensor (or a scalar) keeps its value exactly through the mean alone.
        stds.append(std if std > 0 else 1.0)
    return {"mode": mode, "mean": means, "std": stds}


# Normalization statistics a file may hold: finite, std > 0, both below this (weights beyond
# 1e30 do not occur; a larger value is a damaged or hostile header that would decode to Inf).
MAX_STAT = 1e30


def _check_stat(x: Any, *, positive: bool) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise FormatError("normalization statistics must be numbers")
    v = float(x)
    if not (math.isfinite(v) and abs(v) <= MAX_STAT and (v > 0 or not positive)):
        raise FormatError(f"normalization statistic {v!r} is out of range")
    return v


def _affine(layout: ParamLayout, stats: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element (mean, std) vectors for the flat parameter vector; FormatError for
    statistics that are malformed, non-finite, huge or (std) not positive."""
    n = layout.numel
    mode = stats.get("mode") if isinstance(stats, dict) else None
    if mode not in NORMALIZE:
        raise FormatError(f"unknown normalization mode {mode!r}")
    if mode == "none":
        return torch.zeros(n), torch.ones(n)
    if mode == "global":
        mean = _check_stat(stats.get("mean"), positive=False)
        std = _check_stat(stats.get("std"), positive=True)
        return torch.full((n,), mean), torch.full((n,), std)
    sizes = [int(np.prod(s.shape)) if s.shape else 1 for s in layout.specs]
    means, stds = stats.get("mean"), stats.get("std")
    if not isinstance(means, list) or not isinstance(stds, list) \
            or len(means) != len(sizes) or len(stds) != len(sizes):
        raise FormatError("normalization statistics do not match the tensor manifest")
    stats = {"mean": [_check_stat(x, positive=False) for x in means],
             "std": [_check_stat(x, positive=True) for x in stds]}
    per_mean = torch.repeat_interleave(
        torch.tensor(stats["mean"], dtype=torch.float64), torch.tensor(sizes)
    ).float()
    per_std = torch.repeat_interleave(
        torch.tensor(stats["std"], dtype=torch.float64), torch.tensor(sizes)
    ).float()
    return per_mean, per_std


@register
class VAEPaperCodec(Codec):
    name = "vae-paper"
    version = 1
    Settings = VAEPaperSettings
    externals = ("decoder",)  # with external_decoder=True the decoder is its own file
    exact_decode = False  # an MLP: its float sums may differ by an ulp between CPUs

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        # The latent sweep lives in `reproduce`; in the bench this codec is one point per model.
        if preset == "full":
            return [{"latent": 64, "epochs": 100, "patience": 20, "batch_size": 128}]
        if preset == "datafree":  # its file outweighs the model at every latent (reproduce)
            return []
        return [{"latent": 64, "epochs": 30, "patience": 10}]

    def arch(self) -> VAEArch:
        s = self.settings
        hidden = s.hidden if isinstance(s.hidden, (list, tuple)) else (s.hidden,)
        return VAEArch(in_dim=s.chunk_size, latent=s.latent, hidden=tuple(hidden))

    def validate(self) -> None:
        """Settings a user typed (`--latent 0`, `--set hidden=512`) fail here, as bad input."""
        s = self.settings
        if s.normalize not in NORMALIZE:
            raise UserError(f"vae-paper: normalize must be one of {NORMALIZE}, got {s.normalize!r}")
        if s.chunking not in CHUNKING:
            raise UserError(f"vae-paper: chunking must be one of {CHUNKING}, got {s.chunking!r}")
        hidden = s.hidden if isinstance(s.hidden, (list, tuple)) else [s.hidden]
        positive_ints = {
            "chunk_size": s.chunk_size,
            "latent": s.latent,
            "epochs": s.epochs,
            "patience": s.patience,
            "batch_size": s.batch_size,
            "n_variants": s.n_variants,
        }
        for key, value in [*positive_ints.items(), *(("hidden", h) for h in hidden)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"vae-paper: {key} must be a positive integer, got {value!r}")
        for key, value in {"sigma_x": s.sigma_x, "lr": s.lr}.items():
            if not isinstance(value, (int, float)) or not value > 0:
                raise UserError(f"vae-paper: {key} must be a positive number, got {value!r}")
        NoiseConfig(s.noise_kind, s.noise_fraction, s.noise_scale, s.n_variants,
                    s.val_fraction).validate()

    def settings_json(self) -> dict[str, Any]:
        out = super().settings_json()
        if out.get("chunking") == "vector":  # the default: the header of earlier versions
            del out["chunking"]
        return out

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        s = self.settings
        coded, raw = split_passthrough(state)
        if not coded:
            raise UserError("the state_dict has no floating-point tensors to compress")
        layout, stats, chunks, ch = self._chunks(coded)
        chunks = chunks.to(ctx.device)
        noise = NoiseConfig(
            s.noise_kind, s.noise_fraction, s.noise_scale, s.n_variants, s.val_fraction
        )
        variants = VariantStream(chunks, noise, seed=ctx.seed)  # made per batch, never stored
        cfg = VAETrainConfig(
            epochs=s.epochs,
            patience=s.patience,
            batch_size=s.batch_size,
            lr=s.lr,
            sigma_x=s.sigma_x,
            seed=ctx.seed,
        )
        t0 = time.perf_counter()
        vae, hist = train_vae(
            variants.train,
            variants.val,
            self.arch(),
            cfg,
            progress=ctx.progress,
            desc=f"vae {ctx.label}".strip(),
            checkpoint=ctx.checkpoint,
        )
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            latents = vae.encode(chunks)[0].float().cpu().contiguous()
        c, externals = self._container(state, layout, ch, stats, latents,
                                       state_to_bytes(vae.decoder.state_dict()))
        add_passthrough(c, raw)
        report = {
            "history": hist.to_json(),
            "vae_train_s": train_s,
            "vae_epochs": hist.epochs,
            "n_chunks": ch.n_chunks,
            "pad": ch.pad,
        }
        return Encoded(c, externals, report)

    def _chunks(self, coded: StateDict) -> tuple[ParamLayout, Any, torch.Tensor, Any]:
        """The float tensors as one normalized vector cut into chunks: (layout, normalization
        statistics, chunks, chunking)."""
        s = self.settings
        layout = layout_of(coded)
        stats = _stats(coded, layout, s.normalize)
        mean, std = _affine(layout, stats)
        vec = (flatten(coded, layout) - mean) / std
        if s.chunking == "tensor":
            chunks, ch = chunk_tensors(vec, [spec.numel for spec in layout.specs], s.chunk_size)
        else:
            chunks, ch = chunk(vec, s.chunk_size)
        return layout, stats, chunks, ch

    def _container(self, state: StateDict, layout: ParamLayout, ch: Any, stats: Any,
                   latents: torch.Tensor,
                   decoder_bytes: bytes) -> tuple[Container, dict[str, bytes]]:
        """The stored form: the latents as float32, the decoder in the file or external."""
        s = self.settings
        c = self.new_container(state)
        c.codec_state = {
            "layout": layout.to_json(),
            "chunking": ch.to_json(),
            "normalization": stats,
            "vae": self.arch().to_json(),
        }
        if s.chunking == "tensor":
            c.codec_state["chunk_per"] = "tensor"
        c.payloads.append(
            Payload("latents", "raw-f32", ROLE_CODE, latents.numpy().astype("<f4").tobytes())
        )
        externals: dict[str, bytes] = {}
        if s.external_decoder:
            sha = hashlib.sha256(decoder_bytes).hexdigest()
            c.externals.append(
                External("decoder", "safetensors", ROLE_MODEL, sha, len(decoder_bytes))
            )
            externals["decoder"] = decoder_bytes
        else:
            c.payloads.append(Payload("decoder", "safetensors", ROLE_MODEL, decoder_bytes))
        return c, externals

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        st = c.codec_state
        try:
            layout = ParamLayout.from_json(st["layout"])
            ch = Chunking.from_json(st["chunking"])
            arch = VAEArch.from_json(st["vae"])
            stats = st["normalization"]
            per_tensor = st.get("chunk_per", "vector") == "tensor"
            if st.get("chunk_per", "vector") not in CHUNKING:
                raise ValueError(f"unknown chunking {st.get('chunk_per')!r}")
        except (KeyError, TypeError, ValueError, UserError) as e:
            raise FormatError(f"vae-paper codec state is malformed: {e}") from None
        names = {p.name for p in c.payloads}
        if "decoder" in names:
            blob = c.payload("decoder").data
        elif "decoder" in externals:
            blob = externals["decoder"]
        else:
            raise UserError("this file references an external decoder; pass it with --decoder FILE")
        _check_sizes(c, layout, ch, arch, len(blob), per_tensor)
        mean, std = _affine(layout, stats)
        # Built on the meta device and then given the file's tensors: a random initialization
        # that the file's weights replace would be a third of the decoding time.
        weights = state_from_bytes(blob, what="decoder weights")
        odd = [k for k, v in weights.items() if v.dtype != torch.float32]
        if odd:
            raise FormatError(f"decoder weight {odd[0]!r} is not float32")
        _check_decoder(arch, weights)  # before building: a header may declare any depth
        with torch.device("meta"):
            decoder = build_decoder(arch)
        try:
            decoder.load_state_dict(weights, assign=True)
        except RuntimeError as e:
            raise FormatError(
                f"decoder weights do not fit the recorded VAE: {str(e).splitlines()[0]}"
            ) from None
        raw = c.payload("latents").data
        if len(raw) != ch.n_chunks * arch.latent * 4:
            raise FormatError(
                f"latents payload holds {len(raw)} bytes, expected {ch.n_chunks * arch.latent * 4}"
            )
        z = torch.from_numpy(
            np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(ch.n_chunks, arch.latent)
        )
        # In batches, so that the activations stay small whatever the decoder's widths.
        widest = max(arch.in_dim, arch.latent, *arch.hidden)
        step = max(1, DECODE_BATCH_FLOATS // widest)
        with torch.no_grad():
            chunks = torch.cat([decoder(z[i : i + step]) for i in range(0, ch.n_chunks, step)])
        if per_tensor:
            vec = unchunk_tensors(chunks, ch, [spec.numel for spec in layout.specs])
        else:
            vec = unchunk(chunks, ch)
        vec = vec * std + mean
        return join_passthrough(c, unflatten(vec, layout))


DECODE_BATCH_FLOATS = 2**24  # activations of one decoding batch, in floats


def _check_decoder(arch: VAEArch, weights: Mapping[str, torch.Tensor]) -> None:
    """The decoder's tensors are exactly those of the architecture the header declares
    (`build_decoder`'s names and shapes), checked by arithmetic before a module is built."""
    sizes = [arch.latent, *reversed(arch.hidden), arch.in_dim]
    if 2 * (len(sizes) - 1) != len(weights):
        raise FormatError(f"vae-paper header declares {len(sizes) - 1} decoder layers, the "
                          f"decoder's weights hold {len(weights) // 2}")
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        for name, shape in ((f"{2 * i}.weight", [b, a]), (f"{2 * i}.bias", [b])):
            t = weights.get(name)
            if t is None or list(t.shape) != shape:
                got = "none" if t is None else list(t.shape)
                raise FormatError(f"decoder weight {name!r} should have shape {shape}, has {got}")


def _check_sizes(c: Container, layout: ParamLayout, ch: Chunking, arch: VAEArch,
                 decoder_bytes: int, per_tensor: bool = False) -> None:
    """Before allocating anything: the layout is the manifest's floating tensors, the chunking
    covers exactly it (each tensor padded on its own when `per_tensor`) with chunks of the
    decoder's output size, and the decoder the header declares fits in the bytes that hold its
    weights (float32, 4 bytes each)."""
    floats = [(t["name"], list(t["shape"]), t["dtype"]) for t in float_specs(c.tensors)]
    if floats != [(s.name, list(s.shape), s.dtype) for s in layout.specs]:
        raise FormatError("vae-paper layout does not match the tensor manifest")
    dims = [arch.latent, *arch.hidden, arch.in_dim]
    if any(d < 1 for d in dims):
        raise FormatError("vae-paper decoder has a dimension below 1")
    n_params = sum((a + 1) * b for a, b in itertools.pairwise(dims))
    if 4 * n_params > decoder_bytes:
        raise FormatError(f"vae-paper decoder declares {n_params:,} weights, its file holds "
                          f"{decoder_bytes:,} bytes")
    numel = layout.numel
    if per_tensor and ch.chunk_size > 0:
        numel = sum(tensor_chunks([spec.numel for spec in layout.specs], ch.chunk_size))
        numel *= ch.chunk_size
    if (ch.chunk_size != arch.in_dim or ch.numel != numel or ch.n_chunks < 0
            or ch.n_chunks != -(-numel // ch.chunk_size) or ch.pad != ch.n_chunks * ch.chunk_size
            - numel):
        raise FormatError("vae-paper chunking does not match the manifest and the decoder")
