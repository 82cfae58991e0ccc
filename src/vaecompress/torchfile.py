"""Reading a PyTorch checkpoint safely, and finding the state_dict inside it.

The format is told by the file's first bytes (safetensors, a torch zip or a legacy torch
pickle), the suffix only when they say nothing. A checkpoint is read with
`torch.load(weights_only=True)` (never unpickled) and searched for mappings of names to
tensors, descending through mappings with string keys (an optimizer's state, keyed by
parameter numbers, is never entered): the one found is taken, several are refused with their
list unless `key` names one (a dotted path, `ema.model`; in a flat state_dict or a safetensors
file, a name prefix, stripped). Entries of the state_dict that are not tensors are dropped with
a warning. Names are kept as they are (a `module.` prefix too). `io.load_weights_file` is the
entry point; docs/own-model.md is the user's page.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vaecompress.errors import UserError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def is_safetensors(data: bytes) -> bool:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def is_torch(data: bytes, path: Path) -> bool:
    """A torch.save file: a zip archive, or the legacy format (a pickle stream); by the
    suffix when the first bytes say neither."""
    if is_safetensors(data):  # its 8-byte header length may begin with 0x80, like a pickle
        return False
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        return True
    return not is_safetensors(data) and path.suffix.lower() in TORCH_SUFFIXES


def torch_load(data: bytes, path: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors, plain containers and numbers, and
    argparse.Namespace (training scripts store their arguments; it holds attributes only)."""
    import argparse
    import io as _io
    import re

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad or unsafe checkpoint
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise UserError(
                f"cannot read checkpoint {path}: it holds a {found.group(1)} object, which a "
                "safe load (weights_only) refuses; save tensors and plain containers, e.g. "
                "model.state_dict(), not the model or other objects") from None
        first = (text.splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read checkpoint {path}: {first}") from None


# How deep `find_state_dict` looks for a nested state_dict, and how many names an error lists.
MAX_DEPTH = 4
LISTED = 8


def _is_state(obj: Any, *, strict: bool) -> bool:
    """A mapping of string names to tensors (strict: nothing else in it)."""
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        return False
    tensors = [isinstance(v, torch.Tensor) for v in obj.values()]
    if strict:
        return all(tensors)
    return any(tensors) and not any(isinstance(v, Mapping) for v in obj.values())


def _mappings(obj: Any, where: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Every mapping with string keys reachable through such mappings, with its dotted path."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return []
    out = [(where, obj)]
    if depth < MAX_DEPTH:
        for k, v in obj.items():
            out += _mappings(v, f"{where}.{k}" if where else k, depth + 1)
    return out


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _resolve(obj: Any, key: str, source: str) -> Any:
    """The object at a dotted path; a key may itself hold dots (the longest match wins). In a
    flat mapping of tensors the rest of the path is a name prefix, stripped."""
    parts = key.split(".")
    i = 0
    while i < len(parts):
        if not isinstance(obj, Mapping):
            raise UserError(f"--key '{key}': '{'.'.join(parts[:i])}' in {source} is a "
                            f"{type(obj).__name__}, not a mapping")
        names = {str(k): k for k in obj}
        for j in range(len(parts), i, -1):
            name = ".".join(parts[i:j])
            if name in names:
                obj, i = obj[names[name]], j
                break
        else:
            prefix = ".".join(parts[i:]) + "."
            sub = {k[len(prefix):]: v for k, v in obj.items()
                   if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}
            if sub:
                return sub
            raise UserError(f"--key '{key}': {source} has no '{'.'.join(parts[i:])}' "
                            f"(keys there: {_listed(list(names))})")
    return obj


def find_state_dict(obj: Any, *, key: str | None = None,
                    source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict in a loaded checkpoint (see the module docstring): the mapping `key`
    names, else the only mapping of names to tensors (one holding nothing else preferred to
    one with other entries too); UserError listing them when there are several."""
    if key is not None:
        found = _resolve(obj, key, source)
        if not _is_state(found, strict=False):
            raise UserError(f"--key '{key}' in {source} is not a state_dict (a mapping of names "
                            "to tensors)")
        where = key
    else:
        found = None
        maps = _mappings(obj)
        for strict in (True, False):
            hits = [(w, m) for w, m in maps if _is_state(m, strict=strict)]
            if len(hits) > 1:
                names = [w or "(top level)" for w, _ in hits]
                raise UserError(f"{source} holds {len(hits)} state_dicts: {_listed(names)}; "
                                "choose one with --key")
            if hits:
                where, found = hits[0]
                break
        if found is None:
            what = "a mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
            raise UserError(f"{source} holds no state_dict (a mapping of names to tensors); "
                            f"it is {what}")
    dropped = [str(k) for k, v in found.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        warnings.warn(f"{source}: ignoring {len(dropped)} entries of the state_dict"
                      f"{f' {where!r}' if where else ''} that are not tensors: "
                      f"{_listed(dropped)}", stacklevel=2)
    return {str(k): v for k, v in found.items() if isinstance(v, torch.Tensor)}
