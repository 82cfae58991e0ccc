"""State_dict <-> flat vector <-> chunks, exactly. No compression and no I/O here."""

from vaecompress.params.vector import (
    DEFAULT_CHUNK_SIZE,
    Chunking,
    ParamLayout,
    TensorSpec,
    chunk,
    chunk_tensors,
    dtype_from_name,
    dtype_name,
    flatten,
    is_float_dtype,
    layout_of,
    unchunk,
    unchunk_tensors,
    unflatten,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Chunking",
    "ParamLayout",
    "TensorSpec",
    "chunk",
    "chunk_tensors",
    "dtype_from_name",
    "dtype_name",
    "flatten",
    "is_float_dtype",
    "layout_of",
    "unchunk",
    "unchunk_tensors",
    "unflatten",
]
