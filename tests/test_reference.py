"""The zoo's reference weights (`zoo.reference`): what ships is what the manifest names, a
damaged or malformed one is refused, and `trained_model` takes them only for the configuration
and training images they were made with, never under `--retrain`."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vaecompress.cli import main
from vaecompress.data import MnistSplit
from vaecompress.experiments import common
from vaecompress.io import save_weights_file
from vaecompress.zoo import build_model, reference
from vaecompress.zoo.train import TrainConfig, preset_config

TINY = TrainConfig(epochs=1, batch_size=16, limit=32)


def test_every_shipped_file_is_the_paper_presets_model_the_manifest_names() -> None:
    entries = reference.entries()
    assert sorted(e.model for e in entries) == ["cnn", "fnn", "lstm", "rnn"]
    for e in entries:
        assert e.train == asdict(preset_config("paper", e.model, 0))
        assert hashlib.sha256(e.path.read_bytes()).hexdigest() == e.sha256
        state = reference.load(e)
        net = build_model(e.model)
        net.load_state_dict(state)  # strictly: every tensor of the architecture, no other
        assert 90.0 < e.test_accuracy <= 100.0


def _split(seed: int, n: int) -> MnistSplit:
    rng = np.random.default_rng(seed)
    return MnistSplit(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, n).astype(np.int64))


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict, MnistSplit]:
    """A package whose reference is one FNN of the TINY configuration on a made-up training
    set; returns its folder, the manifest and that training set."""
    folder = tmp_path / "reference"
    folder.mkdir()
    train = _split(0, 48)
    torch.manual_seed(5)
    state = {k: v.detach().clone() for k, v in build_model("fnn").state_dict().items()}
    save_weights_file(folder / "fnn.safetensors", state, {})
    manifest = {"format": 1, "models": [{
        "model": "fnn", "train": asdict(TINY),
        "data_sha256": reference.data_sha256(train.images, train.labels),
        "file": "fnn.safetensors",
        "sha256": hashlib.sha256((folder / "fnn.safetensors").read_bytes()).hexdigest(),
        "test_accuracy": 12.5, "train_s": 1.0, "trained_on": "a test"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(reference, "FOLDER", folder)
    monkeypatch.setattr(reference, "MANIFEST", folder / "manifest.json")
    reference.entries.cache_clear()
    yield folder, manifest, train
    reference.entries.cache_clear()


def test_trained_model_takes_the_reference_only_for_its_configuration_and_data(
        shipped: tuple[Path, dict, MnistSplit], tmp_path: Path) -> None:
    folder, _, train = shipped
    test = _split(1, 40)
    dev = torch.device("cpu")
    root = tmp_path / "cache"
    ref = common.trained_model("fnn", TINY, train, test, device=dev, progress=False, root=root)
    assert ref.source == "reference"
    assert ref.path == folder / "fnn.safetensors"
    expected = reference.load(reference.entries()[0])
    assert all(torch.equal(ref.state[k], expected[k]) for k in expected)
    # its accuracy is measured here, on the test set given, not copied from the manifest
    acc, _ = common.evaluate_state("fnn", ref.state, test, device=dev)
    assert ref.accuracy == acc != 12.5
    assert not root.exists() or not list(root.iterdir())  # nothing trained, nothing cached

    again = common.trained_model("fnn", TINY, train, test, device=dev, progress=False,
                                 root=root, retrain=True)
    other_cfg = common.trained_model("fnn", replace(TINY, seed=1), train, test, device=dev,
                                     progress=False, root=root)
    other_data = common.trained_model("fnn", TINY, _split(2, 48), test, device=dev,
                                      progress=False, root=root)
    for tm in (again, other_cfg, other_data):
        assert tm.source == "trained here"
        assert tm.path.parent == root
        assert any(not torch.equal(tm.state[k], expected[k]) for k in expected)
    assert again.identity != ref.identity  # records measured on one are never the other's


def test_a_damaged_or_missing_file_is_refused(shipped: tuple[Path, dict, MnistSplit]) -> None:
    folder, _, train = shipped
    f = folder / "fnn.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(reference.ReferenceError, match="damaged"):
        reference.find("fnn", asdict(TINY), train.images, train.labels)
    f.unlink()
    with pytest.raises(reference.ReferenceError, match="missing"):
        reference.find("fnn", asdict(TINY), train.images, train.labels)
    # nothing is read for a configuration that does not ship
    assert reference.find("fnn", asdict(replace(TINY, lr=0.5)), train.images,
                          train.labels) is None


@pytest.mark.parametrize(("field", "value", "match"), [
    ("model", "resnet", "unknown model"),
    ("file", "../fnn.safetensors", "plain name"),
    ("file", "fnn.pt", "plain name"),
    ("sha256", "ABC", "hex digits"),
    ("data_sha256", 7, "hex digits"),
    ("train", {"epochs": True, "batch_size": 16, "lr": 1e-3, "seed": 0, "limit": 32},
     "'train'"),
    ("train", {"epochs": 1}, "'train'"),
    ("test_accuracy", 101.0, "percentage"),
    ("train_s", -1.0, "non-negative"),
    ("extra", 1, "fields"),
])
def test_every_manifest_field_is_checked(shipped: tuple[Path, dict, MnistSplit], field: str,
                                          value: object, match: str) -> None:
    folder, manifest, _ = shipped
    bad = json.loads(json.dumps(manifest))
    bad["models"][0][field] = value
    (folder / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(reference.ReferenceError, match=match):
        reference.entries()


def test_a_manifest_of_two_entries_for_one_configuration_is_refused(
        shipped: tuple[Path, dict, MnistSplit]) -> None:
    folder, manifest, _ = shipped
    manifest["models"].append(dict(manifest["models"][0]))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(reference.ReferenceError, match="two entries"):
        reference.entries()


def test_no_manifest_means_no_reference(shipped: tuple[Path, dict, MnistSplit]) -> None:
    folder, _, train = shipped
    shutil.rmtree(folder)
    reference.entries.cache_clear()
    assert reference.find("fnn", asdict(TINY), train.images, train.labels) is None


def test_retrain_is_a_zoo_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "--preset", "minilm-datafree", "--retrain", "--out",
                 str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retrain" in err[0]
