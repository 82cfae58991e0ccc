"""Reading and writing model weights safely, and writing any output file atomically.

Weights are safetensors, or a PyTorch checkpoint read with `torch.load(weights_only=True)`:
nothing a user hands us is ever unpickled. A safetensors blob is read back in its stored order
(by data offset; safetensors stores by dtype, then name), so the same file gives the same
state_dict order, and the same compressed bytes, in every process; a file written with
`keep_order` (what decompress writes) records the order it was given and is read back in it.
Every output goes through `atomic_write`: a temporary file in the target folder, then a rename,
so a failed run never leaves a half-written file.

Names say what they read: `load_weights_file` (a weights file: state_dict and metadata),
`load_state_dict` (a weights file: the state_dict alone), `state_from_bytes` (a safetensors blob),
`find_state_dict` (the state_dict inside a loaded checkpoint).

Finding the state_dict in a checkpoint (docs/own-model.md): the format is told by the file's
first bytes (safetensors, a torch zip or a legacy torch pickle), the suffix only when they say
nothing. A checkpoint is searched for mappings of names to tensors, descending through mappings
with string keys (an optimizer's state, keyed by parameter numbers, is never entered): the one
found is taken, several are refused with their list unless `key` names one (a dotted path,
`ema.model`; in a flat state_dict or a safetensors file, a name prefix, stripped). Entries of
the state_dict that are not tensors are dropped with a warning. Names are kept as they are (a
`module.` prefix too): the rebuilt file has the names of the input.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaecompress.errors import UserError
from vaecompress.format.container import read_file

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
    if str(path).endswith(("/", os.sep)):
        raise UserError(f"output {path} names a folder; give a file path, e.g. "
                        f"{Path(path) / 'model.vaec'}")
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


def _unnamed_beside(path: Path) -> int | None:
    """A file without a name in `path`'s folder (Linux O_TMPFILE: a kill -9 while it is being
    written leaves nothing behind), or None where the system or file system has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(path.parent, flag | os.O_RDWR, 0o666)  # the umask applies, as for mkstemp
    except OSError:
        return None


def _name_unnamed(f: IO[bytes], path: Path) -> str:
    """Give the complete unnamed file `f` a temporary name beside `path` (to be renamed over
    it); where linking it is refused, copy it to a named temporary file instead."""
    try:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        os.link(f"/proc/self/fd/{f.fileno()}", tmp)
        return tmp
    except OSError:
        fd, tmp = _temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as g:
                f.seek(0)
                shutil.copyfileobj(f, g)
                g.flush()
                os.fsync(g.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> int:
    """Call `write(f)` on a temp file beside `path`, fsync, rename it to `path`; returns the
    bytes written. On any error the temp file is removed and `path` is untouched; on Linux the
    temp file has no name until it is complete, so not even a kill -9 leaves one behind. The
    only write-then-rename routine of the package (the container format keeps its own). A
    `path` that exists and is not a regular file (symlink, device, FIFO) is refused, never
    replaced."""
    path = check_output_path(path)
    fd = _unnamed_beside(path)
    tmp: str | None = None
    if fd is None:
        fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
            if tmp is None:
                tmp = _name_unnamed(f, path)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
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


def _read(path: Path) -> bytes:
    return read_file(path)


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


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def _is_safetensors(data: bytes) -> bool:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def _is_torch(data: bytes, path: Path) -> bool:
    """A torch.save file: a zip archive, or the legacy format (a pickle stream); by the
    suffix when the first bytes say neither."""
    if _is_safetensors(data):  # its 8-byte header length may begin with 0x80, like a pickle
        return False
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        return True
    return not _is_safetensors(data) and path.suffix.lower() in TORCH_SUFFIXES


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
    data = _read(path)
    if _is_torch(data, path):
        return find_state_dict(_torch_load(data, path), key=key, source=str(path)), {}
    state = state_from_bytes(data, what=f"weights in {path}")
    if key is not None:
        state = find_state_dict(state, key=key, source=str(path))
    return state, safetensors_metadata(data)


def _torch_load(data: bytes, path: Path) -> Any:
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


def find_state_dict(obj: Any, *, key: str | None = None, source: str = "checkpoint") -> StateDict:
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
