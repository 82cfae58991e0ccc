"""A prior over the rows of MiniLM's word embedding by token frequency: what it buys on text the
frequencies were not counted on (issue 19, `docs/minilm.md`).

    PYTHONPATH=src .venv/bin/python benchmarks/token_prior.py --out results/token-prior

The word embedding is half of MiniLM's weights (30,522 rows, one a token) and about 42% of the
default's file at 22 dB. A row's error reaches the embeddings only where its token occurs, so on
text whose tokens have frequencies `f`, reverse water-filling gives each row a step
`~ f^(-1/2)`: frequent tokens finer, rare ones coarser. The default cannot know `f` (its probe
draws tokens uniformly) and `vae-rd` knows it only for the tokens of its training sentences.
This measures, at each SNR of `SNRS`, the default's closed form (`methods.rd.allocate`, the
probe's Fisher weights, as `vaecompress compress` runs on MiniLM) against the same file with
the word embedding re-quantized one step per row, `step_t = c / sqrt(clip(f_t / mean f, 1/CLIP,
CLIP))`, `c` chosen so that the embedding's latents take the default's order-0 bytes (the row
steps, 4 B a row in today's record, are counted in the bytes reported). Priors `f`:

- `train + a`: the token counts of the training sentences (`tasks/data/train.txt`, docstrings,
  what `vae-rd` distils on) plus `a` for every token (a floor for the tokens they lack);
- `token id`: a frequency falling with the token's id past the first 1,000 ids (WordPiece and
  BPE vocabularies list tokens roughly by frequency; nothing counted, what a data-free codec
  could assume);
- `oracle: eval` and `oracle: held-out`: the counts of each fidelity text itself plus 0.5: what
  a prior can buy at best on that text, not a method.

Fidelity: mean cosine and nearest neighbours kept on the fidelity set (`eval`, the Python
language reference) and on the held-out text (Jane Austen), against the original model. Writes
`OUT/token_prior.json` (with the run's environment) and `OUT/token_prior.md`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from minilm_arrays import coded_arrays, fidelity

from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.methods.rd.allocate import allocate
from vaecompress.methods.rd.latents import encode_model, encode_tensor
from vaecompress.runinfo import auto_threads, environment, seed_everything
from vaecompress.tasks.probe import tensor_sensitivities

SNRS = (22.0, 14.0)
CLIP = 16.0
EMBEDDING = "embeddings.word_embeddings.weight"
ID_OFFSET, ID_SCALE = 1000, 100.0  # the `token id` prior: 1 / (max(id - 1000, 0) + 100)


def token_counts(task: Any, sentences: list[str], vocab: int) -> np.ndarray:
    """How often each token id occurs in `sentences` as the task tokenizes them ([CLS] and
    [SEP] included, truncated as the task truncates)."""
    counts = np.zeros(vocab, dtype=np.float64)
    for i in range(0, len(sentences), 256):
        enc = task.tokenizer(sentences[i : i + 256], truncation=True, max_length=task.max_len)
        for ids in enc["input_ids"]:
            np.add.at(counts, np.asarray(ids, dtype=np.int64), 1.0)
    return counts


def order0_bytes(z: np.ndarray) -> float:
    """The order-0 entropy of the integers `z`, in bytes (no table)."""
    _, c = np.unique(z, return_counts=True)
    return float(-(c * np.log2(c / z.size)).sum()) / 8


def row_steps(a: np.ndarray, step: float, prior: np.ndarray, target: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(latents, one float32 step a row) of the matrix `a` under `prior`'s row factors, the
    common scale bisected until the latents' order-0 bytes are at most `target`."""
    rel = np.clip(prior / prior.mean(), 1 / CLIP, CLIP)
    factor = 1 / np.sqrt(rel)
    a64 = a.astype(np.float64)

    def quantize(c: float) -> tuple[np.ndarray, np.ndarray]:
        st = (step * c * factor).astype(np.float32)
        return np.rint(a64 / st[:, None].astype(np.float64)).astype(np.int64), st

    lo, hi = 0.01, 100.0  # lo: too many bytes, hi: few enough
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if order0_bytes(quantize(mid)[0]) > target:
            lo = mid
        else:
            hi = mid
    return quantize(hi)


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# MiniLM's word embedding under a token-frequency prior", "",
             f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}; "
             f"{res['run_s']:.0f} s. Made by `benchmarks/token_prior.py` (its docstring says "
             "how). Each row: the whole file's ratio (float32 bytes over the latent records), "
             "the word embedding's record, and the fidelity against the original model on the "
             "fidelity set (the Python language reference) and on the held-out text (Jane "
             f"Austen). Row factors clipped to [1/{CLIP:g}, {CLIP:g}]; tokens seen: "
             + ", ".join(f"{k} {v:,}" for k, v in res["tokens_seen"].items()) + ".", "",
             "| snr (dB) | embedding rows | ratio | embedding B | eval cosine | eval neighbours "
             "| held-out cosine | held-out neighbours |", "|---|---|---|---|---|---|---|---|"]
    for p in res["points"]:
        lines.append(f"| {p['snr']:g} | {p['prior']} | {p['ratio']:.3f}x | "
                     f"{p['embedding_bytes']:,} | {p['cos_mean']:.5f} | {100 * p['nn_same']:.1f}% "
                     f"| {p['heldout_cos_mean']:.5f} | {100 * p['heldout_nn_same']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/token-prior")
    p.add_argument("--render", action="store_true", help="redraw OUT/token_prior.md only")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        import json

        atomic_write_text(out / "token_prior.md",
                          render(json.loads((out / "token_prior.json").read_text())))
        return 0
    from vaecompress.tasks.sentence import SentenceTask, read_sentences

    auto_threads()
    seed_everything(0)
    t_run = time.perf_counter()
    task = SentenceTask()
    ca = coded_arrays(task)
    names, arrays, n = ca.names, ca.arrays, ca.params
    e = names.index(EMBEDDING)
    vocab = arrays[e].shape[0]
    sens = tensor_sensitivities(task.probe(seed=0), ca.state, names, arrays, 0)
    counts = {name: token_counts(task, read_sentences(name), vocab)
              for name in ("train", "eval", "heldout")}
    ids = np.arange(vocab, dtype=np.float64)
    priors = {"train + 0.5": counts["train"] + 0.5, "train + 2": counts["train"] + 2.0,
              "token id": 1 / (np.maximum(ids - ID_OFFSET, 0) + ID_SCALE),
              "oracle: eval": counts["eval"] + 0.5,
              "oracle: held-out": counts["heldout"] + 0.5}

    points: list[dict[str, Any]] = []
    for snr in SNRS:
        al = allocate(arrays, sens, snr=snr)
        dec = [z.astype(np.float32) * s[0] for z, s in zip(al.ints, al.steps, strict=True)]
        total = len(encode_model(al.ints, al.steps))
        emb = len(encode_tensor(al.ints[e], al.steps[e]))
        rows: list[tuple[str, list[np.ndarray], int]] = [("one step (the default)", dec, emb)]
        for label, prior in priors.items():
            z, st = row_steps(arrays[e], float(al.steps[e][0]), prior, order0_bytes(al.ints[e]))
            d = list(dec)
            d[e] = z.astype(np.float32) * st[:, None]
            rows.append((label, d, len(encode_tensor(z, st))))
        for label, d, size in rows:
            t0 = time.perf_counter()
            pt = {"snr": snr, "prior": label, "embedding_bytes": size,
                  "bytes": total - emb + size, "ratio": 4 * n / (total - emb + size),
                  **fidelity(task, ca.rebuilt(d)), "seconds": time.perf_counter() - t0}
            points.append(pt)
            print(pt, flush=True)
    res = {"environment": environment(torch.device("cpu"), 0),
           "command": "PYTHONPATH=src .venv/bin/python benchmarks/token_prior.py",
           "params": n, "clip": CLIP, "snrs": list(SNRS),
           "tokens_seen": {k: int((v > 0).sum()) for k, v in counts.items()},
           "points": points, "run_s": time.perf_counter() - t_run}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "token_prior.json", res)
    atomic_write_text(out / "token_prior.md", render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
