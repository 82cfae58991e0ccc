"""Model weights in and out: safetensors bytes and files, and a user's weights file of any
kind.

Weights are safetensors, or a PyTorch checkpoint read with `torch.load(weights_only=True)`
(`torchfile.py`: nothing a user hands us is ever unpickled). A safetensors blob is read back in
its stored order (by data offset; safetensors stores by dtype, then name), so the same file
gives the same state_dict order, and the same compressed bytes, in every process; a file
written with `keep_order` (what decompress writes) records the order it was given and is read
back in it. Files are read and written through `files.py` (atomically).

Names say what they read: `load_weights_file` (a weights file: state_dict and metadata),
`load_state_dict` (a weights file: the state_dict alone), `state_from_bytes` (a safetensors blob),
`torchfile.find_state_dict` (the state_dict inside a loaded checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaecompress.errors import UserError
from vaecompress.files import atomic_write_bytes, read_file
from vaecompress.torchfile import find_state_dict, is_torch, torch_load

StateDict = dict[str, torch.Tensor]


# safetensors stores tensors by dtype, then name, whatever the state_dict's order; a file that
# must give its tensors back in the order they were given (`keep_order`) records it here: the
# position in the stored order of each tensor, in the given order, comma-separated.
ORDER_KEY = "vaecompress.order"


def state_to_bytes(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None, *,
    keep_order: bool = False,
) -> bytes:
    """safetensors bytes of a state_dict; metadata values are stored as strings. With
    `keep_order`, `state_from_bytes` gives the tensors back in `state`'s order (`ORDER_KEY`)."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in storages:  # tied weights: safetensors refuses shared memory
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        storages.add(ptr)
        tensors[k] = t
    data = st_save(tensors, metadata=meta or None)
    if keep_order:
        stored = {name: i for i, name in enumerate(_stored_order(data))}
        if list(stored) != list(tensors):  # adding metadata does not move the data
            meta[ORDER_KEY] = ",".join(str(stored[k]) for k in tensors)
            data = st_save(tensors, metadata=meta)
    return data


def state_from_bytes(data: bytes, *, what: str = "weights") -> StateDict:
    """The tensors of a safetensors blob in their stored order (by data offset), whatever
    order the library hands them back in (it differs between processes); in the order it
    was written in when it records one (`ORDER_KEY`, a permutation; anything else is
    ignored)."""
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} are not a valid safetensors blob: {e}") from None
    order = _stored_order(data)
    given = safetensors_metadata(data).get(ORDER_KEY)
    if given is not None:
        try:
            perm = [int(i) for i in given.split(",")] if given else []
        except ValueError:
            perm = []
        if sorted(perm) == list(range(len(order))) and len(order) == len(tensors):
            order = [order[i] for i in perm]
    rank = {name: i for i, name in enumerate(order)}
    return {k: tensors[k] for k in sorted(tensors, key=lambda k: (rank.get(k, len(rank)), k))}


def _stored_order(data: bytes) -> list[str]:
    """Tensor names of a (valid) safetensors blob by data offset, then name."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    entries = [(v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__"]
    return [k for _, k in sorted(entries)]


def save_weights_file(
    path: str | Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None,
    *, keep_order: bool = False,
) -> int:
    """Write a safetensors file atomically; `keep_order` as for `state_to_bytes` (a rebuilt
    model is read back in the order of the model it was made from)."""
    return atomic_write_bytes(path, state_to_bytes(state, metadata, keep_order=keep_order))


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` block of a safetensors blob (empty when absent)."""
    if len(data) < 8:
        return {}
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        return {}
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def load_state_dict(path: str | Path, *, key: str | None = None) -> StateDict:
    """The state_dict of a weights file (`load_weights_file` without the metadata)."""
    return load_weights_file(path, key=key)[0]


def load_weights_file(
    path: str | Path, *, key: str | None = None
) -> tuple[StateDict, dict[str, str]]:
    """Load a safetensors file (with its metadata) or a PyTorch checkpoint (`.pt`, `.pth`,
    `.bin`, `.ckpt`: read with `weights_only=True`, never unpickled) and return its state_dict.

    A checkpoint's state_dict is found wherever it is nested (`find_state_dict`); `key` names
    it (a dotted path) when the checkpoint holds several, or selects the tensors under a name
    prefix of a flat file.
    """
    path = Path(path)
    data = read_file(path)
    if is_torch(data, path):
        return find_state_dict(torch_load(data, path), key=key, source=str(path)), {}
    state = state_from_bytes(data, what=f"weights in {path}")
    if key is not None:
        state = find_state_dict(state, key=key, source=str(path))
    return state, safetensors_metadata(data)


