"""The smallest file whose rebuilt model loses at most a given amount on the task: `--max-drop`.

`compress_within(state, codec, max_drop=D, validation=V)` runs the codec at a few values of its
fidelity knob (`Codec.fidelity_knob`: vae-rd-free's `snr`, vae-rd's `lam`, NNCodec's `qp`),
measures each rebuilt model on the validation data of the task (`tasks.validation.Validation`:
data the printed measure does not read) and keeps the smallest file whose drop from the
original is at most D (points of accuracy, or 1 - mean cosine of embeddings).

The search assumes that a finer value of the knob loses no more, and checks only what it runs:
from the codec's default it moves coarser while the drop holds (finer while it does not), each
move twice the last, then halves the bracket until it is the knob's resolution wide. It returns
the smallest file among the values it measured that keep the drop, never a value it did not
measure; where even the finest value loses more, it says so (a `UserError`). The closed form of
vae-rd-free costs seconds a try (about eight tries); a codec that trains pays a training a try
(about five).

The file records the search (`meta["vaecompress.target"]`: the knob, the value chosen, the
drop asked for and the drop measured, the validation data, the number of tries); the codec's
settings in the header hold the value chosen, as for any setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from vaecompress.accounting import account
from vaecompress.api import CompressResult, compress
from vaecompress.codecs import DEFAULT_CODEC, CodecContext, Knob, get_codec_class
from vaecompress.errors import UserError
from vaecompress.format import dumps, loads
from vaecompress.io import StateDict
from vaecompress.progress import progress
from vaecompress.tasks.validation import Validation

TARGET_KEY = "vaecompress.target"


@dataclass(frozen=True)
class Try:
    """One value of the knob, as run: the drop measured on the validation data and the
    file's bytes."""

    value: float
    drop: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "drop": self.drop, "bytes": self.bytes}


def knob_of(codec: str, settings: Mapping[str, Any], *, delta: bool = False) -> Knob:
    """The knob `compress_within` searches for `codec` with `settings` (`delta`: against a
    base); a UserError where the codec has none, or where `settings` already fix it."""
    cls = get_codec_class(codec)
    knob = cls.fidelity_knob(settings, delta=delta)
    if knob is None:
        raise UserError(f"--max-drop: {codec} has no fidelity setting to search with these "
                        "settings (vae-rd-free, the default, searches snr; vae-rd lam; "
                        "nncodec qp)")
    if knob.name in settings:
        raise UserError(f"--max-drop chooses {codec}'s {knob.name}: give --max-drop or "
                        f"{knob.name}, not both")
    if settings.get("size"):
        raise UserError("--max-drop and --size are two targets: give one")
    return knob


def check_max_drop(max_drop: float, unit: str) -> None:
    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise UserError(f"--max-drop must be a number >= 0, got {max_drop}")
    if unit == "cosine" and max_drop >= 1:
        raise UserError(f"--max-drop for an embedding model is 1 - mean cosine (0.001 keeps "
                        f"a mean cosine of 0.999), less than 1; got {max_drop}")


