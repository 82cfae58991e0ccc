"""Hugging Face model folders: read one as a state_dict and the layout that writes it back.

A folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`model-00001-of-00003.safetensors`, ...), or `pytorch_model.bin`, or its shards listed by
`pytorch_model.bin.index.json` (`pytorch_model-00001-of-00002.bin`, ...; every `.bin` read with
`torch.load(weights_only=True)`, never unpickled otherwise), beside files that are not weights
(config.json, tokenizer files). `read_folder` gives the tensors of every shard in shard order
and a `FolderLayout`: each shard's file name, tensor names and safetensors metadata, and the
bytes of every other regular file of the folder (the index included, copied through
untouched). `compress` stores the layout in the file's meta (`FOLDER_KEY`); `decompress -o
FOLDER` writes the same shards, index and files back (`write_folder`): safetensors shards
written with their own metadata by the same library are byte for byte those of the input when
the codec is lossless. The folder is written beside its target under a temporary name and
renamed into place, so a failed run leaves no half folder.

Boundary: files and layout only; which codec compresses the tensors is the caller's business.
All of a folder's tensors are read before compressing (the codecs take one state_dict).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaecompress.errors import FormatError, UserError
from vaecompress.files import read_file
from vaecompress.io import (
    StateDict,
    load_weights_file,
    safetensors_metadata,
    state_from_bytes,
    state_to_bytes,
)

FOLDER_KEY = "vaecompress.folder"
INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
INDEXES = (INDEX, BIN_INDEX)  # the safetensors index first, where a folder has both
SINGLE = ("model.safetensors", "pytorch_model.bin")
MAX_OTHER_BYTES = 16 * 2**20  # config and tokenizer files stored in the header, in total


@dataclass
class Shard:
    file: str
    tensors: list[str]
    metadata: dict[str, str]


@dataclass
class FolderLayout:
    shards: list[Shard]
    files: dict[str, bytes]  # every other regular file, by name, the index included

    def to_json(self) -> dict[str, Any]:
        return {"shards": [{"file": s.file, "tensors": s.tensors, "metadata": s.metadata}
                           for s in self.shards],
                "files": {k: base64.b64encode(v).decode("ascii")
                          for k, v in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, obj: Any) -> FolderLayout:
        """The layout a file's meta holds, every field checked (FormatError)."""
        try:
            shards = [Shard(_name(s["file"]), [str(t) for t in s["tensors"]],
                            {str(k): str(v) for k, v in s["metadata"].items()})
                      for s in obj["shards"]]
            files = {_name(k): base64.b64decode(v, validate=True)
                     for k, v in obj["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, UserError) as e:
            raise FormatError(f"meta '{FOLDER_KEY}' is malformed: {e}") from None
        names = [s.file for s in shards] + list(files)
        if not shards or len(set(names)) != len(names):
            raise FormatError(f"meta '{FOLDER_KEY}' lists no shard or a file twice")
        return cls(shards, files)


def _name(name: Any) -> str:
    """A plain file name inside the folder: no separator, not '.' or '..'."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name \
            or name in (".", "..") or len(name.encode("utf-8", "surrogatepass")) > 255:
        raise UserError(f"{str(name)[:40]!r} is not a file name inside the model folder")
    return name


def is_model_folder(path: str | Path) -> bool:
    """A Hugging Face model folder: one with a shard index, `model.safetensors` or
    `pytorch_model.bin`. Another folder of weights files is a run's checkpoints
    (`family.commands.series_inputs`)."""
    folder = Path(path)
    return folder.is_dir() and any((folder / n).is_file() for n in (*INDEXES, *SINGLE))


def shard_files(folder: Path) -> list[str]:
    for name in INDEXES:
        index = folder / name
        if not index.is_file():
            continue
        suffix = ".safetensors" if name == INDEX else ".bin"
        try:
            weight_map = json.loads(read_file(index))["weight_map"]
            files = [_name(f) for f in weight_map.values()]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a shard index: {e}") from None
        wrong = [f for f in files if not f.endswith(suffix)]
        if wrong:
            raise UserError(f"{index} lists {wrong[0]!r}, not a {suffix} shard")
        return list(dict.fromkeys(files))  # in order of first appearance
    for single in SINGLE:
        if (folder / single).is_file():
            return [single]
    raise UserError(f"{folder} holds no {INDEX}, {BIN_INDEX}, {SINGLE[0]} or {SINGLE[1]}: not "
                    "a model folder")


def read_folder(folder: str | Path) -> tuple[StateDict, FolderLayout]:
    """Every tensor of the folder's shards (in shard order) and the layout to write it back."""
    folder = Path(folder)
    shards: list[Shard] = []
    state: StateDict = {}
    for file in shard_files(folder):
        part, meta = read_shard(folder, file)
        twice = sorted(set(part) & set(state))
        if twice:
            raise UserError(f"tensor {twice[0]!r} is in two shards of {folder}")
        state.update(part)
        shards.append(Shard(file, list(part), meta))
    return state, FolderLayout(shards, other_files(folder, shards))


def read_shard(folder: Path, file: str) -> tuple[StateDict, dict[str, str]]:
    """One shard's tensors (in stored order) and its safetensors metadata."""
    path = folder / file
    if file.endswith(".safetensors"):
        data = read_file(path)
        return state_from_bytes(data, what=f"weights in {path}"), safetensors_metadata(data)
    return load_weights_file(path)


# safetensors' names of the floating-point dtypes: the weights a lossy codec codes
_ST_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def float_weights(folder: Path, file: str) -> int:
    """How many floating-point weights a shard holds, from a safetensors shard's header alone
    (a `.bin` shard is loaded, one at a time)."""
    path = folder / file
    if not file.endswith(".safetensors"):
        part, _ = load_weights_file(path)
        return sum(t.numel() for t in part.values() if t.is_floating_point())
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 * 2**20:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        total = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] in _ST_FLOATS:
                count = 1
                for d in info["shape"]:
                    count *= int(d)
                total += count
        return total
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"weights in {path} are not a valid safetensors file: {e}") from None


