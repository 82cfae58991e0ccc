"""MiniLM's task: how faithful a rebuilt sentence-embedding model is; what codecs retrain on.

**Fidelity** (what the bench reports for MiniLM instead of accuracy), over the sentences of
`data/eval.txt` (1,039 sentences of the Python Language Reference): `cos_mean`, the mean cosine
similarity between each sentence's embedding by the original model and by the rebuilt one
(`cos_min` the worst sentence); `nn_same`, the share of sentences whose nearest neighbour among
the set (by cosine, itself excluded) is the same sentence under the rebuilt embeddings as under
the original ones. A rebuilt model equal to the original scores 1 and 1.

**Distillation** (the task loss of `vae-rd` and the retraining of `prune`, `deep-compression`):
the mean of `1 - cos(e_rebuilt, e_original)` on batches of `data/train.txt` (2,048 sentences of
the standard library's docstrings, disjoint from the fidelity set). The original model is the
teacher, so no labels are needed, and the loss is zero exactly at the original weights.

Embeddings are sentence-transformers' own (checked against `SentenceTransformer.encode` in the
tests): BERT's last hidden states, mean-pooled over the attention mask, L2-normalized. The model
runs through `torch.func.functional_call`, so any state_dict of its names and shapes is
evaluated without being copied into the network. `data/` and how it was made:
`scripts/make_sentences.py`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from vaecompress.coding.finetune import Finetuner
from vaecompress.zoo import minilm

DATA = Path(__file__).resolve().parent / "data"
EVAL_BATCH = 64
TRAIN_BATCH = 32


def read_sentences(name: str) -> list[str]:
    """The sentences of `data/<name>.txt` ("eval" or "train"), comments skipped."""
    lines = (DATA / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # input_ids, token_type_ids, attention_mask: [B, L]
    index: torch.Tensor  # the sentences' positions in their set: [B]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling and normalization: the mean of the token states over the
    attention mask, L2-normalized."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def nearest_neighbours(emb: torch.Tensor, block: int = 512) -> torch.Tensor:
    """For each row, the index of the most cosine-similar other row (rows are unit vectors)."""
    out = torch.empty(len(emb), dtype=torch.int64)
    for i in range(0, len(emb), block):
        sims = emb[i : i + block] @ emb.T
        rows = torch.arange(i, min(i + block, len(emb)))
        sims[rows - i, rows] = -float("inf")
        out[i : i + block] = sims.argmax(1)
    return out


class SentenceTask:
    """The original MiniLM as teacher: embeds sentences with any state_dict of its tensors."""

    def __init__(self, device: torch.device | str = "cpu", *, n_eval: int | None = None,
                 n_train: int | None = None) -> None:
        self.device = torch.device(device)
        st = minilm.network(self.device)
        self.bert = st[0].auto_model
        self.tokenizer = st.tokenizer
        self.max_len = int(st.max_seq_length)
        self.reference = {k: v.to(self.device) for k, v in minilm.load_state().items()}
        self.eval_sentences = read_sentences("eval")[:n_eval]
        self.train_sentences = read_sentences("train")[:n_train]
        self.eval_batches = self._batches(self.eval_sentences, EVAL_BATCH)
        self.eval_ref = self.embed(self.reference)
        self.eval_nn = nearest_neighbours(self.eval_ref)

    def _tokenize(self, sentences: list[str], index: list[int]) -> Batch:
        enc = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        inputs = {k: enc[k].to(self.device)
                  for k in ("input_ids", "token_type_ids", "attention_mask")}
        return Batch(inputs, torch.tensor(index))

    def _batches(self, sentences: list[str], size: int) -> list[Batch]:
        """Fixed batches of sentences of similar length (little padding), in a fixed order."""
        order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), i))
        return [self._tokenize([sentences[i] for i in order[j : j + size]], order[j : j + size])
                for j in range(0, len(order), size)]

    def forward(self, state: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Unit-norm embeddings [B, 384] of a batch by the model with the tensors `state`."""
        out = functional_call(self.bert, dict(state), args=(), kwargs=batch.inputs)
        return mean_pool(out.last_hidden_state, batch.inputs["attention_mask"])

    @torch.no_grad()
    def embed(self, state: Mapping[str, torch.Tensor],
              batches: list[Batch] | None = None) -> torch.Tensor:
        """Embeddings of the fidelity set (or of `batches`), in the set's order, on the CPU."""
        batches = self.eval_batches if batches is None else batches
        state = {k: v.to(self.device) for k, v in state.items()}
        n = sum(len(b.index) for b in batches)
        out = torch.empty(n, minilm.EMBED_DIM)
        for b in batches:
            out[b.index] = self.forward(state, b).float().cpu()
        return out

    def fidelity(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """cos_mean, cos_min and nn_same of the model with `state` against the original."""
        emb = self.embed(state)
        cos = (emb * self.eval_ref).sum(1).clamp(-1.0, 1.0)
        same = nearest_neighbours(emb) == self.eval_nn
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "nn_same": float(same.float().mean()), "n_sentences": len(emb)}

    def finetuner(self, seed: int = 0, batch_size: int = TRAIN_BATCH) -> Finetuner:
        """Distillation on the training sentences: loss `mean(1 - cos(student, teacher))`,
        batches drawn in a seeded order, `steps_per_epoch` full batches per pass."""
        sents = self.train_sentences
        whole = self._batches(sents, EVAL_BATCH)
        teacher = self.embed(self.reference, whole).to(self.device)

        def loss(state: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
            student = self.forward(state, batch)
            target = teacher[batch.index.to(self.device)]
            return (1.0 - (student * target).sum(1)).mean()

        def batches() -> Iterator[Batch]:
            rng = random.Random(seed)
            while True:
                order = list(range(len(sents)))
                rng.shuffle(order)
                for j in range(0, len(order) - batch_size + 1, batch_size):
                    idx = order[j : j + batch_size]
                    yield self._tokenize([sents[i] for i in idx], idx)

        return Finetuner(loss=loss, batches=batches, steps_per_epoch=len(sents) // batch_size)
