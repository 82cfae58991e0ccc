"""benchmarks/allocation_ablation.py: its variants, its measure at equal size, its result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
alloc = load_script("benchmarks/allocation_ablation.py")


def test_variants_give_the_steps_they_name() -> None:
    from vaecompress.methods.rd import vae_rd_free

    big = np.full((100, 100), 0.1, dtype=np.float32)  # n = 1e4, rms 0.1
    small = np.full(100, 0.4, dtype=np.float32)  # n = 100, rms 0.4, 1-D
    ts = [big, small]

    def steps(name: str) -> np.ndarray:  # the step is c / sqrt(s): relative to the first
        s = np.array(alloc.VARIANTS[name](ts))
        d = 1 / np.sqrt(s)
        return d / d[0]

    np.testing.assert_allclose(steps("relative"), [1, (10 * 0.4) / (100 * 0.1)], rtol=1e-6)
    np.testing.assert_allclose(steps("rms"), [1, 4], rtol=1e-6)
    np.testing.assert_allclose(steps("coarser large"), [1, (10**1.5 * 0.4) / (100**1.5 * 0.1)],
                               rtol=1e-6)
    np.testing.assert_allclose(steps("uniform"), [1, 1])
    np.testing.assert_allclose(steps("uniform, 1-D fine"), [1, 0.01])
    assert alloc.VARIANTS["rms"]([np.zeros(3, np.float32)]) == [0.0]  # nothing to lose
    with alloc.allocation("uniform"):
        assert vae_rd_free.relative_sensitivities is alloc.VARIANTS["uniform"]
    assert vae_rd_free.relative_sensitivities is alloc.VARIANTS["relative"]  # restored


def test_equal_size_delta_compares_at_the_same_targets() -> None:
    rows = [{"variant": v, "target": t, "acc_drop": d} for v, t, d in (
        ("relative", 5, 0.1), ("relative", 10, 0.5), ("relative", 20, 3.0),
        ("uniform", 5, 0.0), ("uniform", 10, 1.0), ("uniform", 20, 9.0))]
    # the 20x target is left out: there the default itself loses more than MAX_DROP
    assert alloc.equal_size_delta(rows, "uniform") == pytest.approx((-0.1 + 0.5) / 2)
    assert alloc.equal_size_delta(rows, "rms") is None


def test_the_committed_result_was_made_from_a_clean_tree() -> None:
    res = json.loads((ROOT / "results/allocation/allocation.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", res["environment"]["git_revision"])
    assert {m["model"] for m in res["models"]} == {"fnn", "cnn", "rnn", "lstm", "my_mlp",
                                                   "lenet300"}
    for m in res["models"]:
        assert {(p["variant"], p["target"]) for p in m["rows"]} == {
            (v, r) for v in alloc.VARIANTS for r in res["ratios"]}
    assert (ROOT / "results/allocation/allocation.md").read_text() == alloc.render(res)
