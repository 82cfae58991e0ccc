"""bench at a small scale: real bytes, real accuracy, every field, skipped peers, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vaecompress.experiments.bench as bench_mod
from vaecompress.experiments.bench_report import best_within, write_bench_report

FIELDS = (
    "orig_bytes",
    "payload_bytes",
    "file_bytes",
    "external_bytes",
    "ratio_paper",
    "ratio_honest",
    "acc_orig",
    "acc_recon",
    "compress_s",
    "decompress_s",
    "settings",
    "peak_rss_bytes",
    "codec_settings",
    "git_revision",
    "compress_s_inside_worker",
    "decompress_s_inside_worker",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_mnist_dir: Path) -> tuple[Path, dict]:
    from vaecompress.experiments import common
    from vaecompress.zoo.train import TrainConfig

    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setattr(
        bench_mod,
        "trained_model",
        lambda *a, **kw: common.trained_model(*a, root=out / "models", **kw),
    )
    mp.setattr(bench_mod, "preset_config", lambda *a, **kw: TrainConfig(epochs=1, limit=10_000))
    mp.setattr(
        bench_mod,
        "_available",
        lambda c: "pretend it is missing: pip install it" if c == "nncodec" else None,
    )
    try:
        cfg = bench_mod.BenchConfig("quick", ("fnn",), ("zstd", "int8", "int4", "prune", "nncodec"))
        results = bench_mod.bench(
            cfg, out, device=torch.device("cpu"), data_dir=str(toy_mnist_dir), progress=False
        )
        write_bench_report(results, out)
    finally:
        mp.undo()
    return out, results


def test_records_carry_every_field(run: tuple[Path, dict]) -> None:
    out, results = run
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["records"] == results["records"]
    assert {r["codec"] for r in results["records"]} == {"zstd", "int8", "int4", "prune"}
    for r in results["records"]:
        for f in FIELDS:
            assert f in r, f
        assert r["ratio_honest"] == pytest.approx(
            r["orig_bytes"] / (r["file_bytes"] + r["external_bytes"])
        )
    by = {r["codec"]: r for r in results["records"]}
    assert by["zstd"]["acc_recon"] == by["zstd"]["acc_orig"]  # lossless
    assert (
        1.0 < by["zstd"]["ratio_honest"] < by["int8"]["ratio_honest"] < by["int4"]["ratio_honest"]
    )
    assert "git_revision" in results["environment"]


def test_missing_peer_is_skipped_with_a_hint(run: tuple[Path, dict]) -> None:
    out, results = run
    assert results["skipped"] == {"nncodec": "pretend it is missing: pip install it"}
    assert "pip install it" in (out / "bench.md").read_text()


def test_report_and_plot(run: tuple[Path, dict]) -> None:
    out, results = run
    md = (out / "bench.md").read_text()
    assert "Best honest ratio" in md
    int8 = next(r for r in results["records"] if r["codec"] == "int8")
    assert f"{int8['ratio_honest']:.3g}x" in md
    assert (out / "rate_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_best_within_respects_the_tolerance() -> None:
    recs = [
        {"model": "m", "codec": "c", "acc_drop": 0.4, "ratio_honest": 10.0},
        {"model": "m", "codec": "c", "acc_drop": 0.9, "ratio_honest": 20.0},
        {"model": "m", "codec": "c", "acc_drop": 3.0, "ratio_honest": 50.0},
    ]
    assert best_within(recs, 0.5)[("m", "c")]["ratio_honest"] == 10.0
    assert best_within(recs, 1.0)[("m", "c")]["ratio_honest"] == 20.0
    assert best_within(recs[2:], 1.0)[("m", "c")] is None


def test_cli_rejects_unknown_codec(capsys: pytest.CaptureFixture[str]) -> None:
    from vaecompress.cli import main

    assert main(["bench", "--codecs", "gzip", "--out", "/tmp/never"]) == 2
    assert "unknown codec" in capsys.readouterr().err


def test_ablation_table_compares_each_variant_with_the_reference() -> None:
    from vaecompress.experiments.bench_report import write_ablation_table

    def rec(settings: dict, ratio: float, drop: float) -> dict:
        return {"model": "fnn", "codec": "vae-rd", "settings": settings, "acc_recon": 97.0,
                "acc_drop": drop, "ratio_honest": ratio, "bits_per_param": 32 / ratio,
                "file_bytes": int(741200 / ratio)}

    ref = {"lam": 10.0}
    results = {"config": {"grid": {"vae-rd": [ref, {**ref, "entropy": False}]}},
               "records": [rec({**ref, "entropy": False}, 50.0, 0.5), rec(ref, 100.0, 0.5)]}
    table = write_ablation_table(results)
    assert "reference: lam=10.0" in table
    assert "| entropy=False |" in table and "| 0.50x |" in table


def test_ablation_preset_runs_only_codecs_that_define_it() -> None:
    codecs = bench_mod.default_codecs("ablation")
    assert "vae-rd" in codecs and "zstd" not in codecs
