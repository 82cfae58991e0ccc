"""Files in and out: reading an input file (never a FIFO or a device, which would block),
checking an output before any work, and writing atomically.

Every output goes through `atomic_write`, the only write-then-rename routine of the package: a
temporary file in the target folder (on Linux one without a name until it is complete), fsynced,
renamed over the target, and the folder fsynced, so a failed or killed run never leaves a
half-written file and readers see the old file or the complete new one. Knows no format and no
torch: bytes only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from vaecompress.errors import UserError, short


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an input file, refusing (UserError, before opening it) anything that is
    not a regular file: a FIFO or a device would block or never end."""
    try:
        check_regular(path)
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except PermissionError:
        raise UserError(f"permission denied: {path}") from None
    except (OSError, ValueError) as e:  # a name too long, a NUL byte in it
        raise UserError(f"cannot read {short(str(path))}: "
                        f"{getattr(e, 'strerror', None) or e}") from None


def check_regular(path: str | os.PathLike[str]) -> None:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UserError(f"{path} is {what}; give a regular file")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | os.PathLike[str], *,
                      inputs: Sequence[str | Path] = ()) -> Path:
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


def atomic_write(path: str | os.PathLike[str],
                 write: Callable[[IO[bytes]], object]) -> int:
    """Call `write(f)` on a temp file beside `path`, fsync, rename it to `path`; returns the
    bytes written. On any error the temp file is removed and `path` is untouched; on Linux the
    temp file has no name until it is complete, so not even a kill -9 leaves one behind. The
    only write-then-rename routine of the package. A
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
    _fsync_dir(path.parent)
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
    for parent in dict.fromkeys(p.parent for p in targets):
        _fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> int:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> int:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and the file is
    # already complete, so failure here is not an error.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
