"""What the task-aware codec's distillation on MiniLM is limited by, and what two wider losses buy
(issue 19): the vocabulary the training sentences cover.

    PYTHONPATH=src .venv/bin/python benchmarks/distill_coverage.py --out results/distill-coverage

`vae-rd` on MiniLM distils the original model into the rebuilt one on 1,920 sentences of the
standard library's docstrings (`SentenceTask.finetuner`, the bench's task). Its minutes of
distillation buy about 3.5 dB on text like its own and about 1 dB on Jane Austen's
(docs/minilm.md). A gradient reaches a row of the word embeddings (half the model's weights)
only where its token occurs in a batch, so the first thing measured here is how much of each
fidelity set's text the training sentences reach: the share of its tokens (and of its distinct
tokens) that occur in them. Then `vae-rd` runs as the bench runs it (warm-started at an SNR,
`DISTILL_STEPS` steps of 32 sentences, early stopping on the 128 kept apart), each point with
one loss:

- `pooled`: the bench's own loss, `1 - cos` of the sentence embeddings;
- `tokens`: the same plus `1 - cos` of every token's last hidden state (as TinyBERT and
  TernaryBERT match the layers' states): more signal per sentence, the same vocabulary;
- `synthetic`: the same plus `1 - cos` of the sentence embeddings of `SYNTHETIC` sequences of
  `SYNTHETIC_LEN` tokens drawn uniformly from the vocabulary at every step (the data-free
  codec's probe's distribution, `SentenceTask.probe`; no sentence of any set): every row of
  the embeddings within reach of a gradient, at the price of the longer step.

Each loss measures the teacher on the batch where it needs it (the token states and the
synthetic sequences at every step). Early stopping reads the validation sentences by
`pooled`'s loss for every variant, so that the three stop by the same measure. Every point
is measured on the fidelity set and on the held-out text (`experiments.bench.measure`: the
file rebuilt from its bytes).

One point a process (`--only VARIANT@SNR`), so that two can run beside each other; each
writes `OUT/records/VARIANT@SNR.json`, and a run without `--only` measures what is missing
and writes `OUT/distill_coverage.json` and `OUT/distill_coverage.md` from the records (each
keeps the revision that measured it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from vaecompress.codecs.base import CodecContext  # noqa: E402
from vaecompress.experiments.bench import Subject, measure  # noqa: E402
from vaecompress.experiments.bench_minilm import (  # noqa: E402
    DISTILL_EPOCHS,
    DISTILL_STEPS,
    MODEL,
    MODEL_KEY,
    MiniLMBench,
)
from vaecompress.files import atomic_write_json, atomic_write_text  # noqa: E402
from vaecompress.runinfo import environment, seed_everything  # noqa: E402
from vaecompress.training.finetune import Finetuner  # noqa: E402

VARIANTS = ("pooled", "tokens", "synthetic")
POINTS = (("pooled", 18.0), ("tokens", 18.0), ("synthetic", 18.0),
          ("pooled", 26.0), ("synthetic", 26.0))
SYNTHETIC = 16  # synthetic sequences a step, beside the 32 training sentences
SYNTHETIC_LEN = 32
COMMAND = "PYTHONPATH=src .venv/bin/python benchmarks/distill_coverage.py --out " \
          "results/distill-coverage"


def coverage(task: Any) -> dict[str, Any]:
    """The share of each fidelity set's tokens (occurrences, and distinct tokens) that occur
    in the training sentences the finetuner distils on ([CLS] and [SEP] left out)."""
    from vaecompress.tasks.sentence import read_sentences

    special = set(task.tokenizer.all_special_ids)

    def ids(name: str) -> list[int]:
        return [i for s in read_sentences(name) for i in task.tokenizer(s)["input_ids"]
                if i not in special]

    seen = set(ids("train"))
    out: dict[str, Any] = {"train_distinct_tokens": len(seen),
                           "vocabulary": task.tokenizer.vocab_size}
    for name in ("eval", "heldout"):
        tokens = ids(name)
        distinct = set(tokens)
        out[name] = {"tokens": len(tokens), "distinct": len(distinct),
                     "tokens_seen": sum(i in seen for i in tokens) / len(tokens),
                     "distinct_seen": len(distinct & seen) / len(distinct)}
    return out


def _hidden(task: Any, state: Mapping[str, torch.Tensor],
            inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The last hidden states [B, L, 384] of the model with `state` (checkpointed when it
    trains, as `SentenceTask.forward`)."""
    tensors = {k: v if v.dtype == task.dtypes.get(k, v.dtype) else v.to(task.dtypes[k])
               for k, v in state.items()}
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        return task._encode_checkpointed(tensors, inputs)
    return functional_call(task.bert, tensors, args=(), kwargs=inputs).last_hidden_state


