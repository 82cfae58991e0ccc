"""reproduce on a tiny scale: every artifact written, resumed without redoing finished work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vaecompress.experiments.reproduce as rep
from vaecompress.methods.paper.vae_paper import VAEPaperSettings

TINY = rep.ReproduceConfig(
    "quick",
    models=("rnn", "fnn"),
    sweep_model="rnn",
    sweep_latents=(32, 8),
    vae=VAEPaperSettings(epochs=6, patience=6, n_variants=10, hidden=(64,)),
    train_overrides={"epochs": 1, "limit": 2000},
    ours=(("vae-rd-free", {}), ("vae-rd", {"epochs": 0.05})),
)
FIELDS = (
    "params",
    "orig_bytes",
    "payload_bytes",
    "file_bytes",
    "external_bytes",
    "ratio_paper",
    "ratio_honest",
    "model",
    "latent",
    "acc_orig",
    "acc_recon",
    "vae_epochs",
    "vae_train_s",
    "compress_s",
    "decompress_s",
)


def _with_root(root: Path):
    """trained_model that keeps the test's models out of the user's cache."""
    from vaecompress.experiments import common

    def f(*a, **kw):
        return common.trained_model(*a, root=root, **kw)

    return f


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared model cache, apart from the run's folder as the user's cache is."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_mnist_dir: Path, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("rep")
    mp = pytest.MonkeyPatch()
    mp.setattr(rep, "trained_model", _with_root(cache))
    try:
        results = rep.reproduce(
            TINY, out, device=torch.device("cpu"), data_dir=str(toy_mnist_dir), progress=False
        )
        from vaecompress.experiments.report import write_report

        write_report(results, out, data_dir=toy_mnist_dir)
    finally:
        mp.undo()
    return out


def test_results_json_has_every_field(run: Path) -> None:
    res = json.loads((run / "results.json").read_text())
    for key in ("git_revision", "torch", "device", "seed"):
        assert key in res["environment"]
    assert res["config"]["vae"]["epochs"] == 6
    recs = res["records"]
    assert {(r["model"], r["latent"]) for r in recs} == {
        ("rnn", 64),
        ("fnn", 64),
        ("rnn", 32),
        ("rnn", 8),
    }
    for r in recs:
        for f in FIELDS:
            assert f in r, f
        assert r["ratio_honest"] < r["ratio_paper"]
        hist = r["history"]
        assert {"train_kl", "train_mse", "val_mse"} <= set(hist)  # Figure 2's split
        assert len(hist["val_mse"]) == r["vae_epochs"]
    table1 = {t["model"]: t["params"] for t in res["table1"]}
    assert table1 == {"rnn": 54_538, "fnn": 185_300}


def test_the_project_codecs_stand_beside_the_paper(run: Path) -> None:
    """The main command's report ends with the default codec and vae-rd on the same models."""
    res = json.loads((run / "results.json").read_text())
    got = {(r["model"], r["codec"]): r for r in res["ours"]}
    assert set(got) == {(m, c) for m in ("rnn", "fnn") for c in ("vae-rd-free", "vae-rd")}
    for r in got.values():
        assert r["ratio_honest"] > 1.0 and r["file_bytes"] > 0
        assert abs(r["acc_drop"] - (r["acc_orig"] - r["acc_recon"])) < 1e-9
    report = (run / "report.md").read_text()
    section = report.split("## The project's own codecs on the same models")[1]
    assert f"{got[('fnn', 'vae-rd')]['ratio_honest']:.1f}x" in section
    assert f"{got[('rnn', 'vae-rd-free')]['ratio_honest']:.1f}x" in section
    assert "OURS" in rep.__doc__ and rep.OURS["quick"][0] == ("vae-rd-free", {})


def test_report_and_figures_written(run: Path) -> None:
    report = (run / "report.md").read_text()
    assert "Table 2" in report and "ratio_honest" in report
    for png in ("fig2_vae_training.png", "fig3_params_time.png", "accuracy_vs_ratio.png"):
        assert (run / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_are_under_out(run: Path, cache: Path) -> None:
    """The trained classifiers are where a user looks: OUT/models/<model>.safetensors, the same
    bytes as the cached ones, named in results.json and in each record."""
    from vaecompress.io import load_weights_file

    res = json.loads((run / "results.json").read_text())
    assert res["models"] == {"rnn": "models/rnn.safetensors", "fnn": "models/fnn.safetensors"}
    for name, rel in res["models"].items():
        path = run / rel
        cached = next(cache.glob(f"{name}-*.safetensors"))
        assert path.read_bytes() == cached.read_bytes()
        state, meta = load_weights_file(path)
        assert meta["vaecompress.model"] == name and state
    assert all(r["model_file"] == res["models"][r["model"]] for r in res["records"])
    assert not list((run / "models").glob(".*"))


def test_publish_model_replaces_another(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    out = tmp_path / "out"
    dst = rep.publish_model(a, out, "cnn")
    assert dst == out / "models" / "cnn.safetensors" and dst.read_bytes() == b"first"
    assert rep.publish_model(a, out, "cnn") == dst  # already there: nothing to do
    rep.publish_model(b, out, "cnn")
    assert dst.read_bytes() == b"second" and a.read_bytes() == b"first"


def test_environment_records_threads_and_load(run: Path) -> None:
    res = json.loads((run / "results.json").read_text())
    assert res["environment"]["torch_threads"] == torch.get_num_threads()
    assert set(res["load_average"]) == {"start", "end"}


def test_rerun_reuses_finished_work(run: Path, monkeypatch: pytest.MonkeyPatch,
                                    toy_mnist_dir: Path, cache: Path) -> None:
    def fail(*a, **kw):
        raise AssertionError("a finished measurement was redone")

    monkeypatch.setattr(rep, "_measure", fail)
    monkeypatch.setattr(rep, "trained_model", _with_root(cache))
    res = rep.reproduce(TINY, run, device=torch.device("cpu"), data_dir=str(toy_mnist_dir),
                        progress=False)
    assert len(res["records"]) == 4


def test_interrupted_run_resumes(run: Path, monkeypatch: pytest.MonkeyPatch,
                                 toy_mnist_dir: Path, cache: Path) -> None:
    """Drop one record (as if the run had been killed before it) and run again: exactly that one
    measurement is redone."""
    victim = sorted((run / "records").glob("*.json"))[0]
    victim.unlink()
    calls: list[str] = []
    real, real_ours = rep._measure, rep._measure_ours

    def counting(name, *a, **kw):
        calls.append(name)
        return real(name, *a, **kw)

    def counting_ours(name, *a, **kw):  # the victim may be a record of the project's codecs
        calls.append(name)
        return real_ours(name, *a, **kw)

    monkeypatch.setattr(rep, "_measure", counting)
    monkeypatch.setattr(rep, "_measure_ours", counting_ours)
    monkeypatch.setattr(rep, "trained_model", _with_root(cache))
    rep.reproduce(TINY, run, device=torch.device("cpu"), data_dir=str(toy_mnist_dir),
                  progress=False)
    assert len(calls) == 1 and victim.is_file()
