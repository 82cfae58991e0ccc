"""One training loop, in the minGPT spirit: it could apply to any network.

`Loop(step, total).run()` calls `step(loop)` for iterations `loop.start` to `total - 1` (an
iteration is what the caller makes it: one optimizer step, or one epoch) and knows nothing of
the model, its data or its loss. What a training adds around its steps hooks in through
callbacks on four events, run in the order they were added: `on_start`, `on_step_end` (after
each iteration), `on_continue` (after `on_step_end`, when the loop goes on: neither the last
iteration nor a stop) and `on_end`:

- `Resume`: the checkpoint (`vaecompress.checkpoint`): on start the saved state of this same
  run, checked, agreed by every process of a group, loaded; when the loop goes on, a save when
  one is due; at the end the file removed. A file that is not to be resumed is ignored with a
  warning, as `Checkpoint` words it;
- `ProgressBar`: the project's `progress` reporter, one update per iteration, with a status;
- `EarlyStopping`: a score every few iterations, the best kept, a stop when patience runs out
  (rank 0's decision in a group);
- `Broadcast`: at the end, every process of a group takes rank 0's result (torch.distributed;
  the step functions share their own work through `training.distributed.group()`).

A hook may set `loop.stop` in `on_step_end`; the loop then ends after that iteration. The
thread policy is not a hook: it is chosen once per process (`runinfo.auto_threads`, by the
command line and `reproduce`), since the thread count decides the float sums of every loop.

Boundary: the loop orders the calls; each training owns its state, says what a checkpoint holds
and checks what it reads back.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from vaecompress.checkpoint import Checkpoint, CheckpointError
from vaecompress.progress import Progress, progress
from vaecompress.training.distributed import Group, group

Callback = Callable[["Loop"], None]
EVENTS = ("on_start", "on_step_end", "on_continue", "on_end")


class Loop:
    """Runs `step(loop)` for `total` iterations; see the module docstring. `loop.it` is the
    iteration running, `loop.done` the number done, `loop.start` where the run began (after a
    resume), `elapsed_s()` the training time, interrupted runs' (`before_s`) included."""

    def __init__(self, step: Callback, total: int) -> None:
        self.step, self.total = step, total
        self.start = self.it = self.done = 0
        self.stop = False
        self.before_s = 0.0
        self._t0 = time.perf_counter()
        self.callbacks: defaultdict[str, list[Callback]] = defaultdict(list)

    def add_callback(self, event: str, fn: Callback) -> Loop:
        if event not in EVENTS:
            raise ValueError(f"no event {event!r}; the loop's events are {', '.join(EVENTS)}")
        self.callbacks[event].append(fn)
        return self

    def add(self, hook: Any) -> Loop:
        """Add each of `hook`'s methods named after an event."""
        for event in EVENTS:
            if hasattr(hook, event):
                self.add_callback(event, getattr(hook, event))
        return self

    def trigger(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._t0

    def run(self) -> Loop:
        self.trigger("on_start")
        self._t0 = time.perf_counter() - self.before_s
        self.done = self.start
        for it in range(self.start, self.total):
            self.it = it
            self.step(self)
            self.done = it + 1
            self.trigger("on_step_end")
            if self.stop:
                break
            if self.done < self.total:
                self.trigger("on_continue")
        self.trigger("on_end")
        return self


# `check(saved)` checks every field of a saved state, changing nothing (it raises
# CheckpointError), and returns (iterations done, the function that loads the state).
Check = Callable[[dict[str, Any]], tuple[int, Callable[[], None]]]


class Resume:
    """The checkpoint hook: resume from `ck` on start, save `state(loop)` when the loop goes
    on and a save is due (after a multiple of `every` iterations: a training whose iterations
    are steps may save at the end of an epoch only), and remove the file at the end. `grp`: the
    processes, which must all find the same state."""

    def __init__(self, ck: Checkpoint, check: Check, state: Callable[[Loop], dict[str, Any]],
                 *, grp: Group | None = None, every: int = 1) -> None:
        self.ck, self.check, self.state, self.every = ck, check, state, every
        self.grp = grp or Group()

    def on_start(self, loop: Loop) -> None:
        saved = self.ck.load()
        resume = None
        if saved is not None:
            try:
                resume = self.check(saved)
            except CheckpointError as e:
                self.ck.reject(str(e))
        if not self.grp.agree(resume[0] if resume else 0):
            self.ck.reject("the processes found different checkpoints (it must lie on a file "
                           "system every process reads)")
            resume = None
        if resume:
            loop.start, load = resume
            load()

    def on_continue(self, loop: Loop) -> None:
        if loop.done % self.every == 0 and self.ck.due():
            self.ck.save(self.state(loop))

    def on_end(self, loop: Loop) -> None:
        self.ck.finish()


class ProgressBar:
    """The progress hook: a `progress` reporter of `total` iterations (None: not known in
    advance), advanced past a resumed run's, then one update per iteration; `status(loop)`,
    when it says something, is shown from that iteration on."""

    def __init__(self, total: int | None, *, desc: str, unit: str, enabled: bool,
                 status: Callable[[Loop], str | None] | None = None) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.status = status
        self.bar: Progress | None = None

    def on_start(self, loop: Loop) -> None:
        self.bar = progress(self.total, desc=self.desc, unit=self.unit, enabled=self.enabled)
        self.bar.update(loop.start)

    def on_step_end(self, loop: Loop) -> None:
        assert self.bar is not None
        text = self.status(loop) if self.status is not None else None
        if text is not None:
            self.bar.set_status(text)
        self.bar.update()

    def on_end(self, loop: Loop) -> None:
        assert self.bar is not None
        self.bar.close()


class EarlyStopping:
    """The early-stopping hook: after every `every`-th iteration and the last, `score(loop)`
    (lower is better); a new best is kept by `keep(loop)`; after `patience` scores in a row
    without one the loop stops (None: never). In a group the stop is rank 0's decision,
    broadcast, so that no process leaves while another waits for it in a collective
    (`decide_in_group`; off where every process scores the same, all-reduced, values).
    `best`, `best_at` (iterations done then, 0: the start) and `waits` are restored by a
    resumed run."""

    def __init__(self, score: Callable[[Loop], float], *, patience: int | None,
                 every: int = 1, keep: Callback | None = None, best: float = math.inf,
                 decide_in_group: bool = False) -> None:
        self.score, self.patience, self.every, self.keep = score, patience, every, keep
        self.best, self.best_at, self.waits = best, 0, 0
        self.grp = group() if decide_in_group else None

    def on_step_end(self, loop: Loop) -> None:
        if loop.done % self.every and loop.done != loop.total:
            return
        value = self.score(loop)
        if value < self.best:
            self.best, self.best_at, self.waits = value, loop.done, 0
            if self.keep is not None:
                self.keep(loop)
        else:
            self.waits += 1
        stop = self.patience is not None and self.waits >= self.patience
        if self.grp is not None:
            flag = torch.tensor([int(stop)], dtype=torch.int64, device=self.grp.device)
            self.grp.broadcast_([flag])
            stop = bool(flag.item())
        loop.stop = loop.stop or stop


class Broadcast:
    """The distributed hook: at the end, every process of the group takes rank 0's values of
    `tensors()` (the trained state), so that all return the same result."""

    def __init__(self, tensors: Callable[[], Iterable[torch.Tensor]]) -> None:
        self.tensors = tensors

    def on_end(self, loop: Loop) -> None:
        group().broadcast_(self.tensors())
