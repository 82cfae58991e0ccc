"""Families of models, measured: fine-tunes of a zoo model coded against it, and the
checkpoints of one training run in one series file (issue 20; docs/families.md).

    python -m vaecompress.experiments.families --out results/families

Two families of the zoo model `--model` (FNN by default), made here, reproducibly, with no
download:

- fine-tunes: the quick-preset model (the zoo cache's) fine-tuned for a few epochs on shifted
  MNIST tasks (`TASKS`: digits rotated by 30 degrees, digits under Gaussian noise, only the
  digits 0-4); each member is measured on its own shifted test set;
- checkpoints: a fresh training run of the same architecture, its weights kept every half
  epoch; each checkpoint is measured on the MNIST test set.

Each family is coded (a) member by member alone, by the data-free codecs of the bench (NNCodec
at a sweep of qp when it is installed) and by the task-aware vae-rd (trained on each member's
own task); (b) for the fine-tunes, against the base (`api.compress(base=...)`) by vae-rd-free
(the default codec, closed form, at a sweep of the weights' SNR, at a sweep of the change's own
SNR, and at its defaults), int8, zstd (lossless, on the XOR delta), bitdelta (BitDelta's 1-bit
delta, data-free and with its scales refined on each member's task) and vae-rd; (c) for the
checkpoints, as one series file (`family.series`), each member coded against the previous
rebuilt one by the same codecs. Every byte counted is what
rebuilds the member given the base; a method passes when every member keeps its accuracy within
`tolerance` points.
Results: `families.json` (with the run's environment and git revision) and `families.md`, a
table per family drawn from the JSON (`--report` redraws it alone). Records under `records/` make
an interrupted run resume.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vaecompress.api import compress
from vaecompress.codecs import CodecContext, get_codec_class, make_codec
from vaecompress.data import MnistSplit, load_mnist
from vaecompress.errors import UserError
from vaecompress.experiments.common import (
    RecordStore,
    config_hash,
    evaluate_state,
    trained_model,
)
from vaecompress.family.delta import base_sha256
from vaecompress.family.series import compress_series
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.format import FORMAT_VERSION
from vaecompress.io import StateDict
from vaecompress.methods.rd.vae_rd import VAERDSettings
from vaecompress.methods.rd.vae_rd_free import CHANGE_ONLY_SNR
from vaecompress.runinfo import environment, git_revision, resolve_device
from vaecompress.tasks.mnist import make_finetuner
from vaecompress.training.finetune import Finetuner
from vaecompress.zoo.train import TrainConfig, preset_config, train_model

TASKS = ("rotated", "noisy", "digits-0-4")
FAMILIES = ("fine-tunes", "checkpoints")


@dataclass(frozen=True)
class FamiliesConfig:
    model: str = "fnn"
    preset: str = "quick"  # the base model's training preset (shared with bench, reproduce)
    tasks: tuple[str, ...] = TASKS
    finetune_epochs: int = 2
    finetune_lr: float = 1e-4  # a tenth of the training's, as fine-tunes usually are
    run_epochs: int = 3  # the checkpoint family's training run
    checkpoints_per_epoch: int = 2
    run_seed: int = 1
    # vae-rd-free (the default codec, closed form) at these fidelities in dB, dense where the
    # members start to keep their accuracy; on a delta the target is the member's weights' SNR,
    # as alone (`CodecContext.reference`)
    snrs_alone: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 20.0)
    snrs_delta: tuple[float, ...] = (10.0, 16.0, 20.0, 22.0, 24.0, 28.0)
    snrs_series: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 9.0, 10.0, 14.0, 20.0)
    # against a base or the checkpoint before: the change's own SNR (`change_snr`) swept too,
    # with the weights' target out of the way (`CHANGE_SWEEP_SNR`)
    change_snrs: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)
    # vae-rd (the task-aware codec): its epochs on each member, its own default, as the zoo's
    # bench runs it (the runs up to a55fd3a took 1 epoch, half of it); bitdelta's refinement
    # takes the same
    task_epochs: float = VAERDSettings().epochs
    # from where every member keeps its accuracy (alone, the RNN's digits-0-4 fine-tune loses
    # 0.7 point at lam 4) up to a rate where every member loses more than the tolerance, so that
    # each member's own smallest passing coding is found, alone and against the base
    task_lams_alone: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0, 10.0, 14.0, 20.0,
                                          28.0, 40.0, 56.0)
    task_lams_delta: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0, 10.0, 14.0, 20.0,
                                          28.0)
    task_lams_series: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.5, 7.0, 10.0, 14.0)
    # NNCodec alone (every qp step, from where the zoo's models keep their accuracy to past
    # where they lose a point)
    nncodec_qps: tuple[int, ...] = tuple(range(-26, -11))
    # bitdelta against the base, data-free and with its scales refined on each member's task
    # for task_epochs (as vae-rd trains) at these learning rates (of each scale's factor): the
    # peer at its best
    bitdelta_lrs: tuple[float, ...] = (1e-3, 1e-2, 3e-2)
    tolerance: float = 0.5  # accuracy points every member may lose
    seed: int = 0


# ------------------------------------------------------------------ the families, made here


def shift(split: MnistSplit, task: str, seed: int) -> MnistSplit:
    """MNIST with a task's shift: rotated 30 degrees, Gaussian noise (std 0.3 of the range,
    seeded), or the digits 0-4 only."""
    images, labels = split.images, split.labels
    if task == "rotated":
        x = torch.from_numpy(images).float().unsqueeze(1)
        a = math.radians(30)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        images = x.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    elif task == "noisy":
        rng = np.random.default_rng(seed)
        noise = rng.normal(0, 0.3 * 255, images.shape)
        images = np.clip(images + noise, 0, 255).round().astype(np.uint8)
    elif task == "digits-0-4":
        keep = labels < 5
        images, labels = images[keep], labels[keep]
    else:
        raise UserError(f"unknown task '{task}'; tasks: {', '.join(TASKS)}")
    return MnistSplit(np.ascontiguousarray(images), np.ascontiguousarray(labels))


def _cpu(model: torch.nn.Module) -> StateDict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def fine_tunes(cfg: FamiliesConfig, base: StateDict, train: MnistSplit, test: MnistSplit,
               device: torch.device, progress: bool) -> list[dict[str, Any]]:
    """The fine-tune family: one member per task, started from `base`."""
    members = []
    for i, task in enumerate(cfg.tasks):
        tcfg = TrainConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, seed=cfg.seed + i)
        tcfg_train = shift(train, task, cfg.seed + i)
        res = train_model(cfg.model, tcfg_train, tcfg, device=device, progress=progress,
                          init=base)
        members.append({"label": task, "state": _cpu(res.model), "train": tcfg_train,
                        "test": shift(test, task, cfg.seed + 100 + i)})
    return members


def checkpoints(cfg: FamiliesConfig, train: MnistSplit, test: MnistSplit, device: torch.device,
                progress: bool) -> list[dict[str, Any]]:
    """The checkpoint family: a fresh run's weights every 1/checkpoints_per_epoch epoch."""
    tcfg = TrainConfig(epochs=cfg.run_epochs, seed=cfg.run_seed)
    every = max(1, math.ceil(len(train) / tcfg.batch_size) // cfg.checkpoints_per_epoch)
    kept: list[dict[str, Any]] = []

    def keep(step: int, model: torch.nn.Module) -> None:
        if step % every == 0:
            kept.append({"label": f"step-{step}", "state": _cpu(model), "train": train,
                         "test": test})

    train_model(cfg.model, train, tcfg, device=device, progress=progress, on_step=keep)
    return kept


# ------------------------------------------------------------------ coding them


# A sweep of the change's own target alone sets the weights' to this, which no change target
# of the sweeps lets bind (a weights' SNR of 1 dB is an error of 80% of the weights' energy);
# the codec's own search of `--max-drop` against a base does the same.
CHANGE_SWEEP_SNR = CHANGE_ONLY_SNR


def free_points(snrs: tuple[float, ...], delta: bool = False,
                change_snrs: tuple[float, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """vae-rd-free at the weights' SNRs `snrs`; against a base (`delta`): with the change held to
    nothing (a sweep of the weights' target alone), at the change's SNRs `change_snrs` (a sweep
    of the change's target alone, `CHANGE_SWEEP_SNR`), and the default (both targets)."""
    if not delta:
        return [("vae-rd-free", {"snr": snr}) for snr in snrs]
    return [*[("vae-rd-free", {"snr": snr, "change_snr": 0.0}) for snr in snrs],
            *[("vae-rd-free", {"snr": CHANGE_SWEEP_SNR, "change_snr": c}) for c in change_snrs],
            ("vae-rd-free", {})]


def methods(cfg: FamiliesConfig, family: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(how: alone | base | series, codec, settings) measured on a family."""
    free = free_points

    def task(lams: tuple[float, ...]) -> list[tuple[str, dict[str, Any]]]:
        return [("vae-rd", {"lam": lam, "epochs": cfg.task_epochs}) for lam in lams]

    fixed: list[tuple[str, dict[str, Any]]] = [("zstd", {}), ("int8", {})]
    # NNCodec, the data-free peer that beats vae-rd-free on some zoo models, when installed
    peer = ([("nncodec", {"qp": qp}) for qp in cfg.nncodec_qps]
            if get_codec_class("nncodec").available() is None else [])
    alone = [("alone", c, s) for c, s in [*fixed, ("int4", {}), *free(cfg.snrs_alone), *peer,
                                          *task(cfg.task_lams_alone)]]
    if family == "checkpoints":
        # no change sweep: the run's first checkpoint has no base, and is coded alone at the
        # sweep's weights target (1 dB)
        return alone + [("series", c, s) for c, s in [*fixed, *free(cfg.snrs_series, True),
                                                      *task(cfg.task_lams_series)]]
    bitdelta = [("bitdelta", {}), *[("bitdelta", {"finetune_epochs": cfg.task_epochs, "lr": lr})
                                    for lr in cfg.bitdelta_lrs]]
    return alone + [("base", c, s) for c, s in [*fixed, *bitdelta,
                                                *free(cfg.snrs_delta, True, cfg.change_snrs),
                                                *task(cfg.task_lams_delta)]]


Task = Callable[[dict[str, Any]], Finetuner]  # a member's task, for the codecs that train
Score = Callable[[dict[str, Any], StateDict], float]  # a member and a rebuilt state -> score


def code_family(how: str, codec: str, settings: dict[str, Any], members: list[dict[str, Any]],
                base: StateDict | None, ctx: CodecContext,
                task: Task) -> tuple[list[int], list[StateDict], list[float | None]]:
    """(bytes of each member, each member rebuilt, the SNR in dB of each member's change from
    what it was coded against: None alone or lossless). A series counts its container's framing
    with its first member (and codes it against `base` when there is one); a codec that trains
    on the task trains on each member's own (a series on its first member's: one run)."""
    states = [m["state"] for m in members]
    trains = get_codec_class(codec).method(settings)[1]  # these settings use the task
    if how == "series":
        if trains:
            ctx = replace(ctx, finetune=task(members[0]))
        series = compress_series(states, codec, ctx=ctx, base=base, **settings)
        results = series.members
        sizes = [len(m.data) for m in results]
        sizes[0] += len(series.data) - sum(sizes)
    else:
        results = [compress(m["state"], codec, ctx=ctx, finetune=task(m) if trains else None,
                            base=base if how == "base" else None, **settings) for m in members]
        sizes = [len(r.data) for r in results]
    changes = [r.fidelity.get("change_snr_db") for r in results]
    return (sizes, [r.rebuilt for r in results if r.rebuilt is not None],
            [c if c is None or math.isfinite(c) else None for c in changes])


def measure_family(cfg: FamiliesConfig, family: str, members: list[dict[str, Any]],
                   base: StateDict | None, store: RecordStore, device: torch.device,
                   progress: bool) -> dict[str, Any]:
    """A zoo model's family, scored by each member's accuracy on its own test set."""
    def score(member: dict[str, Any], state: StateDict) -> float:
        return evaluate_state(cfg.model, state, member["test"], device=device)[0]

    def task(member: dict[str, Any]) -> Finetuner:
        return make_finetuner(cfg.model, member["train"], device=device, seed=cfg.seed)

    made_by = {k: v for k, v in asdict(cfg).items()
               if k != "tolerance"
               and not k.startswith(("snrs_", "task_", "nncodec_", "change_", "bitdelta_"))}
    return measure_members(family, members, base, methods(cfg, family), store,
                           made_by=made_by, score=score, task=task, tolerance=cfg.tolerance,
                           device=device, seed=cfg.seed, progress=progress, score_key="accuracy")


def measure_members(family: str, members: list[dict[str, Any]], base: StateDict | None,
                    ways: list[tuple[str, str, dict[str, Any]]], store: RecordStore, *,
                    made_by: dict[str, Any], score: Score, task: Task, tolerance: float,
                    device: torch.device, seed: int, progress: bool,
                    score_key: str) -> dict[str, Any]:
    """Code `members` every way of `ways` ((how, codec, settings); `base` is the receiver's
    model, which `base` codings and a series start from) and score each rebuilt member against
    its original (`score`, higher is better); a way passes when no member loses more than
    `tolerance`. Records in `store`, keyed by what made the members (`made_by`) and the way."""
    states = [m["state"] for m in members]
    originals = [score(m, m["state"]) for m in members]
    orig_bytes = [sum(t.numel() * t.element_size() for t in s.values()) for s in states]
    info: dict[str, Any] = {
        "members": [{"label": m["label"], score_key: a, "orig_bytes": b}
                    for m, a, b in zip(members, originals, orig_bytes, strict=True)],
        "runs": [],
    }
    if base is not None:
        info[f"base_{score_key}"] = [score(m, base) for m in members]
    ident = config_hash({"family": family, "members": made_by, "torch": torch.__version__,
                         "weights": [base_sha256(s) for s in states]})
    for how, codec, settings in ways:
        # Keyed by every resolved setting (a codec whose default changes is measured again)
        # and the container's format version (which changes the bytes written).
        resolved = make_codec(codec, **settings).settings_json()
        key = config_hash({"family": ident, "how": how, "codec": codec, "settings": resolved,
                           "format": FORMAT_VERSION})
        rec = store.get(key)
        if rec is None:
            ctx = CodecContext(device=device, seed=seed, progress=progress,
                               label=f"{family} {how} {codec}")
            t0 = time.perf_counter()
            sizes, rebuilt, changes = code_family(how, codec, settings, members, base, ctx,
                                                  task)
            scores = [score(m, r) for r, m in zip(rebuilt, members, strict=True)]
            rec = {"how": how, "codec": codec, "settings": settings, "bytes": sizes,
                   "total_bytes": sum(sizes), score_key: scores, "change_snr_db": changes,
                   "max_drop": max(o - a for o, a in zip(originals, scores, strict=True)),
                   "compress_s": time.perf_counter() - t0, "git_revision": git_revision()}
            store.put(key, rec)
        # whether the coding used the task's data: what the codec says of these settings
        rec["data"] = get_codec_class(codec).method(settings)[1]
        rec["ok"] = rec["max_drop"] <= tolerance
        info["runs"].append(rec)
    info["summary"] = summarize(info, sum(orig_bytes))
    return info


def _describe(r: dict[str, Any] | None, orig_total: int) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"how": r["how"], "codec": r["codec"], "settings": r["settings"],
            "total_bytes": r["total_bytes"], "ratio": orig_total / r["total_bytes"],
            "max_drop": r["max_drop"]}


def summarize(info: dict[str, Any], orig_total: int) -> dict[str, Any]:
    """The smallest passing run coded alone and as a family, among the data-free codecs and
    among all (the task-aware vae-rd included); their ratio is what the issue's goals ask."""
    passing = [r for r in info["runs"] if r["ok"]]

    def smallest(alone: bool, data_free: bool) -> dict[str, Any] | None:
        runs = [r for r in passing if (r["how"] == "alone") == alone
                and (not data_free or not r["data"])]
        return min(runs, key=lambda r: r["total_bytes"]) if runs else None

    out: dict[str, Any] = {"orig_bytes": orig_total, "comparisons": []}
    for label, data_free in (("data-free", True), ("all, task-aware included", False)):
        alone, family = smallest(True, data_free), smallest(False, data_free)
        out["comparisons"].append({
            "codecs": label, "alone": _describe(alone, orig_total),
            "family": _describe(family, orig_total),
            "family_vs_alone": (alone["total_bytes"] / family["total_bytes"]
                                if alone and family else None)})
    best = smallest(False, False)
    # BitDelta data-free ("bitdelta"), and with its scales refined on the task
    # ("bitdelta_refined"): the smallest passing run, else the one that loses least
    for key, refined in (("bitdelta", False), ("bitdelta_refined", True)):
        runs = [r for r in info["runs"] if r["codec"] == "bitdelta" and r["data"] == refined]
        if runs:
            r = min(runs, key=lambda r: (not r["ok"], r["total_bytes"] if r["ok"]
                                         else r["max_drop"]))
            out[key] = {**_describe(r, orig_total),  # type: ignore[dict-item]
                        "vs_best_family": (r["total_bytes"] / best["total_bytes"]
                                           if best else None)}
    return out


def per_member(info: dict[str, Any], tolerance: float, score_key: str,
               data_free: bool) -> dict[str, Any] | None:
    """Each member at its own smallest passing coding of the sweep, alone and against the base
    (what compressing each fine-tune with its own `--max-drop` would pick), among the data-free
    codings or all: the family's bytes when its members need not share one setting. None for
    a family not coded against a base (a series' members depend on the ones before) or where
    some member passes under no coding. A pick is `at_sweep_end` where no setting its codec was
    tried at gave that member fewer bytes: a smaller coding of it was not tried, so the sweep
    may have stopped before the member's own smallest passing one."""
    originals = [m[score_key] for m in info["members"]]
    picks: dict[str, list[dict[str, Any]]] = {}
    for how in ("alone", "base"):
        picks[how] = []
        for i, orig in enumerate(originals):
            fits = [r for r in info["runs"] if r["how"] == how
                    and (not data_free or not r["data"]) and orig - r[score_key][i] <= tolerance]
            if not fits:
                return None
            r = min(fits, key=lambda r: r["bytes"][i])
            same = [q for q in info["runs"] if q["how"] == how and q["codec"] == r["codec"]
                    and q["data"] == r["data"]]
            picks[how].append({"codec": r["codec"], "settings": r["settings"],
                               "bytes": r["bytes"][i], "drop": orig - r[score_key][i],
                               "at_sweep_end": all(q["bytes"][i] >= r["bytes"][i]
                                                   for q in same)})
    alone, family = (sum(p["bytes"] for p in picks[h]) for h in ("alone", "base"))
    return {"alone": picks["alone"], "family": picks["base"], "alone_bytes": alone,
            "family_bytes": family, "family_vs_alone": alone / family}


# ------------------------------------------------------------------ the report


# How a family's scores read (`results["metric"]`; a results file without one is the zoo's).
ACCURACY = {"key": "accuracy", "name": "accuracy", "digits": 2, "unit": "%",
            "lost": "points", "command": "python -m vaecompress.experiments.families"}


def _end(pick: dict[str, Any]) -> str:
    """`*` after a member's pick that no other setting of its codec beat in bytes for that
    member (`per_member`'s `at_sweep_end`)."""
    return "*" if pick["at_sweep_end"] else ""


def render(results: dict[str, Any]) -> str:
    """families.md, drawn from families.json alone."""
    env, cfg = results["environment"], results["config"]
    metric = results.get("metric", ACCURACY)
    key, digits, unit = metric["key"], metric["digits"], metric["unit"]
    lines = [
        "# Families of models",
        "",
        f"Made by `{metric['command']}` at git revision "
        f"`{env['git_revision']}` ({env['time_utc']}, torch {env['torch']}, "
        f"{env['torch_threads']} thread(s), {env['device']}); model `{cfg['model']}`, "
        f"seed {cfg['seed']}. A run passes when every member keeps its {metric['name']} within "
        f"{cfg['tolerance']}{_unit(metric)} of the member it replaces; bytes are everything "
        "that rebuilds the members given the base (the base itself is not counted).",
    ]
    for family, info in results["families"].items():
        members = info["members"]
        lines += ["", f"## {family}", "",
                  "Members: " + ", ".join(
                      f"{m['label']} ({m[key]:.{digits}f}{unit}"
                      + (f", base {b:.{digits}f}{unit}" if b is not None else "") + ")"
                      for m, b in zip(members, info.get(f"base_{key}")
                                      or [None] * len(members), strict=True))
                  + f"; {info['summary']['orig_bytes']:,} B as float32.", "",
                  "| coded | codec | data | settings | bytes | ratio | max drop | passes |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        for r in info["runs"]:
            settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"
            lines.append(
                f"| {r['how']} | {r['codec']} | {'task' if r['data'] else '-'} | {settings} | "
                f"{r['total_bytes']:,} | "
                f"{info['summary']['orig_bytes'] / r['total_bytes']:.1f}x | "
                f"{r['max_drop']:.{digits}f} | {'yes' if r['ok'] else 'no'} |")
        s = info["summary"]
        for c in comparisons(info):
            a, f = c["alone"], c["family"]
            lines += ["", f"Smallest passing, {c['codecs']}: alone "
                      + (f"{_short(a)} {a['total_bytes']:,} B" if a else "none")
                      + "; as a family "
                      + (f"{_short(f)} {f['total_bytes']:,} B ({f['ratio']:.1f}x float32)"
                         if f else "none")
                      + (f": {c['family_vs_alone']:.2f}x fewer bytes than alone."
                         if c["family_vs_alone"] else ".")]
            each = per_member(info, cfg["tolerance"], key, c["codecs"] == "data-free")
            if each is not None:
                ends = any(p["at_sweep_end"] for p in each["alone"] + each["family"])
                lines += ["", f"Each member at its own smallest passing coding, {c['codecs']}: "
                          f"alone {each['alone_bytes']:,} B ("
                          + ", ".join(f"{_short(p)} {p['bytes']:,} B{_end(p)}"
                                      for p in each["alone"])
                          + f"); as a family {each['family_bytes']:,} B ("
                          + ", ".join(f"{_short(p)} {p['bytes']:,} B{_end(p)}"
                                      for p in each["family"])
                          + f"): {each['family_vs_alone']:.2f}x fewer bytes than alone."
                          + (" `*`: no setting that codec was tried at gave that member "
                             "fewer bytes, so a smaller coding of it was not tried." if ends
                             else "")]
        for bd_key, how in (("bitdelta", "data-free"),
                            ("bitdelta_refined", "its scales refined on the task")):
            if bd_key in s:
                b = s[bd_key]
                lines += ["", f"bitdelta (1 bit a weight, {how}"
                          + (f", {_short(b)}" if b["settings"] else "")
                          + f"): {b['total_bytes']:,} B, "
                          f"up to {b['max_drop']:.{digits}f}{_unit(metric)} lost"
                          + (f"; {b['vs_best_family']:.2f}x the bytes of the smallest passing "
                             "family coding." if b["vs_best_family"] else ".")]
    return "\n".join(lines) + "\n"


def _unit(metric: dict[str, Any]) -> str:
    return f" {metric['lost']}" if metric["lost"] else ""


def comparisons(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's comparisons worth showing: the one with the task-aware codec included
    only where some coding used the task (else it repeats the data-free one)."""
    data = any(r["data"] for r in info["runs"])
    return [c for c in info["summary"]["comparisons"] if data or c["codecs"] == "data-free"]


def _short(r: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
    return f"`{r['codec']}{f' ({settings})' if settings else ''}`"


def write_report(out: Path) -> None:
    """Redraw `out/families.md` from `out/families.json`; UserError when there is none."""
    import json

    source = out / "families.json"
    try:
        results = json.loads(source.read_text())
    except FileNotFoundError:
        raise UserError(f"{source} does not exist: run the families bench into {out} first") \
            from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {source}: {e}") from None
    atomic_write_text(out / "families.md", render(results))


# ------------------------------------------------------------------ the command


def requested(text: str) -> list[str]:
    """The families a comma-separated `--families` names; UserError for another name."""
    families = [f.strip() for f in text.split(",") if f.strip()]
    for f in families:
        if f not in FAMILIES:
            raise UserError(f"unknown family '{f}' ({', '.join(FAMILIES)})")
    return families


def run(cfg: FamiliesConfig, out: Path, *, device: torch.device, data_dir: str | None,
        progress: bool, families: Sequence[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "records")
    train, test = load_mnist(data_dir)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(device, cfg.seed),
                               "config": asdict(cfg), "families": {}}
    makers: dict[str, Callable[[], tuple[list[dict[str, Any]], StateDict | None]]] = {}
    base_model = trained_model(cfg.model, preset_config(cfg.preset, cfg.model, cfg.seed), train,
                               test, device=device, progress=progress)
    makers["fine-tunes"] = lambda: (fine_tunes(cfg, base_model.state, train, test, device,
                                               progress), base_model.state)
    makers["checkpoints"] = lambda: (checkpoints(cfg, train, test, device, progress), None)
    for family in families:
        members, base = makers[family]()
        results["families"][family] = measure_family(cfg, family, members, base, store,
                                                     device, progress)
    results["run_s"] = time.perf_counter() - t0
    atomic_write_json(out / "families.json", results)
    write_report(out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vaecompress.experiments.families",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/families", help="results folder")
    p.add_argument("--model", default="fnn", help="zoo model (default: fnn)")
    p.add_argument("--families", default="fine-tunes,checkpoints",
                   help="comma-separated: fine-tunes, checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="only redraw families.md")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if args.report:
            write_report(out)
            return 0
        families = requested(args.families)
        torch.set_num_threads(args.threads)
        cfg = replace(FamiliesConfig(), model=args.model, seed=args.seed)
        res = run(cfg, out, device=resolve_device(args.device), data_dir=args.data_dir,
                  progress=not args.quiet, families=families)
    except UserError as e:
        print(f"families: error: {e}", file=sys.stderr)
        return 2
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