def compress_within(
    state: Mapping[str, torch.Tensor],
    codec: str | None = None,
    *,
    max_drop: float,
    validation: Validation,
    ctx: CodecContext | None = None,
    meta: Mapping[str, Any] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    evaluate: Callable[[StateDict], Mapping[str, Any]] | None = None,
    **settings: Any,
) -> CompressResult:
    """The smallest file of `codec` (default: the library's default codec) whose rebuilt
    model's score on `validation` is at most `max_drop` under the original's (module
    docstring). `settings` are the codec's other settings; `ctx`, `meta`, `base` and
    `evaluate` are `api.compress`'s. The result's `compress_s` is the whole search's, its
    `report["target"]` the search (every try), and the file records it."""
    name = DEFAULT_CODEC if codec is None else codec
    knob = knob_of(name, settings, delta=base is not None)
    check_max_drop(max_drop, validation.unit)
    settings = {**dict(knob.alongside), **settings}
    ctx = replace(ctx or CodecContext(), checkpoint=None)  # each try is a different run
    t0 = time.perf_counter()
    original = validation.score(state)
    tries: dict[float, Try] = {}
    best: list[Any] = [None, None]  # (Try, CompressResult) of the smallest passing file
    bar = progress(None, desc=f"--max-drop {max_drop:g}: {name} {knob.name}", unit="try",
                   enabled=ctx.progress)

    def run(value: float) -> bool:
        if value in tries:
            return tries[value].drop <= max_drop
        res = compress(state, codec, ctx=ctx, meta=meta, base=base,
                       **{**settings, knob.name: value})
        assert res.rebuilt is not None
        drop = original - validation.score(res.rebuilt)
        got = Try(value, drop, len(res.data))
        tries[value] = got
        bar.set_status(f"{knob.name}={value:g}: {drop:.4g} {validation.unit} lost, "
                       f"{got.bytes:,} B")
        bar.update()
        ok = drop <= max_drop
        if ok and (best[0] is None or got.bytes < best[0].bytes):
            best[0], best[1] = got, res
        res.rebuilt = None if best[1] is not res else res.rebuilt  # keep one model's memory
        return ok

    with bar:
        _search(knob, _start(name, knob, settings), run)
    if best[1] is None:
        finest = min(tries.values(), key=lambda t: -knob.finer * t.value)
        raise UserError(
            f"--max-drop {max_drop:g}: no {knob.name} of {name} keeps it; the finest tried, "
            f"{knob.name}={finest.value:g}, loses {finest.drop:.4g} {validation.unit} on "
            f"{validation.data}")
    chosen, res = best
    record = {"knob": knob.name, "value": chosen.value, "max_drop": max_drop,
              "drop": chosen.drop, "unit": validation.unit, "validation": validation.data,
              "tries": len(tries)}
    _record(res, record)
    res.compress_s = time.perf_counter() - t0
    res.report["target"] = {**record, "all": [t.to_json() for t in tries.values()]}
    if evaluate is not None and res.rebuilt is not None:
        res.evaluation = dict(evaluate(res.rebuilt))
    return res


def _start(codec: str, knob: Knob, settings: Mapping[str, Any]) -> float:
    """The codec's default value of the knob, within its range."""
    defaults = get_codec_class(codec).Settings()
    value = float(getattr(defaults, knob.name)) if knob.name in {
        f.name for f in fields(defaults)} else knob.lo
    return min(max(value, knob.lo), knob.hi)


def _search(knob: Knob, start: float, ok: Callable[[float], bool]) -> None:
    """Run `ok(value)` (True: the drop holds) at the values the search needs (module
    docstring), in the knob's units: log2 of the value for a log knob, rounded for an integer
    one."""
    def to_u(v: float) -> float:
        return math.log2(v) if knob.log else v

    def value(u: float) -> float:
        v = 2.0 ** u if knob.log else u
        v = min(max(v, knob.lo), knob.hi)
        return round(v) if knob.integer else v

    coarser = -knob.finer  # the direction of u that loses more
    u = to_u(start)
    step = knob.step
    good: float | None = None
    bad: float | None = None
    if ok(value(u)):
        good = u
        while True:
            nxt = to_u(value(good + coarser * step))
            if nxt == good:
                return  # the coarsest value keeps it
            if not ok(value(nxt)):
                bad = nxt
                break
            good, step = nxt, step * 2
    else:
        bad = u
        while True:
            nxt = to_u(value(bad - coarser * step))
            if nxt == bad:
                return  # even the finest loses more
            if ok(value(nxt)):
                good = nxt
                break
            bad, step = nxt, step * 2
    assert good is not None and bad is not None  # bracketed: one passes, one fails
    while abs(bad - good) > knob.resolution:
        mid = to_u(value((good + bad) / 2))
        if mid in (good, bad):
            return
        if ok(value(mid)):
            good = mid
        else:
            bad = mid


def _record(res: CompressResult, record: dict[str, Any]) -> None:
    """The search written into the file's header (the file re-serialized, its sizes
    recounted)."""
    c = loads(res.data)
    c.meta[TARGET_KEY] = record
    res.data = dumps(c)
    res.accounting = account(c, len(res.data))
