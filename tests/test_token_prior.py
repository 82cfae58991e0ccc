"""`benchmarks/token_prior.py`: rows of a frequent token get finer steps, the embedding keeps the
bytes it is given, and tokens are counted as the task's tokenizer splits them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import load_script

tp = load_script("benchmarks/token_prior.py")


def test_row_steps_follow_the_prior_at_the_given_bytes() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 32)).astype(np.float32)
    step = 0.05
    target = tp.order0_bytes(np.rint(a / step).astype(np.int64))
    prior = np.r_[np.full(100, 50.0), np.full(300, 1.0)]  # the first 100 tokens 50x as frequent
    z, st = tp.row_steps(a, step, prior, target)
    assert st.shape == (400,) and st.dtype == np.float32
    assert tp.order0_bytes(z) <= target
    assert tp.order0_bytes(z) > 0.97 * target  # the bisection spends what it is given
    # a 50x more frequent row: a step sqrt(50) finer (within the clip of 16)
    assert st[0] == pytest.approx(st[-1] / np.sqrt(50), rel=1e-5)
    assert np.array_equal(z, np.rint(a.astype(np.float64) / st[:, None]).astype(np.int64))
    # the squared error moves from the frequent rows to the rare ones
    err = np.square(z * st[:, None] - a).mean(1)
    assert err[:100].mean() < 0.1 * err[100:].mean()


def test_the_clip_bounds_a_rows_factor() -> None:
    a = np.ones((102, 8), np.float32)
    prior = np.r_[1e6, 1e6, np.ones(100)]
    _, st = tp.row_steps(a, 0.1, prior, 1e9)
    # the two frequent rows at about 51 times the mean, clipped to 16; the others at about
    # 5e-5 of it, clipped to 1/16: steps sqrt(256) apart
    assert st[2] / st[0] == pytest.approx(16.0, rel=1e-5)
    assert np.unique(st).size == 2


def test_token_counts_count_every_occurrence() -> None:
    vocab = {"a": 5, "b": 6}

    def tokenizer(sentences, truncation, max_length):  # type: ignore[no-untyped-def]
        return {"input_ids": [[101, *[vocab[w] for w in s.split()][: max_length - 2], 102]
                              for s in sentences]}

    task = SimpleNamespace(tokenizer=tokenizer, max_len=4)
    c = tp.token_counts(task, ["a a b", "b", "a b a b"], 200)
    assert c[101] == c[102] == 3
    assert c[5] == 3 and c[6] == 2  # truncated to two words: "a a", "b", "a b"
    assert c.sum() == 11