def finetuner(task: Any, variant: str, seed: int = 0) -> Finetuner:
    """The bench's finetuner (`pooled`), or it with the loss of `variant` added on the
    training steps (module docstring); validation batches are scored by `pooled`."""
    from vaecompress.tasks.sentence import Batch, mean_pool

    base = task.finetuner(seed)
    if variant == "pooled":
        return base
    ref = task.reference
    special = set(task.tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(task.tokenizer.vocab_size) if i not in special])
    cls, sep = task.tokenizer.cls_token_id, task.tokenizer.sep_token_id

    def extra(state: Mapping[str, torch.Tensor], batch: Batch,
              ids: torch.Tensor | None) -> torch.Tensor:
        if variant == "tokens":
            inputs, mask = batch.inputs, batch.inputs["attention_mask"].bool()
        else:
            assert ids is not None
            inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                      "attention_mask": torch.ones_like(ids)}
            mask = inputs["attention_mask"].bool()
        student = _hidden(task, state, inputs)
        with torch.no_grad():
            teacher = _hidden(task, ref, inputs)
        if variant == "tokens":
            s, t = student[mask].float(), teacher[mask].float()
        else:
            m = inputs["attention_mask"]
            s, t = mean_pool(student, m).float(), mean_pool(teacher, m).float()
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        return ((s - t) ** 2).sum(-1).mean() / 2

    def loss(state: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        if isinstance(batch, Batch):  # a validation batch: the bench's loss
            return base.loss(state, batch)
        real, ids = batch
        return base.loss(state, real) + extra(state, real, ids)

    def batches() -> Iterator[tuple[Batch, torch.Tensor | None]]:
        gen = torch.Generator().manual_seed(1000 + seed)
        for real in base.stream():
            if variant != "synthetic":
                yield real, None
                continue
            draw = vocab[torch.randint(len(vocab), (SYNTHETIC, SYNTHETIC_LEN), generator=gen)]
            ids = torch.cat([torch.full((SYNTHETIC, 1), cls), draw,
                             torch.full((SYNTHETIC, 1), sep)], dim=1).to(task.device)
            yield real, ids

    return Finetuner(loss=loss, batches=batches, steps_per_epoch=base.steps_per_epoch,
                     validation=base.validation)


def measure_point(task: Any, variant: str, snr: float) -> dict[str, Any]:
    bench = MiniLMBench("minilm", sentences=task, progress=False)
    subject = Subject(MODEL, MODEL_KEY, dict(task.reference))
    ctx = CodecContext(device=torch.device("cpu"), seed=0, progress=False,
                       label=f"minilm vae-rd {variant}", finetune=finetuner(task, variant),
                       probe=bench.probe(MODEL))
    t0 = time.perf_counter()
    rec = measure(bench, subject, "vae-rd", {"snr": snr, "epochs": DISTILL_EPOCHS}, ctx)
    rec.update(variant=variant, snr=snr, run_s=time.perf_counter() - t0,
               environment=environment(torch.device("cpu"), 0))
    return rec


def _name(variant: str, snr: float) -> str:
    return f"{variant}@{snr:g}"


def report(result: dict[str, Any]) -> str:
    cov = result["coverage"]
    revs = sorted({r["environment"]["git_revision"] for r in result["points"]})
    lines = [
        "# What vae-rd's distillation on MiniLM reaches (issue 19)", "",
        f"Made by `{COMMAND}`, the points at git {', '.join(f'`{r}`' for r in revs)} (cpu, "
        "1 torch thread, two points at a time on the shared 2-core machine).", "",
        f"vae-rd as the bench runs it: warm-started at the SNR, {DISTILL_STEPS} steps of 32 "
        "training sentences (the standard library's docstrings). Losses:",
        "`pooled` the bench's (1 - cos of the sentence embeddings), `tokens` plus 1 - cos of",
        f"every token's last hidden state, `synthetic` plus 1 - cos of the embeddings of "
        f"{SYNTHETIC} sequences of {SYNTHETIC_LEN} random tokens a step.", "",
        "## The training sentences' vocabulary", "",
        f"{cov['train_distinct_tokens']:,} distinct tokens occur in the training sentences "
        f"(of the {cov['vocabulary']:,} of the vocabulary).", "",
        "| fidelity set | tokens | distinct | tokens seen in training | distinct seen |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("eval", "fidelity set (language reference)"),
                        ("heldout", "held-out (Austen)")):
        c = cov[name]
        lines.append(f"| {label} | {c['tokens']:,} | {c['distinct']:,} | "
                     f"{100 * c['tokens_seen']:.1f}% | {100 * c['distinct_seen']:.1f}% |")
    lines += ["", "## The points", "",
              "| loss | SNR | ratio | cos, fidelity set | nn kept | cos, held-out | nn kept | "
              "1 - cos held-out | compress s | task s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["points"]:
        lines.append(
            f"| {r['variant']} | {r['snr']:g} | {r['ratio_honest']:.3f}x | {r['cos_mean']:.5f} | "
            f"{100 * r['nn_same']:.1f}% | {r['heldout_cos_mean']:.5f} | "
            f"{100 * r['heldout_nn_same']:.1f}% | {1 - r['heldout_cos_mean']:.5f} | "
            f"{r['compress_s']:.0f} | {r['report']['task_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "distill-coverage")
    ap.add_argument("--only", help="one point, VARIANT@SNR (e.g. synthetic@18)")
    args = ap.parse_args()
    from vaecompress.tasks.sentence import SentenceTask

    torch.set_num_threads(1)
    seed_everything(0)
    records = args.out / "records"
    records.mkdir(parents=True, exist_ok=True)
    wanted = list(POINTS)
    if args.only is not None:
        variant, _, snr = args.only.partition("@")
        if variant not in VARIANTS or not snr:
            ap.error(f"--only is VARIANT@SNR with VARIANT one of {VARIANTS}")
        wanted = [(variant, float(snr))]
    task = SentenceTask()
    points = []
    for variant, snr in wanted:
        path = records / f"{_name(variant, snr)}.json"
        if path.exists() and args.only is None:
            points.append(json.loads(path.read_text()))
            continue
        rec = measure_point(task, variant, snr)
        atomic_write_json(path, rec)
        points.append(rec)
        print(f"{_name(variant, snr)}: {rec['ratio_honest']:.3f}x cos {rec['cos_mean']:.5f} "
              f"held-out {rec['heldout_cos_mean']:.5f} nn {100 * rec['heldout_nn_same']:.1f}%"
              f", {rec['compress_s']:.0f} s", flush=True)
    if args.only is not None:
        return 0
    result = {"environment": environment(torch.device("cpu"), 0), "command": COMMAND,
              "synthetic": SYNTHETIC, "synthetic_len": SYNTHETIC_LEN,
              "distill_steps": DISTILL_STEPS, "coverage": coverage(task), "points": points}
    atomic_write_json(args.out / "distill_coverage.json", result)
    atomic_write_text(args.out / "distill_coverage.md", report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
