"""The smallest file whose rebuilt model loses at most a given amount on the task: `--max-drop`.

`compress_within(state, codec, max_drop=D, validation=V)` runs the codec at a few values of its
fidelity knob (`Codec.fidelity_knob`: vae-rd-free's `snr`, vae-rd's `lam`, or its warm
start's `snr` from the value given, NNCodec's `qp`),
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

A search that is killed resumes (`ctx.checkpoint`, the command line's hidden file beside the
output): every try, once measured, is added to a record of the search (`SEARCH_SUFFIX` after
the checkpoint's name; `checkpoint.Checkpoint`, its fingerprint over the codec, its settings,
the drop asked for, the weights, the validation data's name and original score, and what the
caller says decides the tries besides: the command line's flags), and the
try in progress keeps the training checkpoint of its codec, as a single run does. Run again,
the search takes the tries it recorded without running them, and the try that was killed
resumes its training. Its result is the same file as an uninterrupted search's; the one
difference: when the value it keeps was measured before the kill, that value is compressed
once more at the end (the record holds the measurements, not the files). The record is removed
when the search ends, whether or not a value keeps the drop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from vaecompress.accounting import account
from vaecompress.api import CompressResult, compress
from vaecompress.checkpoint import Checkpoint, CheckpointError, fingerprint, number, read_field
from vaecompress.codecs import DEFAULT_CODEC, CodecContext, Knob, get_codec_class
from vaecompress.errors import UserError
from vaecompress.format import dumps, loads
from vaecompress.io import StateDict
from vaecompress.progress import progress
from vaecompress.tasks.validation import Validation
from vaecompress.training.distributed import group

TARGET_KEY = "vaecompress.target"
SEARCH_SUFFIX = ".search"  # the search's record: the training checkpoint's name and this
MAX_TRIES = 1000  # a record longer than any search is not one this module wrote


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
    if knob.name in settings and not knob.given:
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
    identity: Mapping[str, Any] | None = None,
    **settings: Any,
) -> CompressResult:
    """The smallest file of `codec` (default: the library's default codec) whose rebuilt
    model's score on `validation` is at most `max_drop` under the original's (module
    docstring). `settings` are the codec's other settings; `ctx`, `meta`, `base` and
    `evaluate` are `api.compress`'s. The result's `compress_s` is the whole search's, its
    `report["target"]` the search (every try), and the file records it. With
    `ctx.checkpoint`, a killed search run again resumes (module docstring); `identity` (JSON
    values) is what else decides its tries, such as the task's training data, for the
    record's fingerprint: the command line gives its flags."""
    name = DEFAULT_CODEC if codec is None else codec
    knob = knob_of(name, settings, delta=base is not None)
    check_max_drop(max_drop, validation.unit)
    settings = {**dict(knob.alongside), **settings}
    ctx = ctx or CodecContext()
    t0 = time.perf_counter()
    original = validation.score(state)
    journal = _search_record(ctx, name, settings, max_drop, validation, original, state, base,
                             meta, identity)
    recorded = _recorded_tries(journal)
    tries: dict[float, Try] = {}
    best: list[Any] = [None, None]  # (Try, CompressResult) of the smallest passing file
    bar = progress(None, desc=f"--max-drop {max_drop:g}: {name} {knob.name}", unit="try",
                   enabled=ctx.progress)
    unit = "" if validation.unit == "score" else f" {validation.unit}"  # a score names itself

    def measure(value: float) -> tuple[Try, CompressResult]:
        res = compress(state, codec, ctx=ctx, meta=meta, base=base,
                       **{**settings, knob.name: value})
        assert res.rebuilt is not None
        return Try(value, original - validation.score(res.rebuilt), len(res.data)), res

    def run(value: float) -> bool:
        if value in tries:
            return tries[value].drop <= max_drop
        res = None
        if value in recorded:  # measured before the run was killed
            got = recorded[value]
        else:
            got, res = measure(value)
        tries[value] = got
        journal.save({"tries": [t.to_json() for t in tries.values()]})
        bar.set_status(f"{knob.name}={value:g}: {got.drop:.4g}{unit} lost, "
                       f"{got.bytes:,} B" + (" (resumed)" if res is None else ""))
        bar.update()
        ok = got.drop <= max_drop
        if ok and (best[0] is None or got.bytes < best[0].bytes):
            best[0], best[1] = got, res
        if res is not None and best[1] is not res:
            res.rebuilt = None  # keep one model's memory
        return ok

    with bar:
        _search(knob, _start(name, knob, settings), run)
    journal.finish()
    if best[0] is None:
        finest = min(tries.values(), key=lambda t: -knob.finer * t.value)
        raise UserError(
            f"--max-drop {max_drop:g}: no {knob.name} of {name} keeps it; the finest tried, "
            f"{knob.name}={finest.value:g}, loses {finest.drop:.4g}{unit} on "
            f"{validation.data}")
    chosen, res = best
    if res is None:  # kept from before a kill: its file again (the same bytes)
        res = compress(state, codec, ctx=ctx, meta=meta, base=base,
                       **{**settings, knob.name: chosen.value})
        if len(res.data) != chosen.bytes:
            raise RuntimeError(f"--max-drop: {knob.name}={chosen.value:g} gave "
                               f"{len(res.data):,} B resumed, {chosen.bytes:,} B before")
    record = {"knob": knob.name, "value": chosen.value, "max_drop": max_drop,
              "drop": chosen.drop, "unit": validation.unit, "validation": validation.data,
              "tries": len(tries)}
    _record(res, record)
    res.compress_s = time.perf_counter() - t0
    res.report["target"] = {**record, "all": [t.to_json() for t in tries.values()]}
    if evaluate is not None and res.rebuilt is not None:
        res.evaluation = dict(evaluate(res.rebuilt))
    return res


def _search_record(ctx: CodecContext, codec: str, settings: Mapping[str, Any],
                   max_drop: float, validation: Validation, original: float,
                   state: Mapping[str, torch.Tensor],
                   base: Mapping[str, torch.Tensor] | None,
                   meta: Mapping[str, Any] | None,
                   identity: Mapping[str, Any] | None = None) -> Checkpoint:
    """The record of this search beside the training checkpoint of `ctx` (none without it),
    fingerprinted over what decides the search (module docstring)."""
    if ctx.checkpoint is None:
        return Checkpoint(None, kind="max_drop", fingerprint="")
    config = {"codec": codec, "settings": dict(settings), "max_drop": max_drop,
              "unit": validation.unit, "validation": validation.data, "original": original,
              "seed": ctx.seed, "meta": dict(meta or {}), "base": base is not None,
              "probe": ctx.probe is not None, "finetune": ctx.finetune is not None,
              "identity": dict(identity or {})}
    data = [list(state), *state.values(), *(base or {}).values()]
    path = ctx.checkpoint.with_name(ctx.checkpoint.name + SEARCH_SUFFIX)
    # saved after every try: a try costs seconds to minutes, the record a few bytes
    return Checkpoint(path, kind="max_drop", fingerprint=fingerprint("max_drop", config, data),
                      every_s=0.0, writes=group().main)


def _recorded_tries(journal: Checkpoint) -> dict[float, Try]:
    """The tries a killed run of this same search measured (none where there is no record or
    one to ignore)."""
    saved = journal.load()
    if saved is None:
        return {}
    try:
        rows = read_field(saved, "tries", list)
        if len(rows) > MAX_TRIES:
            raise CheckpointError(f"{len(rows)} tries")
        out: dict[float, Try] = {}
        for row in rows:
            if not isinstance(row, dict):
                raise CheckpointError("a try is not a record")
            size = read_field(row, "bytes", int)
            if size < 0:
                raise CheckpointError("a try of negative size")
            value, drop = number(row, "value"), number(row, "drop")
            if not (math.isfinite(value) and math.isfinite(drop)):
                raise CheckpointError("a try that is not a finite number")
            out[value] = Try(value, drop, size)
        return out
    except CheckpointError as e:
        journal.reject(str(e))
        return {}


def _start(codec: str, knob: Knob, settings: Mapping[str, Any]) -> float:
    """The caller's value of a `given` knob, else the codec's default value of the knob,
    within its range."""
    defaults = get_codec_class(codec).Settings()
    if knob.given and knob.name in settings:
        value = float(settings[knob.name])
    else:
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
