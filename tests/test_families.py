"""`experiments.families`: the family bench on toy MNIST, end to end, and its shifted tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vaecompress.data import MnistSplit
from vaecompress.experiments import families as fam

TINY = fam.FamiliesConfig(tasks=("rotated", "digits-0-4"), finetune_epochs=1, run_epochs=1,
                          snrs_alone=(10.0,), snrs_delta=(10.0,), snrs_series=(10.0,),
                          task_epochs=0.05, task_lams_alone=(7.0,), task_lams_delta=(2.0,),
                          task_lams_series=(4.0,), nncodec_qps=(-20,), change_snrs=(3.0,))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_mnist_dir: Path) -> tuple[Path, dict]:
    from vaecompress.experiments import common
    from vaecompress.zoo.train import TrainConfig

    out = tmp_path_factory.mktemp("families")
    mp = pytest.MonkeyPatch()
    mp.setattr(fam, "trained_model",
               lambda *a, **kw: common.trained_model(*a, root=out / "models", **kw))
    mp.setattr(fam, "preset_config", lambda *a, **kw: TrainConfig(epochs=1))
    try:
        results = fam.run(TINY, out, device=torch.device("cpu"), data_dir=str(toy_mnist_dir),
                          progress=False, families=("fine-tunes", "checkpoints"))
    finally:
        mp.undo()
    return out, results


def test_every_family_is_coded_every_way_and_reported(run: tuple[Path, dict]) -> None:
    out, results = run
    saved = json.loads((out / "families.json").read_text())
    assert saved["environment"]["git_revision"] == results["environment"]["git_revision"]
    assert saved["config"]["tasks"] == ["rotated", "digits-0-4"]
    ft, ck = saved["families"]["fine-tunes"], saved["families"]["checkpoints"]
    assert [m["label"] for m in ft["members"]] == ["rotated", "digits-0-4"]
    assert [m["label"] for m in ck["members"]] == ["step-2", "step-4"]  # toy: 5 steps an epoch
    assert {(r["how"], r["codec"]) for r in ft["runs"]} >= {
        ("alone", "vae-rd-free"), ("alone", "vae-rd"), ("base", "bitdelta"), ("base", "zstd"),
        ("base", "vae-rd-free"), ("base", "vae-rd")}
    assert {(r["how"], r["codec"]) for r in ck["runs"]} >= {
        ("alone", "vae-rd-free"), ("alone", "vae-rd"), ("series", "vae-rd-free"),
        ("series", "vae-rd"), ("series", "zstd")}
    assert {r["how"] for r in ck["runs"]} == {"alone", "series"}
    # the weights' target, the change's, both (the series' first checkpoint has no base: no
    # sweep of the change's target there)
    for info, how, change in ((ft, "base", [{"snr": fam.CHANGE_SWEEP_SNR, "change_snr": 3.0}]),
                              (ck, "series", [])):
        free = [r["settings"] for r in info["runs"] if (r["how"], r["codec"]) ==
                (how, "vae-rd-free")]
        assert free == [{"snr": 10.0, "change_snr": 0.0}, *change, {}]
    from vaecompress.codecs import REGISTRY

    if REGISTRY["nncodec"].available() is None:  # the data-free peer, alone
        assert ("alone", "nncodec") in {(r["how"], r["codec"]) for r in ft["runs"] + ck["runs"]}
    for r in ft["runs"] + ck["runs"]:  # only the task-aware codecs used the data
        assert r["data"] == (r["codec"] == "vae-rd" or r["settings"].get("finetune_epochs", 0) > 0)
    # BitDelta data-free and refined on each member's task (the peer at its best)
    assert [r["settings"] for r in ft["runs"] if r["codec"] == "bitdelta"] == [
        {}, *[{"finetune_epochs": TINY.task_epochs, "lr": lr} for lr in TINY.bitdelta_lrs]]
    assert {"bitdelta", "bitdelta_refined"} <= set(ft["summary"])
    refined = [r for r in ft["runs"] if r["codec"] == "bitdelta" and r["data"]]
    assert ft["summary"]["bitdelta_refined"]["total_bytes"] in {r["total_bytes"] for r in refined}
    for info in (ft, ck):
        for r in info["runs"]:
            assert len(r["bytes"]) == len(r["accuracy"]) == len(info["members"])
            assert r["ok"] == (r["max_drop"] <= TINY.tolerance)
            if r["codec"] == "zstd":  # lossless, alone, against the base or in a series
                assert r["max_drop"] == 0
            # the change's SNR of every member coded against a model, lossy (else None)
            against = [r["how"] == "base" or (r["how"] == "series" and k > 0)
                       for k in range(len(info["members"]))]
            assert [c is not None for c in r["change_snr_db"]] == [
                a and r["codec"] != "zstd" for a in against]
        assert len(info["summary"]["comparisons"]) == 2
    md = (out / "families.md").read_text()
    assert md == fam.render(saved)
    assert "## fine-tunes" in md and "## checkpoints" in md
    assert md.count("\n| ") == 2 + sum(len(i["runs"]) + 1 for i in (ft, ck)) - 2


def test_the_shifted_tasks() -> None:
    rng = np.random.default_rng(0)
    split = MnistSplit(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
                       np.arange(20, dtype=np.int64) % 10)
    rotated = fam.shift(split, "rotated", 0)
    assert rotated.images.shape == split.images.shape and (rotated.labels == split.labels).all()
    assert not (rotated.images == split.images).all()
    noisy = fam.shift(split, "noisy", 3)
    assert (noisy.images == fam.shift(split, "noisy", 3).images).all()
    assert not (noisy.images == fam.shift(split, "noisy", 4).images).all()
    subset = fam.shift(split, "digits-0-4", 0)
    assert len(subset) == 10 and subset.labels.max() == 4
    with pytest.raises(fam.UserError, match="unknown task"):
        fam.shift(split, "upside-down", 0)


def test_each_member_at_its_own_smallest_passing_coding() -> None:
    """per_member picks, member by member, the smallest coding that keeps that member within
    the tolerance, alone and against the base; None where a member passes under nothing or
    the family has no base codings (a series)."""
    members = [{"label": "a", "accuracy": 90.0}, {"label": "b", "accuracy": 80.0}]

    def run(how: str, codec: str, nbytes: list[int], acc: list[float],
            data: bool = False) -> dict:
        return {"how": how, "codec": codec, "settings": {}, "bytes": nbytes, "accuracy": acc,
                "data": data}

    info = {"members": members, "runs": [
        run("alone", "x", [100, 100], [89.9, 79.9]),
        run("alone", "y", [50, 40], [89.0, 79.8]),  # member a loses 1.0: not for a
        run("base", "x", [30, 20], [89.6, 79.0]),  # member b loses 1.0: not for b
        run("base", "z", [10, 25], [89.6, 79.7], data=True),
    ]}
    each = fam.per_member(info, 0.5, "accuracy", data_free=False)
    assert [p["bytes"] for p in each["alone"]] == [100, 40]
    assert [(p["codec"], p["bytes"]) for p in each["family"]] == [("z", 10), ("z", 25)]
    assert each["alone_bytes"] == 140 and each["family_bytes"] == 35
    assert each["family_vs_alone"] == 4.0
    # alone, member a passes only under x and b best under y, each at its codec's only point:
    # no other setting gave fewer bytes; a smaller x point (failing both) ends that for a
    assert [p["at_sweep_end"] for p in each["alone"]] == [True, True]
    info["runs"].append(run("alone", "x", [60, 60], [88.0, 78.0]))  # x coarser: fails both
    again = fam.per_member(info, 0.5, "accuracy", data_free=False)
    assert [p["at_sweep_end"] for p in again["alone"]] == [False, True]
    free = fam.per_member(info, 0.5, "accuracy", data_free=True)
    assert free is None  # member b passes against the base only with the task's data
    series = {"members": members, "runs": [r for r in info["runs"] if r["how"] == "alone"]}
    assert fam.per_member(series, 0.5, "accuracy", data_free=False) is None


def test_the_summary_gives_bitdelta_at_its_best() -> None:
    """Refined BitDelta: the smallest passing run when one passes, else the one that loses
    least; the data-free one apart."""
    members = [{"label": "a", "accuracy": 90.0}]

    def run(settings: dict, nbytes: int, drop: float, data: bool) -> dict:
        return {"how": "base", "codec": "bitdelta", "settings": settings, "bytes": [nbytes],
                "total_bytes": nbytes, "accuracy": [90.0 - drop], "max_drop": drop,
                "data": data, "ok": drop <= 0.5}

    runs = [run({}, 100, 3.0, False), run({"lr": 1}, 101, 0.9, True),
            run({"lr": 2}, 102, 0.4, True), run({"lr": 3}, 103, 0.1, True)]
    s = fam.summarize({"members": members, "runs": runs}, 1000)
    assert s["bitdelta"]["settings"] == {} and s["bitdelta"]["max_drop"] == 3.0
    assert s["bitdelta_refined"]["settings"] == {"lr": 2}  # the smallest that passes
    s = fam.summarize({"members": members, "runs": [*runs[:2], run({"lr": 4}, 99, 0.7, True)]},
                      1000)
    assert s["bitdelta_refined"]["settings"] == {"lr": 4}  # none passes: the least loss


def test_a_record_is_measured_again_in_another_file_format(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A family's files are a few hundred bytes, a third of them header: a record measured in
    another container format (another header size) is not reused; one in the same format is."""
    from vaecompress.experiments.common import RecordStore

    store = RecordStore(tmp_path / "records")
    members = [{"label": "m", "state": {"w": torch.randn(8, 8)}}]

    def measure() -> int:
        fam.measure_members("fine-tunes", members, None, [("alone", "zstd", {})], store,
                            made_by={}, score=lambda m, s: 1.0, task=lambda m: None,
                            tolerance=0.5, device=torch.device("cpu"), seed=0, progress=False,
                            score_key="accuracy")
        return len(list((tmp_path / "records").glob("*.json")))

    assert measure() == 1
    assert measure() == 1  # reused
    monkeypatch.setattr(fam, "FORMAT_VERSION", fam.FORMAT_VERSION + 1)
    assert measure() == 2


def test_the_task_aware_codec_runs_at_its_own_default_budget():
    """The families bench measures vae-rd (and bitdelta's refinement) for the epochs a user of
    the codec gets, as the zoo's bench does, not a cut budget."""
    from vaecompress.codecs import make_codec

    assert fam.FamiliesConfig().task_epochs == make_codec("vae-rd").settings.epochs
