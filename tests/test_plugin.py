"""A codec is one module: registering it is all it takes to appear in `compress`, `inspect`,
`decompress`, the bench's jobs and the codec contract. Shown with a toy codec defined here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from test_codec_contract import check_contract
from vaecompress.cli import main
from vaecompress.codecs import REGISTRY, Codec, CodecContext, Encoded, register, unregister
from vaecompress.codecs.base import add_passthrough, join_passthrough, split_passthrough
from vaecompress.coding.floats import float_specs, floats_from_bytes, floats_to_bytes, numel
from vaecompress.errors import UserError
from vaecompress.format import ROLE_CODE, ROLE_MODEL, Container, External, Payload
from vaecompress.io import StateDict, load_state_dict, save_weights_file

TOY = "toy-half"


@dataclass(frozen=True)
class ToySettings:
    scale: float = 1.0  # multiplies every weight before storing, divides after
    external_table: bool = False  # keep the (tiny) scale table in its own file


class ToyCodec(Codec):
    """float16 storage of every floating tensor, with an optional external."""

    name = TOY
    version = 1
    Settings = ToySettings
    externals = ("table",)

    @classmethod
    def operating_points(cls, preset: str) -> list[dict[str, Any]]:
        return [{"scale": 1.0}, {"scale": 2.0}] if preset == "full" else [{}]

    def validate(self) -> None:
        if not self.settings.scale > 0:
            raise UserError(f"{TOY}: scale must be positive, got {self.settings.scale!r}")

    def encode(self, state: StateDict, ctx: CodecContext) -> Encoded:
        coded, raw = split_passthrough(state)
        scale = self.settings.scale
        blob = b"".join(floats_to_bytes(t * scale, "float16") for t in coded.values())
        table = np.array([scale], dtype="<f4").tobytes()
        c = self.new_container(state)
        c.payloads.append(Payload("half", "raw-f16", ROLE_CODE, blob))
        externals = {}
        if self.settings.external_table:
            c.externals.append(External("table", "raw-f32", ROLE_MODEL,
                                        hashlib.sha256(table).hexdigest(), len(table)))
            externals["table"] = table
        else:
            c.payloads.append(Payload("table", "raw-f32", ROLE_MODEL, table))
        add_passthrough(c, raw)
        return Encoded(c, externals)

    def decode(self, c: Container, externals: Mapping[str, bytes]) -> StateDict:
        names = {p.name for p in c.payloads}
        if "table" in names:
            table = c.payload("table").data
        elif "table" in externals:
            table = externals["table"]
        else:
            raise UserError("this file references an external table; pass --external table=FILE")
        scale = float(np.frombuffer(table, dtype="<f4")[0])
        data, pos, out = c.payload("half").data, 0, {}
        for spec in float_specs(c.tensors):
            n = numel(spec["shape"])
            vals = floats_from_bytes(data[pos : pos + 2 * n], "float16", n) / scale
            pos += 2 * n
            out[spec["name"]] = torch.from_numpy(vals.copy()).reshape(spec["shape"])
        return join_passthrough(c, out)


@pytest.fixture
def toy() -> Iterator[None]:
    register(ToyCodec)
    try:
        yield
    finally:
        unregister(TOY)
    assert TOY not in REGISTRY


def test_toy_codec_in_the_cli(toy: None, tiny_state: dict, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.safetensors"
    save_weights_file(weights, tiny_state)
    packed, table = tmp_path / "w.toy", tmp_path / "table.bin"
    assert main(["compress", str(weights), "-o", str(packed), "--codec", TOY, "--set",
                 "scale=4", "--external-out", f"table={table}", "--quiet"]) == 0
    assert table.is_file()
    capsys.readouterr()
    assert main(["inspect", str(packed), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"]["name"] == TOY and info["codec"]["settings"]["scale"] == 4
    assert [e["name"] for e in info["externals"]] == ["table"]
    rebuilt = tmp_path / "r.safetensors"
    assert main(["decompress", str(packed), "-o", str(rebuilt)]) == 2  # table not beside it
    assert "--external table=FILE" in capsys.readouterr().err
    assert main(["decompress", str(packed), "-o", str(rebuilt), "--external",
                 f"table={table}"]) == 0
    out = load_state_dict(rebuilt)
    for k, v in tiny_state.items():
        assert torch.allclose(out[k].to(v.dtype), v, atol=1e-3), k
    assert main(["compress", str(weights), "-o", str(packed), "--codec", TOY, "--set",
                 "scale=0"]) == 2
    assert "scale must be positive" in capsys.readouterr().err


def test_toy_codec_in_the_bench_jobs(toy: None) -> None:
    from vaecompress.experiments import bench
    from vaecompress.experiments.bench_zoo import ZooBench

    task = ZooBench("full")
    assert TOY in task.default_codecs()
    cfg = bench.BenchConfig("full", ("fnn",), task.default_codecs())
    jobs, skipped = bench.plan(cfg, task)
    assert [p for m, c, p in jobs if c == TOY] == [{"scale": 1.0}, {"scale": 2.0}]
    assert TOY not in skipped


def test_toy_codec_passes_the_contract(toy: None) -> None:
    check_contract(TOY)
    check_contract(TOY, {"external_table": True})
