"""Two sizes, never one: what the paper counts and what a user must store or send.

`payload_bytes` is the compressed code alone (the paper's "30x" counts only this). The honest
ratio divides by every byte needed to get the model back: the file plus anything it references
(a decoder kept in its own file). Where one decoder serves K models, the amortized ratio spreads
the decoder over them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vaecompress.format import ROLE_CODE, ROLE_MODEL, Container

_ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "complex64": 8,
    "complex128": 16,
}


@dataclass(frozen=True)
class Accounting:
    params: int
    orig_bytes: int
    payload_bytes: int  # role "code" payloads: what the paper counts
    model_bytes: int  # decoder weights, in the file or referenced
    file_bytes: int
    external_bytes: int
    ratio_paper: float
    ratio_honest: float

    def amortized_ratio(self, k: int) -> float:
        """Ratio when K models of this size share one decoder: the decoder is paid once."""
        per_model, shared = split_shared(self.file_bytes, self.model_bytes, self.external_bytes)
        return k * self.orig_bytes / (k * per_model + shared)

    def to_json(self, amortize: tuple[int, ...] = (1, 10, 100)) -> dict:
        out = asdict(self)
        if self.model_bytes:
            out["ratio_amortized"] = {str(k): self.amortized_ratio(k) for k in amortize}
        return out


def split_shared(file_bytes: int, model_bytes: int, external_bytes: int) -> tuple[int, int]:
    """(bytes each model needs of its own, bytes K models can share): a decoder embedded in the
    file could be shared if kept apart, so it counts as shared either way."""
    embedded = model_bytes if external_bytes == 0 else 0
    return file_bytes - embedded, external_bytes + embedded


def _counts(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


def break_even_k(orig_bytes: Any, file_bytes: Any, model_bytes: Any,
                 external_bytes: Any) -> float | None:
    """Smallest K at which K models sharing one decoder take fewer bytes than the originals
    (`math.inf` when no K does; None when a count is missing), by the split of `split_shared`."""
    if not _counts(orig_bytes, file_bytes, model_bytes, external_bytes):
        return None
    per_model, shared = split_shared(file_bytes, model_bytes, external_bytes)
    if orig_bytes <= per_model:
        return math.inf
    return max(1.0, math.floor(shared / (orig_bytes - per_model)) + 1.0)


def per_model_limit(orig_bytes: Any, file_bytes: Any, model_bytes: Any,
                    external_bytes: Any) -> float | None:
    """The amortized ratio as K grows without bound: original bytes / per-model bytes."""
    if not _counts(orig_bytes, file_bytes, model_bytes, external_bytes):
        return None
    per_model, _ = split_shared(file_bytes, model_bytes, external_bytes)
    return orig_bytes / per_model if per_model > 0 else None


def account(c: Container, file_bytes: int,
            payloads: Iterable[tuple[str, int]] | None = None) -> Accounting:
    """The sizes and ratios of a file of `file_bytes` holding `c`; `payloads`: the (role,
    length) of each payload, for a container read without its payloads' bytes
    (`format.read_index`)."""
    sizes = [(p.role, len(p.data)) for p in c.payloads] if payloads is None else list(payloads)
    params = sum(int(np.prod(t["shape"])) if t["shape"] else 1 for t in c.tensors)
    orig = sum(
        (int(np.prod(t["shape"])) if t["shape"] else 1) * _ITEMSIZE.get(t["dtype"], 4)
        for t in c.tensors
    )
    payload = sum(n for role, n in sizes if role == ROLE_CODE)
    model = sum(n for role, n in sizes if role == ROLE_MODEL) + sum(
        e.length for e in c.externals if e.role == ROLE_MODEL
    )
    external = sum(e.length for e in c.externals)
    return Accounting(
        params=params,
        orig_bytes=orig,
        payload_bytes=payload,
        model_bytes=model,
        file_bytes=file_bytes,
        external_bytes=external,
        ratio_paper=orig / payload if payload else float("inf"),
        ratio_honest=orig / (file_bytes + external),
    )
