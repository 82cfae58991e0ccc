"""Two sizes, never one: what the paper counts and what a user must store or send.

`payload_bytes` is the compressed code alone (the paper's "30x" counts only this). The honest
ratio divides by every byte needed to get the model back: the file plus anything it references
(a decoder kept in its own file). Where one decoder serves K models, the amortized ratio spreads
the decoder over them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
        embedded = self.model_bytes if self.external_bytes == 0 else 0
        per_model = self.file_bytes - embedded
        shared = self.external_bytes + embedded
        return k * self.orig_bytes / (k * per_model + shared)

    def to_json(self, amortize: tuple[int, ...] = (1, 10, 100)) -> dict:
        out = asdict(self)
        if self.model_bytes:
            out["ratio_amortized"] = {str(k): self.amortized_ratio(k) for k in amortize}
        return out


def account(c: Container, file_bytes: int) -> Accounting:
    params = sum(int(np.prod(t["shape"])) if t["shape"] else 1 for t in c.tensors)
    orig = sum(
        (int(np.prod(t["shape"])) if t["shape"] else 1) * _ITEMSIZE.get(t["dtype"], 4)
        for t in c.tensors
    )
    payload = sum(len(p.data) for p in c.payloads if p.role == ROLE_CODE)
    model = sum(len(p.data) for p in c.payloads if p.role == ROLE_MODEL) + sum(
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
