"""Exact conversion between a state_dict and one flat float32 vector, and between that vector
and fixed-size chunks.

Boundary: this module only moves numbers around, losslessly (for float32/float16/bfloat16
sources; float64 is rounded to float32, and `unflatten` casts back) and deterministically. It
does no compression, no I/O and no normalization; codecs build on it. Non-floating-point
tensors (integer buffers, bool masks) are never flattened: `flatten` refuses them, and codecs
store them raw. `layout_of(state)` describes every tensor (the file manifest);
`layout_of(state, float_only=True)` describes the ones that go into the vector.

Chunking: `chunk` cuts the whole vector (the paper's way: a chunk may straddle two tensors,
and only the last one is padded); `chunk_tensors` pads each tensor to whole chunks of its own,
so that no chunk mixes two tensors.

Order: tensors are taken in the state_dict's insertion order. For an `nn.Module` that is the
order in which parameters and buffers were registered, which is fixed by the architecture's
code, so the same architecture always gives the same layout and a chunk always covers the
same weights. Sorting by name would also be deterministic but would interleave unrelated
layers (`layer10` before `layer2`), which hurts codecs that exploit locality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vaecompress.errors import UserError

DEFAULT_CHUNK_SIZE = 2048

# Canonical dtype names ("float32", not the alias "float"), built from torch itself so that
# new dtypes appear without a code change; only real torch.dtype objects are ever looked up.
_DTYPES: dict[str, torch.dtype] = {
    str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)
}


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype for a canonical name such as "bfloat16"; UserError if unknown."""
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise UserError(f"unknown dtype {name!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name of a torch dtype, without the "torch." prefix."""
    return str(dtype).removeprefix("torch.")


def is_float_dtype(dtype: str | torch.dtype) -> bool:
    """True for real floating-point dtypes (the ones `flatten` accepts); False for integer,
    bool and complex ones."""
    if isinstance(dtype, str):
        dtype = dtype_from_name(dtype)
    return dtype.is_floating_point


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of a state_dict."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        # Normalize lists to tuples so that specs compare and hash by value.
        object.__setattr__(self, "shape", tuple(self.shape))
        if not isinstance(self.name, str):
            raise UserError(f"tensor name must be a string, got {self.name!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise UserError(f"tensor {self.name!r} has invalid shape {self.shape!r}")
        dtype_from_name(self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: Any) -> TensorSpec:
        if not isinstance(obj, dict) or not all(k in obj for k in ("name", "shape", "dtype")):
            raise UserError("malformed tensor spec: expected an object with name, shape, dtype")
        if not isinstance(obj["shape"], list):
            raise UserError(f"malformed tensor spec: shape of {obj['name']!r} is not a list")
        return cls(name=obj["name"], shape=tuple(obj["shape"]), dtype=obj["dtype"])


@dataclass(frozen=True)
class ParamLayout:
    """An ordered list of tensor specs: the layout of a flat vector or a file manifest."""

    specs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "specs", tuple(self.specs))
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UserError(f"tensor {dup!r} appears twice in the layout")

    @property
    def numel(self) -> int:
        """Total number of elements over all specs."""
        return sum(s.numel for s in self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def float_only(self) -> ParamLayout:
        """The sub-layout of floating-point tensors, in the same order."""
        return ParamLayout(tuple(s for s in self.specs if is_float_dtype(s.dtype)))

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.specs]

    @classmethod
    def from_json(cls, obj: Any) -> ParamLayout:
        if not isinstance(obj, list):
            raise UserError("malformed layout: expected a list of tensor specs")
        return cls(tuple(TensorSpec.from_json(o) for o in obj))


def layout_of(
    state: Mapping[str, torch.Tensor],
    *,
    select: Callable[[str, torch.Tensor], bool] | None = None,
    float_only: bool = False,
) -> ParamLayout:
    """The layout of `state` in its insertion order (see the module docstring for why).

    `float_only` keeps only floating-point tensors (what `flatten` accepts); `select(name,
    tensor)` keeps only the tensors for which it returns True. Both may be combined.
    """
    specs = []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise UserError(f"state entry {name!r} is a {type(t).__name__}, not a tensor")
        if float_only and not t.is_floating_point():
            continue
        if select is not None and not select(name, t):
            continue
        specs.append(TensorSpec(name=name, shape=tuple(t.shape), dtype=dtype_name(t.dtype)))
    return ParamLayout(tuple(specs))


def flatten(state: Mapping[str, torch.Tensor], layout: ParamLayout) -> torch.Tensor:
    """Concatenate the tensors named by `layout`, in its order, into a new 1-D float32 vector.

    Lossless for float32, float16 and bfloat16 (float32 holds every value of both); float64
    is rounded. Tensors in `state` that `layout` does not name are ignored. The result is on
    the device of the first tensor (CPU if the layout is empty) and never aliases `state`.
    """
    tensors = []
    for spec in layout.specs:
        if spec.name not in state:
            raise UserError(f"tensor {spec.name!r} is missing from the state_dict")
        t = state[spec.name]
        if not isinstance(t, torch.Tensor):
            raise UserError(f"state entry {spec.name!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != spec.shape:
            raise UserError(
                f"tensor {spec.name!r} has shape {_fmt(t.shape)}, expected {_fmt(spec.shape)}"
            )
        if dtype_name(t.dtype) != spec.dtype:
            raise UserError(
                f"tensor {spec.name!r} has dtype {dtype_name(t.dtype)}, expected {spec.dtype}"
            )
        if not t.is_floating_point():
            # Casting int64 to float32 would silently lose values above 2**24.
            raise UserError(
                f"tensor {spec.name!r} has dtype {spec.dtype}; only floating-point "
                "tensors can be flattened (use layout_of(..., float_only=True))"
            )
        tensors.append(t)
    device = tensors[0].device if tensors else torch.device("cpu")
    # Fill one preallocated buffer: no per-tensor float32 temporaries for f16/bf16 models.
    out = torch.empty(layout.numel, dtype=torch.float32, device=device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            out[offset : offset + n].copy_(t.reshape(-1))
            offset += n
    return out


def unflatten(vec: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Split a flat vector back into tensors of each spec's shape and dtype, in layout order.

    The exact inverse of `flatten` for float32, float16 and bfloat16 tensors. Every returned
    tensor owns its memory, so modifying one never changes another or `vec`.
    """
    if not isinstance(vec, torch.Tensor) or vec.dim() != 1:
        raise UserError("unflatten needs a 1-D tensor")
    if not vec.is_floating_point():
        raise UserError(f"unflatten needs a floating-point vector, got {dtype_name(vec.dtype)}")
    if vec.numel() != layout.numel:
        raise UserError(f"vector has {vec.numel()} elements, the layout needs {layout.numel}")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for spec in layout.specs:
        dtype = dtype_from_name(spec.dtype)
        if not dtype.is_floating_point:
            raise UserError(
                f"tensor {spec.name!r} has dtype {spec.dtype}; a flat vector only "
                "holds floating-point tensors"
            )
        n = spec.numel
        piece = vec[offset : offset + n].reshape(spec.shape)
        out[spec.name] = piece.to(dtype=dtype, copy=True)
        offset += n
    return out


@dataclass(frozen=True)
class Chunking:
    """How a vector of `numel` elements was cut into `n_chunks` rows of `chunk_size`, the last
    one padded with `pad` zeros."""

    chunk_size: int
    n_chunks: int
    pad: int
    numel: int

    def __post_init__(self) -> None:
        values = (self.chunk_size, self.n_chunks, self.pad, self.numel)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UserError(f"chunking fields must be integers: {self!r}")
        # Exactly the values `chunk` produces; anything else means a corrupt or foreign file.
        expected_n = -(-self.numel // self.chunk_size) if self.chunk_size > 0 else -1
        if (
            self.chunk_size <= 0
            or self.numel < 0
            or self.n_chunks != expected_n
            or self.pad != self.n_chunks * self.chunk_size - self.numel
        ):
            raise UserError(f"inconsistent chunking: {self!r}")

    def to_json(self) -> dict[str, int]:
        return {
            "chunk_size": self.chunk_size,
            "n_chunks": self.n_chunks,
            "pad": self.pad,
            "numel": self.numel,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Chunking:
        keys = ("chunk_size", "n_chunks", "pad", "numel")
        if not isinstance(obj, dict) or not all(k in obj for k in keys):
            raise UserError(f"malformed chunking: expected an object with {', '.join(keys)}")
        return cls(**{k: obj[k] for k in keys})


def chunk(vec: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, Chunking]:
    """Cut a 1-D vector into a new [n_chunks, chunk_size] tensor; the tail of the last chunk
    is zeros, and how many is recorded in the returned `Chunking`."""
    if not isinstance(vec, torch.Tensor) or vec.dim() != 1:
        raise UserError("chunk needs a 1-D tensor")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    numel = vec.numel()
    n_chunks = -(-numel // chunk_size)
    ch = Chunking(
        chunk_size=chunk_size, n_chunks=n_chunks, pad=n_chunks * chunk_size - numel, numel=numel
    )
    out = torch.zeros(n_chunks, chunk_size, dtype=vec.dtype, device=vec.device)
    with torch.no_grad():
        out.view(-1)[:numel].copy_(vec)
    return out, ch


def unchunk(chunks: torch.Tensor, ch: Chunking) -> torch.Tensor:
    """The inverse of `chunk`: a new 1-D vector of `ch.numel` elements. Whatever the padding
    positions hold (a decoder need not reproduce zeros there) is dropped."""
    expected = (ch.n_chunks, ch.chunk_size)
    if not isinstance(chunks, torch.Tensor) or tuple(chunks.shape) != expected:
        got = _fmt(chunks.shape) if isinstance(chunks, torch.Tensor) else type(chunks).__name__
        raise UserError(f"chunks have shape {got}, expected {_fmt(expected)}")
    return chunks.reshape(-1)[: ch.numel].clone()


def _fmt(shape: Any) -> str:
    # "(a, b)" for every rank, including "(5,)" and "()", like Python tuples.
    return str(tuple(int(d) for d in shape))


def tensor_chunks(sizes: list[int], chunk_size: int) -> list[int]:
    """How many chunks each tensor of `sizes` elements takes when padded on its own."""
    return [-(-n // chunk_size) for n in sizes]


def chunk_tensors(vec: torch.Tensor, sizes: list[int],
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, Chunking]:
    """Cut a vector made of tensors of `sizes` elements, one after the other, into chunks that
    never mix two tensors: each is padded with zeros to whole chunks of its own. The returned
    `Chunking` describes the padded vector (so its own `pad` is 0)."""
    if not isinstance(vec, torch.Tensor) or vec.dim() != 1 or vec.numel() != sum(sizes):
        raise UserError(f"chunk_tensors needs a 1-D tensor of {sum(sizes)} elements")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise UserError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    counts = tensor_chunks(sizes, chunk_size)
    padded = torch.zeros(sum(counts) * chunk_size, dtype=vec.dtype, device=vec.device)
    src = dst = 0
    with torch.no_grad():
        for n, k in zip(sizes, counts, strict=True):
            padded[dst : dst + n].copy_(vec[src : src + n])
            src, dst = src + n, dst + k * chunk_size
    return chunk(padded, chunk_size)


def unchunk_tensors(chunks: torch.Tensor, ch: Chunking, sizes: list[int]) -> torch.Tensor:
    """The inverse of `chunk_tensors`: a new 1-D vector of `sum(sizes)` elements, each tensor's
    padding dropped."""
    counts = tensor_chunks(sizes, ch.chunk_size)
    if sum(counts) * ch.chunk_size != ch.numel:
        raise UserError(f"per-tensor chunking of {sum(counts)} chunks does not match {ch!r}")
    flat = unchunk(chunks, ch)
    starts = [0]
    for k in counts[:-1]:
        starts.append(starts[-1] + k * ch.chunk_size)
    parts = [flat[a : a + n] for a, n in zip(starts, sizes, strict=True)]
    return torch.cat(parts) if parts else flat[:0].clone()

