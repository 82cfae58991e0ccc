"""Resumable training: a loop's whole state in one file, written atomically, resumed only by
the same run.

A long training (a zoo classifier, the paper's VAE, the rate-distortion codecs' optimization)
saves its state every `every_s` seconds at the end of an epoch or step: the weights or latents,
the optimizer's state, every random state it draws from (torch's global generator, its own
`torch.Generator`, CUDA's), its counters, its best-so-far state and the history it records. A
run that was killed and started again with the same settings finds the file, restores that
state and goes on; its result is the same, bit for bit, as that of a run never interrupted. At
normal completion the file is removed.

The file is a `torch.save` of plain containers, tensors and numbers, read back with
`torch.load(weights_only=True)` (never unpickled), and every field is checked before use. It
carries the loop's kind and a fingerprint: a sha256 of everything that decides the run (the
config, the inputs' bytes, torch's version, the number of processes). A file of another kind,
of another run (a different fingerprint), unreadable or damaged is ignored with a warning, and
the training starts afresh; it is replaced at the next save.

Boundary: this module stores and checks; each loop says what its state is and restores it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaecompress.errors import UserError
from vaecompress.files import atomic_write

FORMAT = "vaecompress-checkpoint"
VERSION = 1
EVERY_S_ENV = "VAECOMPRESS_CHECKPOINT_EVERY_S"
# Writing a checkpoint costs about four times the trained state (weights, best weights and
# Adam's two moments); once a minute that is well under 1 % of a training's time.
DEFAULT_EVERY_S = 60.0


class CheckpointError(ValueError):
    """A field read back from a checkpoint is not what the loop wrote (the file is ignored)."""


def checkpoint_every_s() -> float:
    """The save interval: `VAECOMPRESS_CHECKPOINT_EVERY_S` (0 saves after every epoch or step),
    else `DEFAULT_EVERY_S`."""
    env = os.environ.get(EVERY_S_ENV, "").strip()
    if not env:
        return DEFAULT_EVERY_S
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise UserError(f"{EVERY_S_ENV} must be a number of seconds >= 0, got {env!r}")
    return value


def fingerprint(kind: str, config: Any, data: Iterable[Any] = ()) -> str:
    """sha256 (hex) of what decides a training: its kind, `config` (JSON-able), the bytes of
    every tensor or array in `data` (with its dtype and shape), torch's version."""
    h = hashlib.sha256()
    head = {"format": FORMAT, "version": VERSION, "kind": kind, "torch": torch.__version__,
            "config": config}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for item in data:
        if isinstance(item, torch.Tensor):
            t = item.detach().to("cpu").contiguous()
            h.update(f"|tensor {t.dtype} {list(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            h.update(f"|array {a.dtype} {list(a.shape)}|".encode())
            h.update(a.tobytes())
        else:
            h.update(f"|{json.dumps(item, sort_keys=True, default=str)}|".encode())
    return h.hexdigest()


class Checkpoint:
    """One training's checkpoint file. `path=None` makes every method a no-op (no checkpoint).

    The loop calls `load()` once before training (the saved state, or None), `due()` at the
    end of each epoch or step and `save(state)` when it is, and `finish()` when it is done."""

    def __init__(self, path: str | Path | None, *, kind: str, fingerprint: str,
                 every_s: float | None = None, writes: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.writes = writes  # False: read only (the processes of a group other than rank 0)
        self.kind = kind
        self.fingerprint = fingerprint
        self.every_s = checkpoint_every_s() if every_s is None else float(every_s)
        self._last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The state of the last save of this same run, or None (no file, or one to ignore)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a damaged or hostile file
            self.reject(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            return None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            self.reject("not a vaecompress checkpoint")
            return None
        if obj.get("version") != VERSION:
            self.reject(f"format version {obj.get('version')!r}, this version reads {VERSION}")
            return None
        if obj.get("kind") != self.kind:
            self.reject(f"a checkpoint of {obj.get('kind')!r}, not of {self.kind!r}")
            return None
        if obj.get("fingerprint") != self.fingerprint:
            self.reject("made by a run with other settings or inputs")
            return None
        state = obj.get("state")
        if not isinstance(state, dict):
            self.reject("it holds no state")
            return None
        return state

    def reject(self, why: str) -> None:
        """Warn that the file is ignored; the training starts afresh and replaces it."""
        warnings.warn(f"ignoring checkpoint {self.path}: {why}; training from the start",
                      stacklevel=2)

    def due(self) -> bool:
        return (self.path is not None and self.writes
                and time.monotonic() - self._last >= self.every_s)

    def save(self, state: Mapping[str, Any]) -> None:
        if self.path is None or not self.writes:
            return
        obj = {"format": FORMAT, "version": VERSION, "kind": self.kind,
               "fingerprint": self.fingerprint, "state": dict(state)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda f: torch.save(obj, f))
        self._last = time.monotonic()

    def finish(self) -> None:
        """The training ended normally: the file has served, and so have the temp files a
        kill in the middle of a save left beside it (`io.atomic_write` names them so)."""
        if self.path is not None and self.writes:
            self.path.unlink(missing_ok=True)
            for tmp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                tmp.unlink(missing_ok=True)


def hidden_beside(output: str | Path, suffix: str = "checkpoint") -> Path:
    """The checkpoint of the training that makes `output`: `.NAME.checkpoint` in its folder."""
    p = Path(output)
    return p.with_name(f".{p.name}.{suffix}")


# ------------------------------------------------------------------ checking what is read back


def read_field(state: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`state[key]`, which must be an instance of `kind` (bool is not an int here)."""
    if key not in state:
        raise CheckpointError(f"field '{key}' is missing")
    value = state[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise CheckpointError(f"field '{key}' is {type(value).__name__}")
    if not isinstance(value, kinds):
        raise CheckpointError(f"field '{key}' is {type(value).__name__}")
    return value


def count(state: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """An integer field in [lo, hi]."""
    value = read_field(state, key, int)
    if not lo <= value <= hi:
        raise CheckpointError(f"field '{key}' = {value} is outside [{lo}, {hi}]")
    return value


def seconds(state: Mapping[str, Any], key: str) -> float:
    """A finite duration >= 0."""
    value = read_field(state, key, (int, float))
    if not (math.isfinite(value) and value >= 0):
        raise CheckpointError(f"field '{key}' = {value} is not a duration")
    return float(value)


def number(state: Mapping[str, Any], key: str) -> float:
    """A float field (an int is accepted)."""
    return float(read_field(state, key, (int, float)))


def number_list(state: Mapping[str, Any], key: str, length: int | None = None) -> list[float]:
    """A list of floats (of `length` items when given)."""
    value = read_field(state, key, list)
    if length is not None and len(value) != length:
        raise CheckpointError(f"field '{key}' holds {len(value)} values, expected {length}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise CheckpointError(f"field '{key}' holds a value that is not a number")
    return [float(v) for v in value]


def tensor_like(value: Any, ref: torch.Tensor, what: str) -> torch.Tensor:
    """`value`, a tensor of `ref`'s dtype and shape."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{what} is not a tensor")
    if value.dtype != ref.dtype or value.shape != ref.shape:
        raise CheckpointError(f"{what} is {value.dtype} {list(value.shape)}, expected "
                              f"{ref.dtype} {list(ref.shape)}")
    return value


def state_dict_like(value: Any, ref: Mapping[str, torch.Tensor], what: str) -> dict:
    """A state_dict with exactly `ref`'s names, dtypes and shapes."""
    if not isinstance(value, dict) or list(value) != list(ref):
        raise CheckpointError(f"{what} does not hold the expected tensors")
    return {k: tensor_like(value[k], ref[k], f"{what} '{k}'") for k in ref}


def optimizer_state(value: Any, opt: torch.optim.Optimizer, what: str = "optimizer") -> dict:
    """An optimizer state_dict that fits `opt`: the same parameter groups, and for every
    parameter state tensors of its shape (or scalars, such as Adam's step)."""
    ref = opt.state_dict()
    if not isinstance(value, dict) or set(value) != {"state", "param_groups"}:
        raise CheckpointError(f"{what} state is malformed")
    groups, states = value["param_groups"], value["state"]
    if not isinstance(groups, list) or len(groups) != len(ref["param_groups"]):
        raise CheckpointError(f"{what} has other parameter groups")
    params = [p for g in opt.param_groups for p in g["params"]]
    for g, rg in zip(groups, ref["param_groups"], strict=True):
        if not isinstance(g, dict) or g.get("params") != rg["params"] or set(g) != set(rg):
            raise CheckpointError(f"{what} has other parameter groups")
    if not isinstance(states, dict) or not set(states) <= set(range(len(params))):
        raise CheckpointError(f"{what} holds state for unknown parameters")
    for i, st in states.items():
        if not isinstance(st, dict):
            raise CheckpointError(f"{what} state {i} is malformed")
        for k, v in st.items():
            scalar = k == "step" and isinstance(v, torch.Tensor) and v.numel() == 1
            if not isinstance(v, torch.Tensor) or not (
                scalar or (v.shape == params[i].shape and v.dtype == params[i].dtype)
            ):
                raise CheckpointError(f"{what} state {i} '{k}' does not fit its parameter")
    return value


# ------------------------------------------------------------------ random states


def rng_states(generators: Mapping[str, torch.Generator], device: torch.device) -> dict:
    """Every random state a loop draws from: torch's global CPU generator, CUDA's for
    `device`, and the loop's own generators by name."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    out["generators"] = {k: g.get_state() for k, g in generators.items()}
    return out


def restore_rng(value: Any, generators: Mapping[str, torch.Generator],
                device: torch.device) -> Callable[[], None]:
    """Check the saved random states of `rng_states`; returns the function that sets them
    (called once everything else has been checked)."""
    if not isinstance(value, dict):
        raise CheckpointError("random states are malformed")
    cpu = tensor_like(value.get("torch"), torch.get_rng_state(), "torch random state")
    cuda = None
    if device.type == "cuda":
        cuda = tensor_like(value.get("cuda"), torch.cuda.get_rng_state(device),
                           "CUDA random state")
    gens = value.get("generators")
    if not isinstance(gens, dict) or set(gens) != set(generators):
        raise CheckpointError("the loop's random generators are missing")
    checked = {k: tensor_like(gens[k], g.get_state(), f"generator '{k}' state")
               for k, g in generators.items()}

    def apply() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        for k, g in generators.items():
            g.set_state(checked[k])

    return apply
