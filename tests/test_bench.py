"""The bench runner at a small scale: real bytes, real accuracy, every field, skipped peers,
records reused, data only for the methods that use it, the report; the command line's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vaecompress.experiments.bench as bench_mod
import vaecompress.experiments.bench_zoo as zoo_mod
from vaecompress.experiments.bench import BenchConfig, Subject, bench, record_key
from vaecompress.experiments.bench_report import best_within, record_formats, write_bench_report
from vaecompress.format import FORMAT_VERSION
from vaecompress.training.finetune import Finetuner

FIELDS = (
    "orig_bytes",
    "payload_bytes",
    "file_bytes",
    "external_bytes",
    "ratio_paper",
    "ratio_honest",
    "acc_orig",
    "acc_recon",
    "acc_drop",
    "compress_s",
    "decompress_s",
    "settings",
    "peak_rss_bytes",
    "rss_before_bytes",
    "peak_rss_decompress_bytes",
    "peak_added_bytes_per_param",
    "compress_s_per_mparam",
    "codec_settings",
    "git_revision",
    "format_version",
    "compress_s_inside_worker",
    "decompress_s_inside_worker",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_mnist_dir: Path) -> tuple[Path, dict]:
    from vaecompress.experiments import common
    from vaecompress.zoo.train import TrainConfig

    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setattr(zoo_mod, "trained_model",
               lambda *a, **kw: common.trained_model(*a, root=out / "models", **kw))
    mp.setattr(zoo_mod, "preset_config", lambda *a, **kw: TrainConfig(epochs=1, limit=10_000))
    mp.setattr(bench_mod, "_available",
               lambda c: "pretend it is missing: pip install it" if c == "nncodec" else None)
    try:
        cfg = BenchConfig("quick", ("fnn",), ("zstd", "int8", "int4", "prune", "nncodec"))
        task = zoo_mod.ZooBench("quick", data_dir=str(toy_mnist_dir), progress=False)
        results = bench(cfg, task, out, device=torch.device("cpu"), progress=False)
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
    assert results["config"]["task"] == "zoo" and results["config"]["model_preset"] == "quick"
    assert all(r["peak_rss_bytes"] >= r["rss_before_bytes"] > 0 for r in results["records"])


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
    codecs = zoo_mod.default_codecs("ablation")
    assert "vae-rd" in codecs and "zstd" not in codecs


def test_zoo_record_key_is_unchanged() -> None:
    """The key of a zoo record, as the bench computed it before the runner served two tasks
    (the FNN at the paper's training config, int8 at its defaults): records under
    results/bench-full and results/datafree are found by it."""
    from vaecompress.codecs import make_codec

    resolved = make_codec("int8").settings_json()
    assert record_key("8479061916e9", "int8", resolved, 0, torch.device("cpu")) == "aa1d55f1971e"


def test_the_report_names_the_formats_its_records_were_written_in() -> None:
    """Records are reused across revisions and their key leaves the container format out, so
    the report says which formats its files were written in (a record without the field was
    written before records kept it, in format 3)."""
    assert record_formats([{"format_version": 4}]) == "files written in format 4"
    both = record_formats([{"format_version": 4}, {}])
    assert both.startswith("files written in format 3, 4 (format 4 writes the same payloads")
    assert "results/header-bytes" in both


# ------------------------------------------------------------------ the runner, on a fake task


class FakeTask:
    """One 8x16 weight and a bias; fidelity is the largest weight error; the finetuner pulls
    the weights back to the original (and counts how often it is asked for)."""

    name = "fake"
    fidelity_fields = ("max_err",)

    def __init__(self, points: dict[str, list[dict[str, Any]]]) -> None:
        self.points = points
        gen = torch.Generator().manual_seed(0)
        self.state = {"w": torch.randn(8, 16, generator=gen), "b": torch.randn(8, generator=gen)}
        self.finetuners = 0

    def select_models(self, names: list[str] | None) -> tuple[str, ...]:
        return ("m",)

    def default_codecs(self) -> tuple[str, ...]:
        return tuple(self.points)

    def grid(self, codec: str) -> list[dict[str, Any]]:
        return [dict(p) for p in self.points.get(codec, [])]

    def subject(self, name: str, checkpoints: Path) -> Subject:
        return Subject(name, "m-v1", self.state)

    def finetuner(self, name: str) -> Finetuner:
        self.finetuners += 1
        orig = self.state

        def loss(state: Any, batch: Any) -> torch.Tensor:
            return sum(((state[k] - orig[k]) ** 2).sum() for k in orig)

        return Finetuner(loss=loss, batches=[None], steps_per_epoch=2)

    def probe(self, name: str) -> Any:
        return None

    def fidelity(self, name: str, rebuilt: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"max_err": max(float((rebuilt[k] - v).abs().max()) for k, v in self.state.items())}

    def config(self) -> dict[str, Any]:
        return {"fake_setting": 3}

    def report(self, results: dict[str, Any], out: Path) -> str:
        return ""


POINTS = {"zstd": [{}], "int8": [{}], "prune": [{"sparsity": 0.5, "finetune_epochs": 1.0}]}


def _run(task: FakeTask, out: Path) -> dict[str, Any]:
    cfg = BenchConfig("fake", ("m",), tuple(task.points), seed=3)
    return bench(cfg, task, out, device=torch.device("cpu"), progress=False)


def test_runner_measures_every_point_and_writes_what_made_it(tmp_path: Path) -> None:
    task = FakeTask(POINTS)
    res = _run(task, tmp_path)
    by = {r["codec"]: r for r in res["records"]}
    assert list(by) == ["zstd", "int8", "prune"]
    assert by["zstd"]["max_err"] == 0.0 < by["int8"]["max_err"]
    assert {r["format_version"] for r in res["records"]} == {FORMAT_VERSION}
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["records"] == res["records"]
    assert saved["config"] == {"preset": "fake", "task": "fake", "models": ["m"],
                               "codecs": ["zstd", "int8", "prune"], "grid": POINTS, "seed": 3,
                               "fake_setting": 3}
    env = saved["environment"]
    assert env["seed"] == 3 and env["device"] == "cpu" and env["torch"] == torch.__version__
    assert "git_revision" in env
    assert isinstance(env["cpu"], str) and env["cpu"]  # retrained models differ across CPUs
    assert not (tmp_path / "checkpoints").exists()  # removed once every training ended


def test_only_methods_that_use_data_get_the_finetuner(tmp_path: Path) -> None:
    task = FakeTask(POINTS)
    _run(task, tmp_path)
    assert task.finetuners == 1  # prune's point; zstd and int8 need the weights alone
    data_free = FakeTask({"zstd": [{}], "kmeans": [{"bits": 4}]})
    _run(data_free, tmp_path / "free")
    assert data_free.finetuners == 0


def test_records_are_reused_and_incomplete_ones_measured_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = FakeTask(POINTS)
    first = _run(task, tmp_path)
    real = bench_mod.measure
    measured: list[str] = []
    monkeypatch.setattr(bench_mod, "measure",
                        lambda t, s, codec, *a: measured.append(codec) or real(t, s, codec, *a))
    assert _run(task, tmp_path)["records"] == first["records"] and measured == []
    key = record_key("m-v1", "int8", first["records"][1]["codec_settings"], 3,
                     torch.device("cpu"))
    path = tmp_path / "records" / f"{key}.json"
    rec = json.loads(path.read_text())
    del rec["max_err"]
    path.write_text(json.dumps(rec))
    again = _run(task, tmp_path)
    assert measured == ["int8"] and "max_err" in again["records"][1]


def test_runner_skips_a_missing_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_mod, "_available",
                        lambda c: "install it: pip install zstd" if c == "zstd" else None)
    res = _run(FakeTask({"zstd": [{}], "int8": [{}]}), tmp_path)
    assert res["skipped"] == {"zstd": "install it: pip install zstd"}
    assert [r["codec"] for r in res["records"]] == ["int8"]
    assert "bench: skipping zstd: install it" in capsys.readouterr().out


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize(("argv", "says"), [
    (["--preset", "minilm", "--models", "fnn"], "--models names zoo models"),
    (["--preset", "minilm-datafree", "--data-dir", "x"], "--data-dir is the MNIST folder"),
    (["--preset", "minilm-datafree", "--codecs", "prune"], "no operating points for preset "
     "'minilm-datafree'"),
    (["--preset", "quick", "--models", "resnet"], "resnet"),
])
def test_cli_rejects_what_a_preset_cannot_run(argv: list[str], says: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from vaecompress.cli import main

    assert main(["bench", *argv, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()
