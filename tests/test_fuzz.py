"""Property-based fuzzing of the file container (issue 11): every mutation of a valid file reads
back as the same container or fails with FormatError, never another exception.

The mutations are those of `scripts/fuzz.py` (its long run's counts are in docs/format.md);
here hypothesis draws and shrinks them, a few hundred cases in the default suite.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_script
from vaecompress.errors import FormatError
from vaecompress.format import loads

fuzz = load_script("scripts/fuzz.py", "vaecompress_fuzz_script")

FILES = fuzz.base_files()
# database=None: no .hypothesis/ folder in the working tree; a failure prints its example.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check(index: int, mutator: str, data: bytes) -> None:
    original = FILES[index][0]
    result = fuzz.outcome(original, data, mutator)
    assert not result.startswith("crash"), result


@FUZZ
@given(
    index=st.integers(0, len(FILES) - 1),
    mutator=st.sampled_from(sorted(fuzz.MUTATORS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_mutated_files(index: int, mutator: str, seed: int) -> None:
    # A seeded Random, not st.randoms(): the mutators draw a varying number of values, which
    # hypothesis's replay of st.randoms() reported as a flaky strategy.
    check(index, mutator, fuzz.MUTATORS[mutator](FILES[index][1], random.Random(seed)))


@FUZZ
@given(index=st.integers(0, len(FILES) - 1), tail=st.binary(max_size=600))
def test_random_bytes_after_preamble(index: int, tail: bytes) -> None:
    check(index, "random-file", FILES[index][1][:12] + tail)


@FUZZ
@given(
    index=st.integers(0, len(FILES) - 1),
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    ),
    where=st.integers(0, 10**6),
)
def test_header_value_replaced_with_crc_fixed(index: int, value: object, where: int) -> None:
    """Any JSON value at any place of the header, stored back with a correct CRC."""
    data = FILES[index][1]
    _, text, _ = fuzz.split(data)
    h = json.loads(text)
    paths = fuzz._nodes(h)[1:]
    path = paths[where % len(paths)]
    parent = h
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    check(index, "header-value", fuzz.with_text(data, json.dumps(h).encode()))


def test_every_mutator_runs() -> None:
    import random

    rng = random.Random(1)
    for name, mutate in fuzz.MUTATORS.items():
        for original, data in FILES:
            result = fuzz.outcome(original, mutate(data, rng), name)
            assert not result.startswith("crash"), (name, result)


def test_outcome_flags_foreign_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness itself must see a crash as a crash.
    def boom(data: bytes) -> None:
        raise MemoryError("x")

    monkeypatch.setattr(fuzz, "loads", boom)
    assert fuzz.outcome(FILES[0][0], FILES[0][1], "bitflip").startswith("crash: MemoryError")
    monkeypatch.undo()
    with pytest.raises(FormatError):
        loads(FILES[0][1][:-1])


def test_cli_counts(capsys: pytest.CaptureFixture[str]) -> None:
    # --mem-mb 0: no address-space limit, which would stay on the whole pytest process.
    assert fuzz.main(["60", "--seed", "3", "--mem-mb", "0"]) == 0
    out = capsys.readouterr().out
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[0] in ("same", "rejected", "different", "crash")
    }
    assert sum(counts.values()) == 60 and counts["crash"] == 0
