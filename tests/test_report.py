"""Tests for vaecompress.experiments.report and .figures: report.md tables drawn from the results
dict alone, every figure a valid PNG, deterministic output, and partial results (no sweep, no
predictions, no MNIST, a missing model) handled without failing."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaecompress.data import MnistSplit
from vaecompress.errors import DataUnavailableError
from vaecompress.experiments import figures
from vaecompress.experiments.formatting import fmt_ratio
from vaecompress.experiments.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGS = ("fig2_vae_training.png", "fig3_params_time.png", "fig4_cnn_samples.png",
            "fig5_rnn_samples.png", "accuracy_vs_ratio.png")
N_TEST = 40


def _record(model: str, latent: int, experiment: str, *, params: int, ratio_paper: float,
            ratio_honest: float, file_bytes: int, acc_recon: float, epochs: int = 4,
            train_s: float = 2.5) -> dict[str, Any]:
    orig = params * 4
    payload = int(orig / ratio_paper)
    model_bytes = file_bytes - payload - 2_500  # the rest: header, layout, normalization
    train_loss = [4e5 / (3 ** i) for i in range(epochs)]
    val_loss = [x * 0.8 for x in train_loss]
    val_loss[-1] = -150.0  # the -ELBO of a Gaussian likelihood can go below zero
    return {
        "model": model, "codec": "vae-paper", "latent": latent, "experiment": experiment,
        "params": params, "orig_bytes": orig, "payload_bytes": payload,
        "model_bytes": model_bytes, "file_bytes": file_bytes, "external_bytes": 0,
        "ratio_paper": ratio_paper, "ratio_honest": ratio_honest,
        "ratio_amortized": {"1": ratio_honest, "10": 1.2345, "100": 8.7654},
        "acc_orig": 98.11, "acc_recon": acc_recon, "acc_drop": 98.11 - acc_recon,
        "vae_epochs": epochs, "vae_best_epoch": epochs, "vae_stopped_early": False,
        "vae_train_s": train_s, "compress_s": train_s + 0.1, "decompress_s": 0.01,
        "n_chunks": 7, "pad": 11, "model_train_s": 1.0, "model_key": "k",
        "file": f"files/{model}-latent{latent}.vaec",
        "history": {"train_loss": train_loss, "val_loss": val_loss,
                    "val_kl": [10.0] * epochs, "epoch_s": [train_s / epochs] * epochs},
        "settings": {},
    }


def make_results() -> dict[str, Any]:
    records = [
        _record("fnn", 64, "table2", params=185300, ratio_paper=31.7777, ratio_honest=0.1711,
                file_bytes=4_361_683, acc_recon=96.62, train_s=21.25),
        _record("cnn", 64, "table2", params=122270, ratio_paper=31.4159, ratio_honest=0.123456,
                file_bytes=4_321_987, acc_recon=97.77, train_s=3.75),
        _record("rnn", 64, "table2", params=54538, ratio_paper=31.5613, ratio_honest=0.0502,
                file_bytes=4_345_363, acc_recon=95.9, train_s=2.61),
        _record("cnn", 128, "sweep", params=122270, ratio_paper=15.9206, ratio_honest=0.1087,
                file_bytes=4_500_302, acc_recon=98.05),
        _record("cnn", 16, "sweep", params=122270, ratio_paper=127.3646, ratio_honest=0.1152,
                file_bytes=4_244_042, acc_recon=92.73),
    ]
    return {
        "environment": {"vaecompress": "0.1.0", "python": "3.11.7", "torch": "2.13.0",
                        "numpy": "2.0", "platform": "TestOS", "cpu_count": 2,
                        "torch_threads": 2, "device": "cpu", "git_revision": "abc123def",
                        "seed": 7, "argv": [], "time_utc": "2026-01-02T03:04:05+00:00"},
        "config": {"preset": "quick", "models": ["fnn", "cnn", "rnn"], "latent": 64,
                   "sweep_model": "cnn", "sweep_latents": [128, 16],
                   "vae": {"chunk_size": 2048, "latent": 64, "hidden": [512], "n_variants": 20,
                           "epochs": 4, "patience": 4, "sigma_x": 0.05}, "seed": 7},
        "table1": [{"model": "fnn", "neurons": [784, 200, 100, 60, 30, 10], "params": 185300},
                   {"model": "cnn", "neurons": [784, 3136, 1568, 588, 200, 10],
                    "params": 122270},
                   {"model": "rnn", "neurons": [28, 128, 128, 10], "params": 54538}],
        "paper": {"table2": {"fnn": {"acc_orig": 98.0, "acc_recon": 97.0},
                             "cnn": {"acc_orig": 98.0, "acc_recon": 97.0},
                             "rnn": {"acc_orig": 90.0, "acc_recon": 89.0},
                             "lstm": {"acc_orig": 98.0, "acc_recon": 98.0}},
                  "ratio_paper_claim": "slightly more than 30x",
                  "sweep": "accuracy almost constant from latent 128 down to 64"},
        "records": records,
    }


def fake_test() -> MnistSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8)
    labels = (np.arange(N_TEST) % 10).astype(np.int64)
    return MnistSplit(images, labels)


def write_predictions(out: Path, labels: np.ndarray) -> None:
    preds = out / "predictions"
    preds.mkdir(parents=True, exist_ok=True)
    orig = labels.copy()
    orig[3] = (orig[3] + 1) % 10  # one original mistake
    recon = orig.copy()
    recon[[5, 33]] = (recon[[5, 33]] + 2) % 10  # two newly wrong, disagreements late in the set
    recon[3] = labels[3]  # and one fixed
    for m in ("cnn", "rnn"):
        np.savez(preds / f"{m}-latent64.npz", orig=orig.astype(np.int8),
                 recon=recon.astype(np.int8))


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    import matplotlib.pyplot as plt

    img = plt.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run")
    test = fake_test()
    write_predictions(out, test.labels)
    write_report(make_results(), out, test_split=test)
    return out, (out / "report.md").read_text()


def test_report_tables_and_numbers(full_run: tuple[Path, str]) -> None:
    _, md = full_run
    for heading in ("## Environment", "## Honest finding", "## Table 1", "## Table 2",
                    "latent sweep", "## Byte accounting", "## VAE training"):
        assert heading in md
    # environment and config come from the dict
    assert "`quick`" in md and "seed 7" in md and "abc123def" in md and "TestOS" in md
    # Table 1
    assert "| FNN | [784, 200, 100, 60, 30, 10] | 185,300 |" in md
    # Table 2: the paper's numbers beside ours
    assert "| CNN | 98.00 | 97.00 | 1.00 | 98.11 | 97.77 | 0.34 |" in md
    assert "| RNN | 90.00 | 89.00 | 1.00 |" in md
    # distinctive ratios, formatted
    assert "31.4" in md and "0.123" in md and "127" in md and "15.9" in md
    assert "4,321,987" in md
    # accounting table: amortized K=10 and K=100 columns
    assert "amortized K=10" in md and "amortized K=100" in md
    assert "| 1.23 | 8.77 |" in md
    # sweep table: latents in descending order, the latent-64 row is the Table 2 record
    i128, i64, i16 = (md.index(f"| {s} |") for s in ("128", "64 (Table 2)", "16"))
    assert i128 < i64 < i16
    # training table
    assert "21.2" in md and "| no |" in md
    # relative figure links
    for name in ALL_FIGS:
        assert f"](figures/{name})" in md


def test_honest_finding_is_generated(full_run: tuple[Path, str]) -> None:
    _, md = full_run
    para = md.split("## Honest finding", 1)[1].split("##", 1)[0]
    assert "31.4-31.8 times smaller" in para  # span of ratio_paper
    assert "LARGER" in para  # every ratio_honest < 1
    assert f"{1 / 0.0502:.1f}" in para and "0.050-0.171" in para
    assert "K=10: 1.23" in para and "K=100: 8.77" in para
    # break-even K per model: decoder bytes / (original bytes - the rest of the file)
    res = make_results()
    fnn = res["records"][0]
    shared = fnn["model_bytes"]
    k = math.floor(shared / (fnn["orig_bytes"] - (fnn["file_bytes"] - shared))) + 1
    assert k > 1 and f"{k} (FNN)" in para
    assert "carries 2,500 bytes besides the codes" in para
    assert "down to latent 64" in para and "at latent 16" in para


def test_all_figures_are_pngs(full_run: tuple[Path, str]) -> None:
    out, md = full_run
    for name in ALL_FIGS:
        assert_png(out / "figures" / name)
    assert not [p for p in (out / "figures").iterdir() if p.name.startswith(".")]
    # Fig. 4 text counts mistakes from the predictions and labels
    assert "makes 1 mistakes and the reconstructed one 2 (+1)" in md
    assert "disagree on 3 images" in md


def test_changing_a_number_changes_the_report(tmp_path: Path) -> None:
    res = make_results()
    res["records"][1]["ratio_honest"] = 0.98765
    res["records"][1]["ratio_paper"] = 42.4242
    write_report(res, tmp_path, test_split=fake_test())
    md = (tmp_path / "report.md").read_text()
    assert "0.988" in md and "42.4" in md
    assert "0.123" not in md and "31.4 " not in md


def test_no_sweep_no_predictions(tmp_path: Path) -> None:
    res = make_results()
    res["records"] = [r for r in res["records"] if r["experiment"] == "table2"]
    write_report(res, tmp_path, test_split=fake_test())
    md = (tmp_path / "report.md").read_text()
    assert "_No sweep in this run._" in md
    assert "not drawn: no predictions file `predictions/cnn-latent64.npz`" in md
    for name in ("fig2_vae_training.png", "fig3_params_time.png", "accuracy_vs_ratio.png"):
        assert_png(tmp_path / "figures" / name)
    assert not (tmp_path / "figures" / "fig4_cnn_samples.png").exists()
    assert "## Table 2" in md and "31.4" in md


def test_mnist_unavailable_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vaecompress.data as data

    def nope(*_a: Any, **_k: Any) -> Any:
        raise DataUnavailableError("MNIST not found here")

    monkeypatch.setattr(data, "load_mnist", nope)
    write_predictions(tmp_path, fake_test().labels)
    write_report(make_results(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "MNIST test set unavailable (MNIST not found here)" in md
    assert not (tmp_path / "figures" / "fig4_cnn_samples.png").exists()


def test_missing_models_and_external_decoder(tmp_path: Path) -> None:
    res = make_results()
    cnn = copy.deepcopy(res["records"][1])
    # An external decoder that makes the file itself smaller than the model.
    cnn.update(model_bytes=400_000, external_bytes=400_000, file_bytes=20_000,
               ratio_honest=489_080 / 420_000)
    cnn.pop("ratio_amortized")
    res["records"] = [cnn]
    res["config"]["models"] = ["cnn"]
    res["table1"] = res["table1"][1:2]
    write_report(res, tmp_path, test_split=fake_test())
    md = (tmp_path / "report.md").read_text()
    assert "times smaller than the original model" in md
    assert "LARGER" not in md
    assert "Figure 5** — not drawn: no RNN record" in md
    assert_png(tmp_path / "figures" / "fig2_vae_training.png")
    assert_png(tmp_path / "figures" / "fig3_params_time.png")


def test_empty_results_do_not_fail(tmp_path: Path) -> None:
    write_report({"records": [], "config": {}, "table1": []}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "No records at the main latent" in md


def test_output_is_deterministic(full_run: tuple[Path, str], tmp_path: Path) -> None:
    first, _ = full_run
    test = fake_test()
    write_predictions(tmp_path, test.labels)
    write_report(make_results(), tmp_path, test_split=test)
    for name in ("report.md", *(f"figures/{f}" for f in ALL_FIGS)):
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_sample_indices_disagreements_then_first() -> None:
    labels = np.arange(100) % 10
    orig = labels.copy()
    recon = labels.copy()
    recon[[51, 71, 91]] = 0
    idx = figures.sample_indices(labels, orig, recon, 8)
    assert idx.tolist() == [0, 1, 2, 3, 4, 51, 71, 91]
    capped = figures.sample_indices(labels, orig, recon, 8, max_disagree=2)
    assert capped.tolist() == [0, 1, 2, 3, 4, 5, 51, 71]


@pytest.mark.parametrize(("x", "text"), [(31.4159, "31.4"), (509.46, "509"), (1.0831, "1.08"),
                                         (0.112332, "0.112"), (0.0042, "0.0042"),
                                         (math.inf, "inf"), (None, "—")])
def test_fmt_ratio(x: Any, text: str) -> None:
    assert fmt_ratio(x) == text


@pytest.mark.parametrize(("drops", "text"), [
    ([0.0, 0.02, 0.01], "Accuracy drops by 0.00-0.02 points at latent 64"),
    ([-0.0001, 0.02], "Accuracy drops by 0.00-0.02 points at latent 64"),
    ([-0.02, 0.13, 0.05], "The accuracy drop at latent 64 ranges from -0.02 to +0.13 points "
                          "(negative: the rebuilt model scores higher"),
    ([-0.12, -0.01], "Accuracy rises by 0.01-0.12 points at latent 64"),
    ([0.05, 0.05], "Accuracy drops by 0.05 points at latent 64"),
])
def test_accuracy_change_wording(drops: list[float], text: str) -> None:
    from vaecompress.experiments.prose import accuracy_change

    sentence = accuracy_change(drops, 64)
    assert sentence.startswith(text), sentence
    assert not re.search(r"-\d+\.\d+-\d", sentence)  # never "-0.02-0.13"


@pytest.mark.parametrize(("values", "text"), [
    ([-0.02, 0.13], "from -0.02 to +0.13"), ([0.0, 0.5], "from 0.00 to +0.50"),
    ([-0.001, -0.001], "0.00"), ([], "—")])
def test_signed_range(values: list[float], text: str) -> None:
    from vaecompress.experiments.formatting import signed_range

    assert signed_range(values) == text


def test_report_names_the_thread_count(full_run: tuple[Path, str]) -> None:
    """CPU results depend on the thread count: the report says so beside Table 2."""
    _, md = full_run
    table2 = md.split("## Table 2", 1)[1].split("## Experiment 1", 1)[0]
    assert "computed on the CPU with 2 torch threads" in table2
    assert "depend on the thread count" in table2


def test_gpu_run_names_the_gpu() -> None:
    from vaecompress.experiments.tables import threads_note

    res = make_results()
    res["environment"].update(device="cuda:0", gpu="NVIDIA H200")
    assert "computed on NVIDIA H200" in threads_note(res)


def test_training_curves_split_and_fallbacks() -> None:
    """Figure 2 plots the reconstruction error and the KL; old records (only the train total)
    still draw their validation split, and records without settings fall back to the total."""
    rec = _record("cnn", 64, "table2", params=1000, ratio_paper=30.0, ratio_honest=0.1,
                  file_bytes=5_000, acc_recon=98.0)
    rec["settings"] = {"chunk_size": 2048, "sigma_x": 0.05}
    # a validation -ELBO of nll + kl whose nll means an RMS error of 0.04 per parameter
    const = 2048 * math.log(0.05 * math.sqrt(2 * math.pi))
    nll_04 = 0.04**2 * 2048 / (2 * 0.05**2) + const
    rec["history"]["val_loss"] = [nll_04 + 300.0] * 4
    rec["history"]["val_kl"] = [300.0] * 4
    old = figures.training_curves(rec)
    assert old["val_recon"] == pytest.approx([0.04] * 4)
    assert old["val_kl"] == [300.0] * 4
    assert "train_recon" not in old and "train_total" in old
    rec["history"].update(train_kl=[5.0] * 4, train_mse=[0.01] * 4, val_mse=[0.0004] * 4)
    new = figures.training_curves(rec)
    assert new["train_recon"] == pytest.approx([0.1] * 4)
    assert new["val_recon"] == pytest.approx([0.02] * 4)
    rec["settings"] = {}
    del rec["history"]["val_mse"]
    assert "val_total" in figures.training_curves(rec)


def test_fig3_says_where_it_was_measured(full_run: tuple[Path, str]) -> None:
    from vaecompress.experiments.tables import measured_where

    res = make_results()
    assert measured_where(res).startswith("Measured on cpu, 2 CPUs, 2 torch threads (TestOS)")
    assert "load not recorded" in measured_where(res)
    res["load_average"] = {"start": [1.5, 1.0, 0.5], "end": [2.25, 1.0, 0.5]}
    assert "load average 1.50 at the start, 2.25 at the end" in measured_where(res)