def other_files(folder: Path, shards: list[Shard]) -> dict[str, bytes]:
    """Every regular file of the folder that is not a shard (config, tokenizer, the index)."""
    weights = {s.file for s in shards}
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name not in weights and p.is_file() and not p.is_symlink():
            files[_name(p.name)] = read_file(p)
    if sum(len(v) for v in files.values()) > MAX_OTHER_BYTES:
        raise UserError(f"the files of {folder} beside its weights hold more than "
                        f"{MAX_OTHER_BYTES // 2**20} MiB; compress the weights file instead")
    return files


def check_folder_output(path: str | Path) -> Path:
    """A folder to create: it must not exist yet, and its parent must."""
    target = Path(str(path).rstrip("/") or "/")
    if target.exists() or target.is_symlink():
        raise UserError(f"output {target} exists; decompress writes a model folder to a new path")
    if not target.parent.is_dir():
        raise UserError(f"output folder does not exist: {target.parent}")
    return target


def write_folder(path: str | Path, state: Mapping[str, torch.Tensor],
                 layout: FolderLayout) -> None:
    """Write the shards and files of `layout` with the tensors of `state` into a new folder,
    all or nothing."""
    listed = [t for s in layout.shards for t in s.tensors]
    if sorted(listed) != sorted(state):
        raise FormatError(f"meta '{FOLDER_KEY}' does not list the file's tensors")
    write_folder_parts(path, layout, lambda _, shard: {t: state[t] for t in shard.tensors})


def write_folder_parts(path: str | Path, layout: FolderLayout,
                       part_of: Callable[[int, Shard], Mapping[str, torch.Tensor]]) -> None:
    """Write the shards and files of `layout` into a new folder, all or nothing, asking
    `part_of(k, shard)` for each shard's tensors in turn (a reader that rebuilds one shard at
    a time holds one shard at a time)."""
    target = check_folder_output(path)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        for k, shard in enumerate(layout.shards):
            part = part_of(k, shard)
            if list(part) != shard.tensors:
                raise FormatError(f"shard {shard.file} rebuilds other tensors than meta "
                                  f"'{FOLDER_KEY}' lists")
            if shard.file.endswith(".safetensors"):
                (tmp / shard.file).write_bytes(state_to_bytes(part, shard.metadata or None))
            else:
                torch.save(dict(part), tmp / shard.file)
            del part
        for name, data in layout.files.items():
            (tmp / name).write_bytes(data)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
