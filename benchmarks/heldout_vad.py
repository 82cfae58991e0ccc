"""The default codec on a real model nobody here trained or tuned on: Silero's voice detector.

    .venv/bin/python benchmarks/heldout_vad.py --out results/heldout-vad   # about 12 minutes

Needs `espeak-ng` (Debian: `apt-get install espeak-ng`) to speak the test audio, and the
Python package index once, to fetch the weights (`pip download silero-vad==6.2.3 --no-deps`:
the file `silero_vad/data/silero_vad_16k.safetensors` of its wheel, MIT licence, checked
against `WEIGHTS_SHA256` and cached). NNCodec, HQQ and ZipNN are swept when installed.

**The model.** Silero VAD's 16 kHz detector (309,633 float32 weights): a short-time Fourier
transform as a fixed convolution, four 1-D convolutions, an LSTM cell and a sigmoid, run on
chunks of 512 samples with 64 samples of the chunk before as context, giving the probability
that each chunk is speech (`VoiceDetector`, written here from its layers' names and shapes; with
the weights of the package's TorchScript file it gives that file's outputs to within 1e-6).
Nothing in this project was chosen on it: it is the held-out model of the default, beside the
held-out classifiers of `benchmarks/default_codec.py`, and it is unlike every model the
defaults were chosen on (a Fourier basis whose values are exact, a magnitude, a recurrent cell).

**The task.** Test audio made here, deterministically: `UTTERANCES` sentences of the held-out
Austen text (`tasks/data/heldout.txt`) spoken by `espeak-ng` in several English voices, speeds
and pitches, each after a pause, a quarter of them clean and the others in white noise at 20,
10 and 5 dB below the speech; resampled to 16 kHz and laid out as `STREAMS` streams. A chunk
is labelled speech when its centre lies between the first and the last sample of its utterance
that reach 2% of the utterance's peak. The measure is the share of chunks the detector labels
right at a threshold of 0.5 (a classifier's accuracy, in points, as on MNIST), and beside it the
share of the original's decisions the rebuilt model changes (which bounds the points it can
lose, where the net drop is noisy) and its mean change of probability.

**What runs.** As `vaecompress compress vad.safetensors` runs it: a bare weights file, the
architecture unknown (the weights alone weigh the tensors): the default (no settings), and the
default codec's `snr` swept. As a Python user who has the network runs it
(`CodecContext(probe=...)`): the same, its tensors weighed by the detector run on noise audio
(`noise_probe`, the counterpart of the noise images an MNIST classifier is probed with). Then
NNCodec at every qp step from -44 to -10 and at its own default
(-38); int8 per channel; HQQ at 3, 4 and 8 bits; ZipNN and zstd (lossless). Results:
`OUT/heldout_vad.json` (with the run's environment, the espeak-ng version and the weights'
sha256) and `OUT/heldout_vad.md` drawn from it.

**`--max-drop`.** Then what a user with some data of their own gets: `compress_within` (what
`--max-drop` runs) for the default (on the bare file and with the architecture known) and for
NNCodec, the drop being the share of the original's decisions changed on validation audio
(`VAL_UTTERANCES` other held-out sentences, spoken the same way), each chosen file judged on
the test audio.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import heldout
import numpy as np
import torch
import torch.nn.functional as F
from heldout import best_table, max_drop_table, run_grid, sweep_grid, wheel_member
from torch import nn

from vaecompress.codecs import CodecContext
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.io import load_state_dict
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.probe import Probe
from vaecompress.tasks.validation import Validation
from vaecompress.training.finetune import ModuleLoss

PACKAGE = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_16k.safetensors"
WEIGHTS_SHA256 = "c59271c284ae9c8335d795d60e0bfdb71aaaceec578d9bd9ffc1b8153c319ea1"
HELDOUT_TEXT = (Path(__file__).resolve().parents[1] / "src" / "vaecompress" / "tasks" / "data"
                / "heldout.txt")

RATE = 16_000
CHUNK, CONTEXT = 512, 64
UTTERANCES, STREAMS = 192, 16
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
NOISE_DB = (None, 20.0, 10.0, 5.0)  # speech over noise; None: clean
FLOOR = 1e-4  # the background's amplitude where nobody speaks (not digital silence)
ONSET = 0.02  # a sample reaching this share of its utterance's peak is inside the utterance

SNRS = (40.0, 36.0, 33.0, 30.0, 27.0, 24.0, 21.0, 18.0, 15.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0)
NNCODEC_QPS = tuple(range(-44, -9))
NNCODEC_DEFAULT_QP = -38
PROBE_BATCHES, PROBE_STREAMS = 8, 4
# `--max-drop`: the most of the original's decisions (per cent) a file may change on the
# validation audio, `VAL_UTTERANCES` other sentences spoken the same way
MAX_DROPS = (0.1, 0.5, 1.0)
VAL_UTTERANCES = 64


class VoiceDetector(nn.Module):
    """Silero VAD v5/v6 at 16 kHz (module docstring); the state_dict names are the
    safetensors file's."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """[streams, samples] (a multiple of CHUNK) -> speech probability per chunk. Each chunk
        with its context is framed at once (the convolutions see one chunk at a time); only the
        LSTM cell runs chunk after chunk."""
        streams, n = wav.shape[0], wav.shape[1] // CHUNK
        x = F.pad(wav, (CONTEXT, 0)).unfold(1, CHUNK + CONTEXT, CHUNK)[:, :n]
        x = F.pad(x.reshape(streams * n, 1, -1), (0, CONTEXT), mode="reflect")
        x = self.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        feats = x.squeeze(-1).reshape(streams, n, -1)
        state = None
        out = []
        for t in range(n):
            state = self.lstm_cell(feats[:, t], state)
            out.append(torch.sigmoid(self.final_conv(F.relu(state[0]).unsqueeze(-1)))
                       .squeeze(1).mean(dim=1))
        return torch.stack(out, dim=1)


def fetch_weights() -> dict[str, torch.Tensor]:
    """The detector's weights: from the cache, else from the package's wheel (sha256 checked)."""
    return load_state_dict(wheel_member(PACKAGE, MEMBER, WEIGHTS_SHA256,
                                        "silero_vad_16k.safetensors"))


def _speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's waveform of `text`, float32 at RATE (linear interpolation from its 22,050
    Hz)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                          "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
    t = np.arange(int(len(x) * RATE / rate)) / RATE
    return np.interp(t, np.arange(len(x)) / rate, x)


def test_audio(seed: int, utterances: int = UTTERANCES, exclude: frozenset[int] = frozenset()
               ) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """(waveforms [STREAMS, samples], speech labels [STREAMS, chunks], what was made: its
    `lines` are the sentences spoken, by their index in the text). `exclude`: sentences not
    to speak (the validation audio of `--max-drop` leaves out the test audio's)."""
    rng = np.random.default_rng(seed)
    lines = [s.strip() for s in HELDOUT_TEXT.read_text(encoding="utf-8").splitlines()
             if s.strip() and not s.startswith("#")]
    if exclude:
        chosen = rng.choice(np.array([i for i in range(len(lines)) if i not in exclude]),
                            size=utterances, replace=False)
    else:
        chosen = rng.choice(len(lines), size=utterances, replace=False)
    streams: list[list[np.ndarray]] = [[] for _ in range(STREAMS)]
    spans: list[list[tuple[int, int]]] = [[] for _ in range(STREAMS)]
    lengths = [0] * STREAMS
    for i, k in enumerate(chosen):
        s = i % STREAMS
        speech = _speak(lines[int(k)], VOICES[i % len(VOICES)], int(rng.integers(140, 191)),
                        int(rng.integers(30, 71)))
        loud = np.flatnonzero(np.abs(speech) >= ONSET * np.abs(speech).max())
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * RATE))
        seg = np.concatenate([gap, speech])
        noise_db = NOISE_DB[i % len(NOISE_DB)]
        if noise_db is not None:
            rms = float(np.sqrt(np.mean(speech[loud[0] : loud[-1] + 1] ** 2)))
            seg = seg + rng.normal(0.0, rms * 10 ** (-noise_db / 20), seg.size)
        spans[s].append((lengths[s] + gap.size + int(loud[0]), lengths[s] + gap.size
                         + int(loud[-1])))
        streams[s].append(seg)
        lengths[s] += seg.size
    total = -(-(max(lengths) + RATE // 2) // CHUNK) * CHUNK  # half a second after the last
    wav = np.zeros((STREAMS, total))
    labels = np.zeros((STREAMS, total // CHUNK), dtype=bool)
    centres = np.arange(total // CHUNK) * CHUNK + CHUNK // 2
    for s in range(STREAMS):
        x = np.concatenate(streams[s])
        wav[s, : x.size] = x
        for a, b in spans[s]:
            labels[s] |= (centres >= a) & (centres <= b)
    wav += rng.normal(0.0, FLOOR, wav.shape)
    made = {"utterances": utterances, "streams": STREAMS, "seconds": STREAMS * total / RATE,
            "lines": sorted(int(k) for k in chosen),
            "chunks": int(labels.size), "speech_share": float(labels.mean()),
            "espeak_ng": subprocess.run(["espeak-ng", "--version"], check=True,
                                        capture_output=True, text=True).stdout.strip()}
    return torch.from_numpy(wav.astype(np.float32)), labels, made


def _measure(net: VoiceDetector, state: dict[str, torch.Tensor], wav: torch.Tensor
             ) -> np.ndarray:
    net.load_state_dict(state)
    with torch.no_grad():
        return net(wav).numpy()


def noise_probe(seed: int) -> Probe:
    """The detector run on synthetic audio, as `vaecompress` weighs a known architecture's
    tensors without data (`tasks.probe`; noise images for an MNIST classifier): white noise
    whose level is drawn per stream over six nepers (about -52 to 0 dB), `PROBE_BATCHES` batches
    of `PROBE_STREAMS` streams of two seconds. Its outputs are the logits of the two classes
    (not speech: 0, speech: logit p)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(PROBE_BATCHES, PROBE_STREAMS, 2 * RATE // CHUNK * CHUNK, generator=gen)
    x *= torch.exp(torch.empty(PROBE_BATCHES, PROBE_STREAMS, 1).uniform_(-6.0, 0.0,
                                                                          generator=gen))

    def logits(p: torch.Tensor, _target: Any) -> torch.Tensor:
        p = p.reshape(-1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(p), torch.log(p) - torch.log1p(-p)], dim=1)

    run = ModuleLoss(VoiceDetector(), logits)
    return Probe(lambda state, i: run(state, (x[i], None)), PROBE_BATCHES, "logits")


def _fidelity(p: np.ndarray, p0: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Chunk accuracy, its drop, and the decisions changed: a change of decision is the only
    way to lose (or gain) a point, so `changed` bounds `|drop|`, while `drop` nets the chunks
    made wrong against those made right. `drop_se`: the drop's standard error were the changes
    independent coin flips (sqrt(changes) / chunks); neighbouring chunks change together at a
    moved boundary, so it is a lower bound."""
    said, said0 = p >= 0.5, p0 >= 0.5
    flips = int((said != said0).sum())
    return {"accuracy": 100.0 * float((said == labels).mean()),
            "drop": 100.0 * float((said0 == labels).mean() - (said == labels).mean()),
            "kept": 100.0 * (1.0 - flips / said.size), "changed": 100.0 * flips / said.size,
            "drop_se": 100.0 * float(np.sqrt(flips)) / said.size,
            "mean_abs_change": float(np.abs(p - p0).mean())}


def _judge(wav: torch.Tensor, labels: np.ndarray, p0: np.ndarray
           ) -> Callable[[dict[str, torch.Tensor]], dict[str, float]]:
    net = VoiceDetector().eval()
    return lambda state: _fidelity(_measure(net, state, wav), p0, labels)


def run_codecs(state: dict[str, torch.Tensor], wav: torch.Tensor, labels: np.ndarray,
               p0: np.ndarray, probe: Probe) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return run_grid(state, sweep_grid(SNRS, NNCODEC_QPS), _judge(wav, labels, p0),
                    CodecContext(progress=False, probe=probe))


def decisions_kept(wav: torch.Tensor, p0: np.ndarray) -> Validation:
    """`--max-drop`'s judge: the share (per cent) of the original's speech / non-speech
    decisions on `wav` a state of the detector keeps; its drop is the share it changes."""
    net = VoiceDetector().eval()
    said0 = p0 >= 0.5

    def score(state: Mapping[str, torch.Tensor]) -> float:
        return 100.0 * float(((_measure(net, dict(state), wav) >= 0.5) == said0).mean())

    return Validation(score, "points", f"the decisions on {VAL_UTTERANCES} other sentences' "
                      "audio")


def run_max_drop(state: dict[str, torch.Tensor], wav: torch.Tensor, labels: np.ndarray,
                 p0: np.ndarray, val: Validation, probe: Probe) -> list[dict[str, Any]]:
    """`compress_within` (what `--max-drop` runs) for the default, on the bare file and with
    the architecture known, and for NNCodec, each file judged on the test audio."""
    return heldout.run_max_drop(
        state, val, _judge(wav, labels, p0),
        (("default", None, CodecContext(progress=False)),
         ("default, architecture known", None, CodecContext(progress=False, probe=probe)),
         ("nncodec", "nncodec", CodecContext(progress=False))), MAX_DROPS)


def render(res: dict[str, Any]) -> str:
    env, audio = res["environment"], res["audio"]
    rows = res["rows"]
    lines = ["# The default on a held-out real model: Silero VAD (16 kHz)", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}; "
             f"{res['run_s']:.0f} s. Made by `benchmarks/heldout_vad.py`. Weights: "
             f"`{MEMBER}` of `{PACKAGE}` (sha256 `{res['weights_sha256'][:16]}...`), "
             f"{res['params']:,} parameters, {res['float_bytes']:,} B. Test audio: "
             f"{audio['utterances']} held-out Austen sentences spoken by "
             f"{audio['espeak_ng'].split('  Data at')[0]}, "
             f"{audio['seconds']:.0f} s in {audio['chunks']:,} chunks of 512 samples "
             f"({100 * audio['speech_share']:.0f}% speech); original chunk accuracy "
             f"{res['accuracy_orig']:.2f}%. Drop: points of chunk accuracy lost; changed: the "
             "share of the original's speech / non-speech decisions the rebuilt model "
             "changes.", "",
             "## Best honest ratio with at most 0.1 / 0.5 / 1% of the decisions changed",
             "", "A changed decision is the only way to lose a point, so these files lose at "
             "most 0.1 / 0.5 / 1 point of chunk accuracy whatever the test's noise.", "",
             *best_table(rows, "changed"), "",
             "## Best honest ratio within 0.1 / 0.5 / 1 point of net accuracy drop", "",
             "The measure of the MNIST tables. Here it is noisy: a moved boundary makes some "
             "chunks wrong and others right, and the net drop is not monotone in the "
             "fidelity (the standard error of each point is in the last table), so a coarse "
             "point can pass by luck where finer ones fail.", "",
             *best_table(rows, "drop")]
    nn_default = next((r for r in rows if r["method"] == "nncodec"
                       and r["settings"] == f"qp={NNCODEC_DEFAULT_QP}"), None)
    lines += ["", "## The default", ""]
    for method, how in (("default", "`vaecompress compress` with no settings, a bare file"),
                        ("default, architecture known", "the same with the architecture "
                         "known (its tensors weighed on noise audio, `noise_probe`)")):
        d = next(r for r in rows if r["method"] == method)
        lines.append(f"- {how} ({d['codec']}): {d['ratio_honest']:.2f}x "
                     f"({d['file_bytes']:,} B), drop {d['drop']:+.2f} +- {d['drop_se']:.2f} "
                     f"points, {d['changed']:.2f}% of the original's decisions changed, mean "
                     f"change of probability {d['mean_abs_change']:.4f}, weights SNR "
                     f"{d['weights_snr_db']:.1f} dB, {d['compress_s']:.1f} s.")
    if nn_default is not None:
        lines.append(f"- NNCodec at its default qp {NNCODEC_DEFAULT_QP}: "
                     f"{nn_default['ratio_honest']:.2f}x, drop {nn_default['drop']:+.2f}, "
                     f"{nn_default['changed']:.2f}% changed.")
    if res.get("max_drop"):
        lines += ["", "## `--max-drop D`: chosen on validation audio, judged on the test audio",
                  "", f"`vaecompress.compress_within` (what `--max-drop` runs) with the share "
                  f"of the original's decisions changed on {VAL_UTTERANCES} other held-out "
                  "sentences, spoken the same way, as the drop (`decisions_kept`); each file "
                  "then judged on the test audio above.", "",
                  *max_drop_table(res["max_drop"], "test audio")]
    for codec, hint in res["skipped"].items():
        lines.append(f"Not installed, skipped: {codec} ({hint}).")
    lines += ["", "## Every point", "",
              "| method | settings | ratio_honest | file B | drop (+- se) | decisions changed | "
              "mean abs change | weights SNR dB | compress_s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        snr = "-" if r["weights_snr_db"] is None else f"{r['weights_snr_db']:.1f}"
        lines.append(f"| {r['method']} | {r['settings'] or '-'} | {r['ratio_honest']:.2f}x | "
                     f"{r['file_bytes']:,} | {r['drop']:+.2f} (+- {r['drop_se']:.2f}) | "
                     f"{r['changed']:.2f}% | "
                     f"{r['mean_abs_change']:.4f} | {snr} | {r['compress_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/heldout-vad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", action="store_true", help="only redraw OUT/heldout_vad.md from "
                   "its JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.render and shutil.which("espeak-ng") is None:
        print("heldout_vad: needs espeak-ng to speak its test audio (Debian: apt-get install "
              "espeak-ng)", file=sys.stderr)
        return 2
    if args.render:
        atomic_write_text(out / "heldout_vad.md",
                          render(json.loads((out / "heldout_vad.json").read_text())))
        return 0
    auto_threads()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    state = fetch_weights()
    wav, labels, audio = test_audio(args.seed)
    net = VoiceDetector().eval()
    p0 = _measure(net, state, wav)
    acc0 = 100.0 * float(((p0 >= 0.5) == labels).mean())
    print(f"original: {acc0:.2f}% of {labels.size:,} chunks", flush=True)
    probe = noise_probe(args.seed)
    rows, skipped = run_codecs(state, wav, labels, p0, probe)
    val_wav, _, val_audio = test_audio(args.seed + 1, VAL_UTTERANCES,
                                       exclude=frozenset(audio["lines"]))
    val = decisions_kept(val_wav, _measure(net, state, val_wav))
    max_drop = run_max_drop(state, wav, labels, p0, val, probe)
    results = {"environment": environment(torch.device("cpu"), args.seed),
               "weights_sha256": WEIGHTS_SHA256, "package": PACKAGE,
               **heldout.weights_size(state),
               "audio": audio, "validation_audio": val_audio, "accuracy_orig": acc0,
               "rows": rows, "max_drop": max_drop, "skipped": skipped,
               "run_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "heldout_vad.json", results)
    atomic_write_text(out / "heldout_vad.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
