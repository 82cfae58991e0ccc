"""The training loop (`training.loop`): the order of its events, and its hooks (checkpoint,
progress, early stopping) on a step function that knows nothing of a model."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from vaecompress.checkpoint import Checkpoint, CheckpointError, count
from vaecompress.training.loop import EarlyStopping, Loop, ProgressBar, Resume


def _recording(total: int, stop_at: int | None = None) -> tuple[Loop, list[str]]:
    events: list[str] = []

    def step(loop: Loop) -> None:
        events.append(f"step {loop.it}")

    loop = Loop(step, total)
    loop.add_callback("on_start", lambda lp: events.append("start"))

    def end_of_step(lp: Loop) -> None:
        events.append(f"end {lp.done}")
        lp.stop = lp.done == stop_at

    loop.add_callback("on_step_end", end_of_step)
    loop.add_callback("on_continue", lambda lp: events.append(f"continue {lp.done}"))
    loop.add_callback("on_end", lambda lp: events.append("finish"))
    return loop, events


def test_events_in_order_and_no_continue_after_the_last_iteration() -> None:
    loop, events = _recording(2)
    loop.run()
    assert events == ["start", "step 0", "end 1", "continue 1", "step 1", "end 2", "finish"]
    assert loop.done == 2 and not loop.stop


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="on_batch_end"):
        Loop(lambda lp: None, 1).add_callback("on_batch_end", lambda lp: None)


def test_a_stop_ends_the_loop_after_that_iteration() -> None:
    loop, events = _recording(5, stop_at=2)
    loop.run()
    assert events[-3:] == ["step 1", "end 2", "finish"]
    assert loop.done == 2 and loop.stop


class _Counter:
    """A training whose state is one number, checkpointed through `Resume`."""

    def __init__(self) -> None:
        self.value = 0

    def step(self, loop: Loop) -> None:
        self.value += loop.it

    def state(self, loop: Loop) -> dict[str, Any]:
        return {"done": loop.done, "value": self.value}

    def check(self, saved: dict[str, Any]) -> tuple[int, Any]:
        done = count(saved, "done", 1, 9)
        value = saved.get("value")
        if not isinstance(value, int):
            raise CheckpointError("field 'value' is not an integer")

        def load() -> None:
            self.value = value

        return done, load


def _run(path: Path, *, every: int = 1, fp: str = "a", stop_at: int | None = None,
         saves: list[int] | None = None) -> tuple[_Counter, Loop]:
    run = _Counter()

    def state(loop: Loop) -> dict[str, Any]:
        if saves is not None:
            saves.append(loop.done)
        return run.state(loop)

    loop = Loop(run.step, 10)
    loop.add(Resume(Checkpoint(path, kind="counter", fingerprint=fp, every_s=0), run.check,
                    state, every=every))
    loop.add_callback("on_step_end", lambda lp: setattr(lp, "stop", lp.done == stop_at))
    return run, loop


def test_resume_saves_while_the_loop_goes_on_at_multiples_of_every(tmp_path: Path) -> None:
    saves: list[int] = []
    _run(tmp_path / "ck", every=3, saves=saves)[1].run()
    assert saves == [3, 6, 9] and not (tmp_path / "ck").exists()
    saves.clear()
    _run(tmp_path / "ck", stop_at=4, saves=saves)[1].run()
    assert saves == [1, 2, 3]  # not at the stop


def test_resume_goes_on_from_a_checkpoint_of_the_same_run(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    Checkpoint(ck, kind="counter", fingerprint="a").save({"done": 4, "value": 0 + 1 + 2 + 3})
    run, loop = _run(ck)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.run()
    assert loop.start == 4 and run.value == sum(range(10)) and not ck.exists()


@pytest.mark.parametrize("fp, saved, why", [
    ("b", {"done": 4, "value": 6}, "made by a run with other settings or inputs"),
    ("a", {"done": 4, "value": "6"}, "field 'value' is not an integer"),
    ("a", {"done": 10, "value": 6}, "field 'done' = 10 is outside [1, 9]"),
])
def test_resume_rejects_with_the_checkpoint_message(tmp_path: Path, fp: str, saved: dict,
                                                    why: str) -> None:
    ck = tmp_path / "ck"
    Checkpoint(ck, kind="counter", fingerprint=fp).save(saved)
    run, loop = _run(ck)
    with pytest.warns(UserWarning, match=re.escape(f"{why}; training from the start")):
        loop.run()
    assert loop.start == 0 and run.value == sum(range(10))


def _scores(values: list[float], *, patience: int | None, every: int = 1,
            best: float = math.inf) -> tuple[Loop, EarlyStopping, list[int]]:
    kept: list[int] = []
    loop = Loop(lambda lp: None, len(values))
    stopper = EarlyStopping(lambda lp: values[lp.done - 1], patience=patience, every=every,
                            keep=lambda lp: kept.append(lp.done), best=best)
    loop.add(stopper).run()
    return loop, stopper, kept


def test_early_stopping_keeps_the_best_and_stops_when_patience_runs_out() -> None:
    loop, stopper, kept = _scores([3, 2, 2.5, 1, 1.5, 1.2, 0.5], patience=2)
    assert kept == [1, 2, 4] and stopper.best == 1 and stopper.best_at == 4
    assert loop.done == 6 and loop.stop


def test_early_stopping_scores_every_few_iterations_and_the_last() -> None:
    seen: list[int] = []
    loop = Loop(lambda lp: None, 7)
    loop.add(EarlyStopping(lambda lp: float(seen.append(lp.done) or 0), patience=None, every=3))
    loop.run()
    assert seen == [3, 6, 7] and not loop.stop


def test_early_stopping_from_a_given_best_may_keep_nothing() -> None:
    loop, stopper, kept = _scores([2, 3, 4], patience=None, best=1.0)
    assert kept == [] and stopper.best_at == 0 and stopper.waits == 3 and loop.done == 3


def test_progress_counts_a_resumed_run_from_where_it_was() -> None:
    loop = Loop(lambda lp: None, 5)
    loop.add_callback("on_start", lambda lp: setattr(lp, "start", 2))
    bar = ProgressBar(5, desc="t", unit="step", enabled=True, status=lambda lp: f"at {lp.done}")
    loop.add(bar).run()
    assert bar.bar is not None and bar.bar.n == 5 and bar.bar.status == "at 5"


def test_sliced_adam_steps_as_torchs_adam_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm start's optimizer (`training.adam.SlicedAdam`) is torch's Adam with its step
    made a slice at a time: the same parameters and moments, bit for bit, over steps whose
    learning rates change, in two groups, with a parameter that has no gradient once."""
    import vaecompress.training.adam as adam

    monkeypatch.setattr(adam, "SLICE", 7)  # every tensor cut into several slices
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(100, 13, generator=g), torch.randn(50, generator=g),
             torch.randn(3, 3, generator=g)]

    def run(make):  # type: ignore[no-untyped-def]
        ps = [p.clone().requires_grad_(True) for p in start]
        opt = make([{"params": ps[:2], "lr": 0.01}, {"params": ps[2:], "lr": 0.001}])
        for s in range(6):
            for group, lr in zip(opt.param_groups, (0.01 * (1 + s), 0.002), strict=True):
                group["lr"] = lr
            for i, p in enumerate(ps):
                p.grad = None if (s == 2 and i == 1) else torch.sin(p.detach() * (s + 1 + i))
            opt.step()
        return ps, opt

    want, ref = run(lambda groups: torch.optim.Adam(groups, foreach=False))
    got, opt = run(adam.SlicedAdam)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref.state[a][key], opt.state[b][key])
