"""all-MiniLM-L6-v2 as a bench task: one 22.7M-parameter model, judged by its sentence embeddings.

    vaecompress bench --preset minilm --out results/minilm
    vaecompress bench --preset minilm-datafree --out results/minilm-datafree

The model is compressed as its safetensors file stores it (the int64 `position_ids` included).
Fidelity (`tasks.sentence`) is measured on two sets: the fidelity set (`cos_mean`, `cos_min`,
`nn_same` over 1,039 sentences of the Python documentation) and the held-out set (the same
fields prefixed `heldout_`, 1,000 sentences of Jane Austen, text of another kind than any codec
or default was tuned on). Methods that use data distil the original model's embeddings on 2,048
other sentences (`SentenceTask.finetuner`); the data-free ones weigh tensors by the model run
on random tokens (`SentenceTask.probe`). The report is `experiments.minilm_report`.

`GRID` (`--preset minilm`, issue 19) holds every method at a budget stated beside its points;
every method that distils spends `DISTILL_STEPS` steps. `DATAFREE` (`--preset
minilm-datafree`, issue 18) sweeps the methods that need the weights alone. Points were sized
on a shared 2-core CPU with one torch thread: a distillation step (32 sentences, forward and
backward) takes 2-3 s there, a data-free point one to two minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vaecompress.errors import UserError
from vaecompress.experiments.bench import Point, Subject
from vaecompress.io import StateDict
from vaecompress.tasks.probe import Probe
from vaecompress.training.finetune import Finetuner
from vaecompress.zoo import minilm

if TYPE_CHECKING:
    from vaecompress.tasks.sentence import SentenceTask

MODEL = minilm.NAME
# The key every MiniLM record is stored under names the model by its parameter count.
MODEL_KEY = f"{MODEL}-{minilm.PARAMS}"
FIDELITY = ("cos_mean", "cos_min", "nn_same", "n_sentences")

# The distillation budget of every method that uses data, in steps of 32 sentences: three
# passes over the 1,920 training sentences the finetuner trains on (128 of the 2,048 are kept
# for early stopping). One step costs 2-3 s here: with the warm start and the two fidelity
# sets, a vae-rd point stays within issue 19's 15 minutes.
STEPS_PER_EPOCH = (2048 - 128) // 32  # SentenceTask.finetuner(): len(train) // TRAIN_BATCH
DISTILL_STEPS = 180
DISTILL_EPOCHS = DISTILL_STEPS / STEPS_PER_EPOCH

# vae-rd's operating points on MiniLM: warm-started from the closed form at these SNRs, points
# of the data-free sweep (the same SNRs there) around mean cosine 0.99 (10, 12 and 14 dB), short
# of 0.999 (22 dB) and of 97% of the neighbours kept (26 dB), two between (18 and 20 dB), and
# two past 26 dB (28 and 30), where the held-out text's 97% is crossed (the data-free codec
# crosses it at 28 dB), so each pair shows what distillation adds (docs/vae-rd.md) and the
# curve is dense where each of the fidelity levels is crossed, on both sentence sets.
# The grid adds the distillation budget to each, as long as prune's and Deep Compression's.
VAE_RD_POINTS: list[Point] = [{"snr": s} for s in (10.0, 12.0, 14.0, 18.0, 20.0, 22.0, 26.0,
                                                   28.0, 30.0)]

# `--preset minilm-datafree` (issue 18): every method that needs the weights alone, swept far
# enough to pass every fidelity level, the default first. NNCodec every third qp step (its step
# grows by 2^(3/4) per three) from where it passes the strictest level on both sentence sets,
# HQQ at 3, 4 and 8 bits.
DATAFREE: dict[str, list[Point]] = {
    # The default's weighting (the model run on random tokens, SentenceTask.probe) and the
    # weights alone, as for a bare file given to `vaecompress compress`.
    "vae-rd-free": [*({"snr": float(s), "weighting": "auto"} for s in (10, 12, 14, 18, 20, 22, 25,
                                                                        26, 28, 30, 33, 36)),
                    *({"snr": float(s), "weighting": "relative"} for s in (30, 35, 40, 45))],
    "nncodec": [{"qp": q} for q in range(-44, -19, 3)],
    "zstd": [{}],
    "zipnn": [{}],
    "int8": [{"granularity": g, "entropy": True} for g in ("tensor", "channel")],
    "int4": [{"granularity": "channel", "entropy": True}],
    "kmeans": [{"bits": b, "entropy": True} for b in (4, 6)],
    "hqq": [*({"bits": b, "group_size": 64} for b in (3, 4, 8)), {"bits": 4, "group_size": 128}],
}

# `--preset minilm` (issue 19): every method, those that distil at `DISTILL_STEPS`.
GRID: dict[str, list[Point]] = {
    "vae-rd": [{**p, "epochs": DISTILL_EPOCHS} for p in VAE_RD_POINTS],
    "vae-rd-free": DATAFREE["vae-rd-free"],
    "nncodec": [{"qp": q} for q in range(-40, -19)],  # every qp step
    "zstd": DATAFREE["zstd"],
    "zipnn": DATAFREE["zipnn"],
    # Per channel, the level indices entropy-coded. The quantizer has no per-group form: per
    # group is HQQ's min-max round-to-nearest (optimize=False) below.
    "int8": [{"granularity": "channel", "entropy": True}],
    "int4": [{"granularity": "channel", "entropy": True}],
    # HQQ as in the data-free sweep, then int8 and int4 per group of 64 and 128 consecutive
    # weights without HQQ's solver (plain min-max rounding, float16 step and zero per group).
    "hqq": [*DATAFREE["hqq"],
            *({"bits": b, "group_size": g, "optimize": False} for b in (4, 8) for g in (64, 128))],
    "kmeans": DATAFREE["kmeans"],
    "prune": [{"sparsity": 0.5, "finetune_epochs": DISTILL_EPOCHS}],
    # Three quarters of the budget for the pruning's retraining, one for the centroids'.
    "deep-compression": [{"sparsity": 0.5, "prune_stages": 1,
                          "prune_epochs": 0.75 * DISTILL_EPOCHS,
                          "quant_epochs": 0.25 * DISTILL_EPOCHS}],
    # The paper's VAE at a budget this machine can pay: 10 noisy variants instead of 100 and 4
    # epochs at batch 512 instead of up to 500 (the file's size does not depend on them; no
    # budget makes a 1.1M-weight decoder hold 22.7M values, docs/minilm.md).
    "vae-paper": [{"latent": 64, "n_variants": 10, "epochs": 4, "patience": 4,
                   "batch_size": 512, "lr": 1e-3}],
}
# `--preset minilm-ablation` (issue 19): vae-rd's warm start at 18 dB with one ingredient
# changed at a time, against the same point in `GRID` and the closed form it starts from
# (vae-rd-free at 18 dB, in `DATAFREE`): the warm start rounded to nearest instead of with error
# feedback (`methods.rd.feedback`), no rate term (slope 0: distillation alone), the rate on
# every latent (rate_sample 1: the cost of the sample), no warm start (the first step
# std / 16, lam in units of the task loss as in the old MiniLM bench, docs/minilm.md), and
# one distillation step instead of `DISTILL_STEPS`.
ABLATION_SNR = 18.0
ABLATION: dict[str, list[Point]] = {
    "vae-rd": [{"snr": ABLATION_SNR, "epochs": DISTILL_EPOCHS, **v}
               for v in ({"rounding": "nearest"}, {"slope": 0.0}, {"rate_sample": 1.0})]
    + [{"epochs": DISTILL_EPOCHS, "lam": 0.01, "init_bins": 16.0},
       # the warm start's rounding with feedback and a single distillation step (the early
       # stop keeps the better of the two): what the rounding buys without the distillation
       {"snr": ABLATION_SNR, "epochs": 1 / STEPS_PER_EPOCH}],
}
PRESETS = {"minilm": GRID, "datafree": DATAFREE, "ablation": ABLATION}


class MiniLMBench:
    """The bench task of all-MiniLM-L6-v2 at one of `PRESETS`. The sentence task (the model,
    the tokenizer, the original embeddings) is built on first use, so a run whose records are
    all stored builds none; `sentences` gives one already built (the tests' small sets)."""

    name = "minilm"
    fidelity_fields = (*FIDELITY, *(f"heldout_{f}" for f in FIDELITY))

    def __init__(self, preset: str = "minilm", *, seed: int = 0,
                 device: torch.device | str = "cpu", progress: bool = True,
                 sentences: SentenceTask | None = None) -> None:
        if preset not in PRESETS:
            raise ValueError(f"MiniLM bench preset must be one of {tuple(PRESETS)}, "
                             f"not {preset!r}")
        self.preset = preset
        self.points = PRESETS[preset]
        self.seed = seed
        self.device = torch.device(device)
        self.progress = progress
        self._sentences = sentences
        self._finetuner: Finetuner | None = None
        self._probe: Probe | None = None

    @property
    def sentences(self) -> SentenceTask:
        if self._sentences is None:
            from vaecompress.tasks.sentence import SentenceTask

            self._sentences = SentenceTask(self.device)
        return self._sentences

    def select_models(self, names: list[str] | None) -> tuple[str, ...]:
        if names is not None:
            raise UserError("--models names zoo models; the MiniLM presets bench one model, "
                            "all-MiniLM-L6-v2: leave it out")
        return (MODEL,)

    def default_codecs(self) -> tuple[str, ...]:
        return tuple(self.points)

    def grid(self, codec: str) -> list[Point]:
        return [dict(p) for p in self.points.get(codec, [])]

    def subject(self, name: str, checkpoints: Path) -> Subject:
        hint = minilm.missing()
        if hint is not None:
            raise UserError(hint)
        return Subject(MODEL, MODEL_KEY, minilm.load_state())

    def finetuner(self, name: str) -> Finetuner:
        if self._finetuner is None:
            self._finetuner = self.sentences.finetuner(self.seed)
        return self._finetuner

    def probe(self, name: str) -> Probe:
        if self._probe is None:
            self._probe = self.sentences.probe(seed=self.seed)
        return self._probe

    def fidelity(self, name: str, rebuilt: StateDict) -> dict[str, Any]:
        fid = self.sentences.fidelity(rebuilt, eval_set="eval")
        held = self.sentences.fidelity(rebuilt, eval_set="heldout")
        return {**fid, **{f"heldout_{k}": v for k, v in held.items()}}

    def config(self) -> dict[str, Any]:
        budget = {"distill_steps": DISTILL_STEPS} if self.preset == "minilm" else {}
        return {"params": minilm.PARAMS, **budget, "eval_sentences": "tasks/data/eval.txt",
                "heldout_sentences": "tasks/data/heldout.txt",
                "train_sentences": "tasks/data/train.txt"}

    def report(self, results: dict[str, Any], out: Path) -> str:
        from vaecompress.experiments.minilm_report import write_report

        return write_report(results, out)
