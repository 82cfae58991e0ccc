"""Reading and writing model weights safely, and writing any output file atomically.

Weights are safetensors, or a PyTorch checkpoint read with `torch.load(weights_only=True)`:
nothing a user hands us is ever unpickled. A safetensors blob is read back in its stored order
(by data offset), so the same file gives the same state_dict order, and the same compressed
bytes, in every process. Every output goes through `atomic_write`: a temporary file in the
target folder, then a rename, so a failed run never leaves a half-written file.

Names say what they read: `load_weights_file` (a weights file: state_dict and metadata),
`load_state_dict` (a weights file: the state_dict alone), `state_from_bytes` (a safetensors blob).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaecompress.errors import UserError

StateDict = dict[str, torch.Tensor]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | Path, *, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse, as bad input and before any work, an output that would lose data or cannot be
    written: one of `inputs` (the same file by inode or by resolved path), anything that is not
    a regular file (a symlink, a device node, a FIFO, a folder: never replaced), or a path whose
    folder is missing or not writable."""
    path = Path(path)
    for src in inputs:
        if _same_file(path, Path(src)):
            raise UserError(f"output {path} is the input {src}; choose another output file")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"cannot use {path} as output: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else
                "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        raise UserError(f"output {path} is {what}; refusing to replace it (give a file path)")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder is not writable: {parent}")
    return path


def check_outputs(outputs: Sequence[str | Path], *, inputs: Sequence[str | Path] = ()) -> None:
    """`check_output_path` for each output, and no two outputs the same file."""
    paths = [check_output_path(p, inputs=inputs) for p in outputs]
    for i, a in enumerate(paths):
        for b in paths[:i]:
            if _same_file(a, b):
                raise UserError(f"two outputs are the same file: {b} and {a}")


def _temp_beside(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); outputs get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> int:
    """Call `write(f)` on a temp file beside `path`, fsync, rename it to `path`; returns the
    bytes written. On any error the temp file is removed and `path` is untouched. The only
    write-then-rename routine of the package (the container format keeps its own). A `path`
    that exists and is not a regular file (symlink, device, FIFO) is refused, never replaced."""
    path = check_output_path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def atomic_write_all(files: Sequence[tuple[str | Path, bytes]]) -> None:
    """Write several files as one step: every one to a temp file beside its target first, then
    the renames, in the given order (put the main file last). A failure while writing leaves
    no target touched and no temp file behind."""
    targets = [check_output_path(p) for p, _ in files]
    temps: list[str] = []
    try:
        for path, (_, data) in zip(targets, files, strict=True):
            fd, tmp = _temp_beside(path)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in zip(targets, temps, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    return atomic_write(path, lambda f: f.write(data))


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
    """The tensors of a safetensors blob in their stored order (by data offset), whatever
    order the library hands them back in (it differs between processes)."""
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} are not a valid safetensors blob: {e}") from None
    order = _stored_order(data)
    rank = {name: i for i, name in enumerate(order)}
    return {k: tensors[k] for k in sorted(tensors, key=lambda k: (rank.get(k, len(rank)), k))}


def _stored_order(data: bytes) -> list[str]:
    """Tensor names of a (valid) safetensors blob by data offset, then name."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    entries = [(v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__"]
    return [k for _, k in sorted(entries)]


def save_weights_file(
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


def load_state_dict(path: str | Path) -> StateDict:
    """The state_dict of a weights file (`load_weights_file` without the metadata)."""
    return load_weights_file(path)[0]


def load_weights_file(path: str | Path) -> tuple[StateDict, dict[str, str]]:
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
