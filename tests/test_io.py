"""vaecompress.io: weights read back in their stored order in every process; atomic writes;
the state_dict found in a checkpoint of any layout."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vaecompress.api import compress
from vaecompress.errors import UserError
from vaecompress.files import atomic_write
from vaecompress.io import (
    ORDER_KEY,
    load_state_dict,
    load_weights_file,
    save_weights_file,
    state_from_bytes,
    state_to_bytes,
)
from vaecompress.torchfile import find_state_dict

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


# ------------------------------------------------------------- checkpoints of any layout


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g),
            "bn.num_batches_tracked": torch.tensor(5)}


def test_find_state_dict_where_it_is_nested() -> None:
    sd = _sd()
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
    for obj, key in [(sd, None), ({"state_dict": sd, "epoch": 3, "optimizer": optimizer}, None),
                     ({"a": {"b": {"net": sd}}, "step": 1}, None),
                     ({"model": sd, "ema": _sd(1)}, "model"),
                     ({"ema": {"model": _sd(1)}, "model.ema": sd}, "model.ema"),
                     ({"a": {"b": sd}, "c": _sd(1)}, "a.b"),
                     ({f"model.{k}": v for k, v in sd.items()} | {"head.w": torch.ones(1)},
                      "model")]:
        found = find_state_dict(obj, key=key)
        assert list(found) == list(sd) and all(found[k] is sd[k] for k in sd), (obj, key)


@pytest.mark.parametrize("obj, key, fragment", [
    ({"model": _sd(), "ema": _sd(1)}, None, "holds 2 state_dicts: 'model', 'ema'; choose one"),
    ({"epoch": 3, "args": [1, 2]}, None, "holds no state_dict"),
    ([torch.zeros(1)], None, "it is a list"),
    ({"model": _sd()}, "modle", "has no 'modle' (keys there: 'model')"),
    ({"model": _sd()}, "model.fc.bias", "is not a state_dict"),
    ({"epoch": 3}, "epoch.x", "'epoch' in ckpt is a int, not a mapping"),
])
def test_find_state_dict_refusals(obj: object, key: str | None, fragment: str) -> None:
    with pytest.raises(UserError, match=re.escape(fragment)):
        find_state_dict(obj, key=key, source="ckpt")


def test_training_arguments_load_and_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"model": _sd(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ok.pth")
    assert list(load_state_dict(tmp_path / "ok.pth")) == list(_sd())
    torch.save({"model": _sd(), "loss": nn.MSELoss()}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"holds a torch\.nn\.modules\.loss\.MSELoss object"):
        load_state_dict(tmp_path / "bad.pth")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_state_dict(tmp_path / "junk.pt")


def test_non_tensor_entries_are_dropped_with_a_warning() -> None:
    sd = _sd() | {"_version": 2, "note": "x"}
    with pytest.warns(UserWarning, match=r"ignoring 2 entries .* not tensors: '_version', 'note'"):
        found = find_state_dict({"model": sd, "epoch": 1})
    assert list(found) == list(_sd())


def test_format_told_by_content_and_tied_weights(tmp_path: Path) -> None:
    """A torch zip named .safetensors and a safetensors file named .bin both load; tensors
    that share memory (tied weights) are saved and compressed."""
    shared = torch.randn(4, 4)
    sd = {"emb.weight": shared, "head.weight": shared, "ids": torch.arange(4)[None]}
    sd["ids2"] = sd["ids"]
    torch.save(sd, tmp_path / "zip.safetensors")
    save_weights_file(tmp_path / "st.bin", sd)
    for name in ("zip.safetensors", "st.bin"):
        state, _ = load_weights_file(tmp_path / name)
        assert set(state) == set(sd) and torch.equal(state["head.weight"], shared), name
    out = compress(sd, "zstd")  # the integer passthrough holds two tied tensors
    from vaecompress.api import decompress

    assert all(torch.equal(decompress(out.data)[k], v) for k, v in sd.items())


def test_keep_order_gives_the_tensors_back_in_their_order(tmp_path: Path) -> None:
    sd = {"z.weight": torch.ones(2), "step": torch.tensor(3), "a.half": torch.ones(2).half(),
          "m.weight": torch.zeros(2)}
    save_weights_file(tmp_path / "plain.safetensors", sd)
    assert list(load_state_dict(tmp_path / "plain.safetensors")) != list(sd)  # dtype, name
    save_weights_file(tmp_path / "kept.safetensors", sd, {"x": 1}, keep_order=True)
    state, meta = load_weights_file(tmp_path / "kept.safetensors")
    assert list(state) == list(sd) and meta["x"] == "1"
    data = (tmp_path / "kept.safetensors").read_bytes()
    # A damaged order record is ignored: the stored order, never an error.
    bad = data.replace(meta[ORDER_KEY].encode(), b"9" * len(meta[ORDER_KEY]))
    assert list(state_from_bytes(bad)) == list(load_state_dict(tmp_path / "plain.safetensors"))


def _lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What Lightning 2.x saves: the module's state_dict beside loop, optimizer and
    hyper-parameter entries (plain containers and tensors only, as weights_only reads)."""
    return {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0),
                                            "exp_avg": torch.zeros(4, 8)}},
                              "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}],
        "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3},
    }


@pytest.mark.parametrize("kind", ["pytorch_model.bin", "lightning.ckpt", "safetensors-0x80"])
def test_checkpoints_people_have_round_trip(kind: str, tmp_path: Path) -> None:
    """pytorch_model.bin (a torch.save of the state_dict) and a Lightning .ckpt are read with
    weights_only=True, and a safetensors file whose 8-byte header length begins with 0x80 is
    not taken for a legacy pickle (issue 21; that one failed before: 'Weights only load
    failed')."""
    from vaecompress.cli import main

    g = torch.Generator().manual_seed(0)
    state = {"encoder.weight": torch.randn(4, 8, generator=g),
             "encoder.bias": torch.randn(4, generator=g)}
    src = tmp_path / kind
    if kind == "pytorch_model.bin":
        torch.save(state, src)
    elif kind == "lightning.ckpt":
        torch.save(_lightning_checkpoint(state), src)
    else:
        src = tmp_path / "m.safetensors"
        for pad in range(200):  # a name length that makes the header 128 + 256k bytes long
            named = {"x" * pad + k: v for k, v in state.items()}
            save_weights_file(src, named)
            if src.read_bytes()[0] == 0x80:
                state = named
                break
        assert src.read_bytes()[0] == 0x80
    assert main(["compress", str(src), "-o", str(tmp_path / "m.vaec"), "--codec", "zstd",
                 "--quiet"]) == 0
    assert main(["decompress", str(tmp_path / "m.vaec"), "-o",
                 str(tmp_path / "r.safetensors")]) == 0
    back, _ = load_weights_file(tmp_path / "r.safetensors")
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], v) for k, v in state.items())
