"""Reading and writing model weights safely, and writing any output file atomically.

Weights are safetensors, or a PyTorch checkpoint read with `torch.load(weights_only=True)`:
nothing a user hands us is ever unpickled. Every output goes to a temporary file in the target
folder first and is renamed into place, so a failed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaecompress.errors import UserError

StateDict = dict[str, torch.Tensor]


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` through a temp file and a rename; returns the bytes written."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); outputs get the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def atomic_write_text(path: str | Path, text: str) -> int:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> int:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def state_to_bytes(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> bytes:
    """safetensors bytes of a state_dict; metadata values are stored as strings."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return st_save(tensors, metadata=meta or None)


def state_from_bytes(data: bytes, *, what: str = "weights") -> StateDict:
    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} are not a valid safetensors blob: {e}") from None


def save_weights(
    path: str | Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> int:
    return atomic_write_bytes(path, state_to_bytes(state, metadata))


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    return path.read_bytes()


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


def load_weights(path: str | Path) -> tuple[StateDict, dict[str, str]]:
    """Load a `.safetensors` file (with its metadata) or a `.pt`/`.pth`/`.bin` checkpoint.

    A checkpoint is read with `weights_only=True`; a nested one (`{"state_dict": {...}}`, the
    layout of many training scripts) is unwrapped.
    """
    path = Path(path)
    data = _read(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import io as _io

        try:
            obj = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad or unsafe checkpoint
            raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
        return _unwrap_checkpoint(obj, path), {}
    state = state_from_bytes(data, what=f"weights in {path}")
    return state, safetensors_metadata(data)


def _unwrap_checkpoint(obj: Any, path: Path) -> StateDict:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state_dict of tensors")
    return {str(k): v for k, v in obj.items()}


def check_state_matches(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, model_name: str, source: str
) -> None:
    """Raise a UserError naming the first tensor that is missing, extra or of the wrong shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(f"{source} does not hold {model_name} weights: {detail}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(
                f"{source}: tensor '{k}' has shape {tuple(state[k].shape)}, "
                f"{model_name} expects {tuple(v.shape)}"
            )
