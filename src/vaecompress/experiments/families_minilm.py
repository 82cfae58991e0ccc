"""MiniLM's families, measured: the checkpoints of a fine-tune of all-MiniLM-L6-v2 on text of
another domain, and fine-tunes of it, coded against the model the receiver already has (issue
20; docs/families.md). The zoo's families are `experiments.families`; this is the same
measurement (`families.measure_members`) on a real transformer.

    python -m vaecompress.experiments.families_minilm --out results/families-minilm

The family is made here, reproducibly, with no download (the `minilm` extra's packaged model):

- a **fine-tune run**: the packaged model trained `steps` steps of AdamW on the training
  sentences (`tasks/data/train.txt`, docstrings of Python's standard library: technical text,
  not the web text MiniLM was trained on) with an unsupervised contrastive loss (two random
  spans of each sentence, a share `crop` of its words each, as a positive pair, the other
  sentences of the batch as negatives, temperature `temperature`: the in-batch InfoNCE of
  Contriever's random cropping), its weights kept every `every` steps: the **checkpoints**
  family;
- **fine-tunes**: the last checkpoint of that run and of a second run at another learning rate
  and seed, each a model a hub would hold beside its base.

Each member is scored by the mean cosine between its embeddings and the rebuilt model's on the
held-out sentences (`tasks/data/heldout.txt`, Jane Austen's prose, which neither the fine-tunes
nor any codec default saw); a coding passes when every member keeps a mean cosine of at least
`1 - tolerance` (0.999) to the member it replaces. Members are coded alone, against the base
(the packaged model, which every MiniLM user has: `api.compress(base=...)`), and the checkpoints
as one series file against the base (`family.series`), by the data-free codecs: `vae-rd-free`
(alone at a sweep of weights SNRs; against a base at two weights SNRs, at a sweep of the
change's own SNR, and at its defaults), int8, zstd (lossless; the XOR delta against a base) and
bitdelta, the fine-tunes by bitdelta also as BitDelta does it, its scales refined by
distillation (each member the teacher of the base plus its coded delta, on the training
sentences it was fine-tuned on, for `bitdelta_epochs`). The
task-aware `vae-rd` is not run here: one MiniLM compression by it takes about 8 minutes on the
2-core machine (`results/minilm`), so a family's sweep would take hours.
Results: `families.json` (with the run's environment and git revision) and `families.md`
(drawn by `experiments.families.render`); records under `records/` make a run resume.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vaecompress.errors import UserError
from vaecompress.experiments.common import RecordStore
from vaecompress.experiments.families import (
    free_points,
    measure_members,
    render,
    requested,
    write_report,
)
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.io import StateDict
from vaecompress.runinfo import auto_threads, environment, resolve_device
from vaecompress.training.finetune import Finetuner

METRIC: dict[str, Any] = {"key": "cos_mean", "name": "mean cosine on the held-out text",
                          "digits": 5, "unit": "", "lost": "",
                          "command": "python -m vaecompress.experiments.families_minilm"}


@dataclass(frozen=True)
class MiniLMFamiliesConfig:
    model: str = "all-MiniLM-L6-v2"
    steps: int = 120  # each fine-tune run's optimizer steps
    every: int = 20  # a checkpoint every this many steps
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-5, 3e-5)  # one fine-tune run each; the first gives the checkpoints
    crop: tuple[float, float] = (0.3, 0.6)  # each view: a span of this share of the words
    temperature: float = 0.05
    # vae-rd-free: coded alone, and as a change from the base or from the checkpoint before,
    # where the weights' SNR must be far finer: a fine-tune's change is smaller than the error
    # the weights take at 30 dB, and coded as zeros the members are rebuilt as the base
    snrs_alone: tuple[float, ...] = (16.0, 20.0, 24.0, 27.0, 30.0)
    # The weights' target alone (`change_snr` 0) at the two SNRs from which the fine-tunes and
    # the checkpoints passed when it was swept from 16 to 60 dB (at 8930f0b; git show
    # 8930f0b:results/families-minilm/families.md), and the change's own SNR swept, the
    # weights' target out of the way (`families.CHANGE_SWEEP_SNR`): each point is 8 MiniLM
    # codings, about 5 minutes here.
    snrs_delta: tuple[float, ...] = (39.0, 45.0)
    change_snrs: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
    # bitdelta's scales refined as BitDelta refines them, by distilling each fine-tune into the
    # base plus its coded delta: 3 passes over the training sentences (180 steps of 32, where
    # BitDelta takes 200), at these learning rates of each scale's factor
    bitdelta_epochs: float = 3.0
    bitdelta_lrs: tuple[float, ...] = (1e-3, 1e-2)
    tolerance: float = 0.001  # of the mean cosine to the member it replaces
    seed: int = 0


# ------------------------------------------------------------------ the family, made here


def _crop(sentence: str, share: tuple[float, float], rng: random.Random) -> str:
    """A random contiguous span of `sentence`'s words, of a share of them drawn uniformly in
    `share` (at least one word)."""
    words = sentence.split()
    n = max(1, round(len(words) * rng.uniform(*share)))
    start = rng.randrange(len(words) - n + 1) if len(words) > n else 0
    return " ".join(words[start:start + n]) or sentence


def fine_tune_run(task: Any, base: StateDict, cfg: MiniLMFamiliesConfig, lr: float, seed: int,
                  progress: bool) -> list[dict[str, Any]]:
    """The checkpoints (every `cfg.every` steps) of one contrastive fine-tune of `base` on the
    training sentences (module docstring). Deterministic for a seed on one machine."""
    sents = task.train_sentences
    rng = random.Random(f"families-minilm-{seed}")
    params = {k: v.detach().clone().float().requires_grad_(True)
              for k, v in base.items() if v.is_floating_point()}
    frozen = {k: v for k, v in base.items() if not v.is_floating_point()}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    kept: list[dict[str, Any]] = []
    order: list[int] = []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:
            order = list(range(len(sents)))
            rng.shuffle(order)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        a = task.batch([_crop(sents[i], cfg.crop, rng) for i in idx], idx)
        b = task.batch([_crop(sents[i], cfg.crop, rng) for i in idx], idx)
        state = {**frozen, **params}
        za, zb = task.forward(state, a), task.forward(state, b)
        logits = za @ zb.T / cfg.temperature
        labels = torch.arange(len(idx), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.every == 0:
            kept.append({"label": f"lr{lr:g}-step-{step}",
                         "state": {k: v.detach().clone() for k, v in
                                   {**frozen, **params}.items()}})
            if progress:
                print(f"fine-tune lr {lr:g}: step {step}/{cfg.steps}, loss {loss.item():.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    # in the base's order of names and its dtypes (trained in float32)
    for m in kept:
        m["state"] = {k: m["state"][k].to(base[k].dtype) for k in base}
    return kept


# ------------------------------------------------------------------ the command


def member_distiller(member: dict[str, Any], device: torch.device, seed: int,
                     n_train: int | None = None) -> Finetuner:
    """BitDelta's distillation of a member: the member the teacher, on the training sentences
    (its own fine-tuning text; the first `n_train`); the student, whatever state the codec
    trains (against a base, `api.compress(base=)` shifts the loss to the base plus the coded
    delta). Its fidelity sets are cut to one batch: only the teacher is used."""
    from vaecompress.tasks.sentence import SentenceTask

    return SentenceTask(device, n_eval=32, n_train=n_train, reference=member["state"],
                        source=f"member {member['label']}").distiller(seed=seed)


def run(cfg: MiniLMFamiliesConfig, out: Path, *, device: torch.device, progress: bool,
        families: Sequence[str]) -> dict[str, Any]:
    from vaecompress.tasks.sentence import SentenceTask
    from vaecompress.zoo import minilm

    hint = minilm.missing()
    if hint is not None:
        raise UserError(hint)
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "records")
    t0 = time.perf_counter()
    base = minilm.load_state()
    task = SentenceTask(device, eval_set="heldout")
    heldout = task.fidelity_set("heldout")
    references: dict[str, torch.Tensor] = {}

    def score(member: dict[str, Any], state: StateDict) -> float:
        """The mean cosine of `state`'s held-out embeddings to the member's."""
        if member["label"] not in references:
            references[member["label"]] = task.embed(member["state"], heldout.batches)
        emb = task.embed(state, heldout.batches)
        return float((emb * references[member["label"]]).sum(1).clamp(-1, 1).mean())

    def distil(member: dict[str, Any]) -> Finetuner:
        return member_distiller(member, device, cfg.seed)

    runs = [fine_tune_run(task, base, cfg, lr, cfg.seed + i, progress)
            for i, lr in enumerate(cfg.lrs)]

    free = free_points

    alone = [("alone", c, s) for c, s in [("int8", {}), *free(cfg.snrs_alone)]]
    ways = {
        "checkpoints": alone + [("series", c, s) for c, s in
                                [("zstd", {}), ("int8", {}),
                                 *free(cfg.snrs_delta, True, cfg.change_snrs)]],
        "fine-tunes": alone + [("base", c, s) for c, s in
                               [("zstd", {}), ("int8", {}), ("bitdelta", {}),
                                *[("bitdelta", {"finetune_epochs": cfg.bitdelta_epochs, "lr": lr})
                                  for lr in cfg.bitdelta_lrs],
                                *free(cfg.snrs_delta, True, cfg.change_snrs)]],
    }
    members = {"checkpoints": runs[0], "fine-tunes": [r[-1] for r in runs]}
    made_by = {k: v for k, v in asdict(cfg).items()
               if k != "tolerance" and not k.startswith(("snrs", "change_", "bitdelta_"))}
    results: dict[str, Any] = {"environment": environment(device, cfg.seed),
                               "config": asdict(cfg), "metric": METRIC, "families": {}}
    for family in families:
        results["families"][family] = measure_members(
            family, members[family], base, ways[family], store,
            made_by={**made_by, "family": family}, score=score, task=distil,
            tolerance=cfg.tolerance, device=device, seed=cfg.seed, progress=progress,
            score_key=METRIC["key"])
    results["run_s"] = time.perf_counter() - t0
    atomic_write_json(out / "families.json", results)
    atomic_write_text(out / "families.md", render(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vaecompress.experiments.families_minilm",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/families-minilm", help="results folder")
    p.add_argument("--families", default="checkpoints,fine-tunes",
                   help="comma-separated: checkpoints, fine-tunes")
    p.add_argument("--steps", type=int, default=MiniLMFamiliesConfig.steps,
                   help="optimizer steps of each fine-tune run")
    p.add_argument("--every", type=int, default=MiniLMFamiliesConfig.every,
                   help="a checkpoint every this many steps")
    p.add_argument("--seed", type=int, default=0)
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
        if args.steps < 1 or not 1 <= args.every <= args.steps:
            raise UserError("--steps must be >= 1 and --every between 1 and --steps")
        auto_threads()
        cfg = replace(MiniLMFamiliesConfig(), steps=args.steps, every=args.every,
                      seed=args.seed)
        res = run(cfg, out, device=resolve_device(args.device), progress=not args.quiet,
                  families=families)
    except UserError as e:
        print(f"families_minilm: error: {e}", file=sys.stderr)
        return 2
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
