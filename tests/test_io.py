"""vaecompress.io: weights read back in their stored order in every process; atomic writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaecompress.api import compress
from vaecompress.io import (
    atomic_write,
    load_state_dict,
    load_weights_file,
    save_weights_file,
    state_from_bytes,
    state_to_bytes,
)

NAMES = [f"layer{i}.{kind}" for i in (9, 3, 12, 0, 7) for kind in ("weight", "bias")]


def _weights(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(3, 4, generator=g) for k in NAMES}
    state["half"] = torch.randn(5, generator=g).half()  # another dtype: stored elsewhere
    save_weights_file(path, state, {"vaecompress.model": "toy"})


def _stored_order(data: bytes) -> list[str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def test_tensors_come_back_in_stored_order(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    _weights(path)
    data = path.read_bytes()
    assert list(state_from_bytes(data)) == _stored_order(data)
    state, meta = load_weights_file(path)
    assert list(state) == _stored_order(data) and meta == {"vaecompress.model": "toy"}
    assert list(load_state_dict(path)) == list(state)


def test_same_file_same_compressed_bytes_in_every_process(tmp_path: Path) -> None:
    """The library's own order differs between processes; ours must not."""
    path = tmp_path / "w.safetensors"
    _weights(path)
    code = (
        "import hashlib, sys\n"
        "from vaecompress.api import compress\n"
        "from vaecompress.io import load_state_dict\n"
        "s = load_state_dict(sys.argv[1])\n"
        "print(','.join(s), hashlib.sha256(compress(s, 'int8').data).hexdigest())\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           text=True, check=True).stdout for _ in range(3)}
    assert len(outs) == 1
    order, digest = outs.pop().split()
    assert order.split(",") == _stored_order(path.read_bytes())
    here = compress(load_state_dict(path), "int8").data
    assert hashlib.sha256(here).hexdigest() == digest


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail(f) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert atomic_write(target, lambda f: f.write(b"new!")) == 4
    assert target.read_bytes() == b"new!"


def test_state_to_bytes_round_trip() -> None:
    state = {"b": torch.ones(2), "a": torch.zeros(3, dtype=torch.int64)}
    back = state_from_bytes(state_to_bytes(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
