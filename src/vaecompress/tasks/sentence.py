"""MiniLM's task: how faithful a rebuilt sentence-embedding model is; what codecs retrain on.

**Fidelity** (what the bench reports for MiniLM instead of accuracy), over the sentences of
`data/eval.txt` (1,039 sentences of the Python Language Reference): `cos_mean`, the mean cosine
similarity between each sentence's embedding by the original model and by the rebuilt one
(`cos_min` the worst sentence); `nn_same`, the share of sentences whose nearest neighbour among
the set (by cosine, itself excluded) is the same sentence under the rebuilt embeddings as under
the original ones. A rebuilt model equal to the original scores 1 and 1.

The same measure on text of another kind, on which no codec default is tuned: the **held-out
set** `data/heldout.txt` (1,000 narrative sentences of Jane Austen's six novels, public domain),
by `SentenceTask(eval_set="heldout")` or `fidelity(state, eval_set="heldout")`.

**Distillation** (the task loss of `vae-rd` and the retraining of `prune`, `deep-compression`):
the mean of `1 - cos(e_rebuilt, e_original)` on batches of `data/train.txt` (2,048 sentences of
the standard library's docstrings, disjoint from the fidelity set; 128 of them are kept apart
for early stopping). The original model is the teacher, so no labels are needed, and the loss
is zero at the original weights up to float32 rounding (the teacher's embeddings are made once,
in other batches; `finetuner`, the bench's). `SentenceTask.distiller` is the same distillation
on any sentences (`read_sentence_file`: a user's text file) through `tasks.distill`: fixed
batches of sentences of similar length, the teacher's embeddings kept per batch, and a loss
exactly zero at the teacher's weights. `SentenceTask(reference=state)` makes a user's MiniLM
(of the same names and shapes) the teacher and the model fidelity compares to.

Embeddings are sentence-transformers' own (checked against `SentenceTransformer.encode` in the
tests): BERT's last hidden states, mean-pooled over the attention mask, L2-normalized. The model
runs through `torch.func.functional_call`, so any state_dict of its names and shapes is
evaluated without being copied into the network. `data/` and how it was made:
`scripts/make_sentences.py`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from vaecompress.errors import UserError
from vaecompress.tasks.distill import distiller
from vaecompress.tasks.probe import Probe
from vaecompress.tasks.validation import Validation
from vaecompress.training.finetune import Finetuner
from vaecompress.zoo import minilm
from vaecompress.zoo.arch import fit_state, wrapper_prefix

DATA = Path(__file__).resolve().parent / "data"
EVAL_BATCH = 64
TRAIN_BATCH = 32
VALIDATION = 128  # training sentences kept apart for early stopping
VALIDATION_SENTENCES = 500  # `SentenceTask.validation`: sentences drawn for `--max-drop`
HELD_EVERY = 16  # `distiller`: one batch in this many kept apart for early stopping
SETS = ("eval", "train", "heldout")
EVAL_SETS = ("eval", "heldout")  # the sets fidelity is measured on


def read_sentences(name: str) -> list[str]:
    """The sentences of `data/<name>.txt` ("eval", "train" or "heldout"), comments skipped."""
    if name not in SETS:
        raise ValueError(f"no sentence set {name!r}; the sets are {', '.join(SETS)}")
    lines = (DATA / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read_sentence_file(path: str | Path) -> list[str]:
    """The sentences of a user's text file: one a line (UTF-8), surrounding whitespace
    stripped, blank lines and lines starting with '#' skipped. UserError if the file cannot be
    read or holds no sentence."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"sentence file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"sentence file {path} is a folder, not a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"sentence file {path} is not UTF-8 text (byte {e.start} is not); "
                        "give one sentence a line") from None
    except OSError as e:
        raise UserError(f"cannot read the sentence file {path}: {e.strerror or e}") from None
    sentences = [ln.strip() for ln in text.splitlines()]
    sentences = [ln for ln in sentences if ln and not ln.startswith("#")]
    if not sentences:
        raise UserError(f"sentence file {path} holds no sentences (one a line; blank lines and "
                        "lines starting with # are skipped)")
    return sentences


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


@dataclass
class EvalSet:
    """A fidelity set with the original model's embeddings and nearest neighbours on it."""

    name: str
    sentences: list[str]
    batches: list[Batch]
    reference: torch.Tensor  # [N, 384], the original model's embeddings
    nn: torch.Tensor  # [N], each sentence's nearest neighbour under them


class SentenceTask:
    """The original MiniLM as teacher: embeds sentences with any state_dict of its tensors.

    `eval_set` ("eval", the default, or "heldout") is the set `fidelity` measures by default;
    `n_eval` keeps the first sentences of every fidelity set, `n_train` of the training set.
    `reference`: the original's tensors, by default the packaged model's; another state of
    MiniLM's names and shapes (a user's fine-tuned MiniLM) is checked first (`check_state`,
    its errors naming `source`) and is then the teacher and the model fidelity compares to.
    """

    def __init__(self, device: torch.device | str = "cpu", *, n_eval: int | None = None,
                 n_train: int | None = None, eval_set: str = "eval",
                 reference: Mapping[str, torch.Tensor] | None = None,
                 source: str = "the reference state") -> None:
        if eval_set not in EVAL_SETS:
            raise ValueError(f"eval_set must be one of {', '.join(EVAL_SETS)}, not {eval_set!r}")
        self.device = torch.device(device)
        self.eval_set = eval_set
        self.n_eval = n_eval
        st = minilm.network(self.device)
        self.bert = st[0].auto_model
        self.tokenizer = st.tokenizer
        self.max_len = int(st.max_seq_length)
        self.dtypes = {k: v.dtype for k, v in
                       [*self.bert.named_parameters(), *self.bert.named_buffers()]}
        if reference is None:
            reference = minilm.load_state()
        else:
            self.check_state(reference, source)
        self.reference = {k: v.to(self.device) for k, v in reference.items()}
        self.train_sentences = read_sentences("train")[:n_train]
        self._eval_sets: dict[str, EvalSet] = {}
        default = self.fidelity_set(eval_set)
        self.eval_sentences = default.sentences
        self.eval_batches = default.batches
        self.eval_ref = default.reference
        self.eval_nn = default.nn

    def fidelity_set(self, name: str) -> EvalSet:
        """The fidelity set `name` ("eval" or "heldout"), with the original model's embeddings;
        made on first use, then kept."""
        if name not in EVAL_SETS:
            raise ValueError(f"eval_set must be one of {', '.join(EVAL_SETS)}, not {name!r}")
        if name not in self._eval_sets:
            sentences = read_sentences(name)[: self.n_eval]
            batches = self._batches(sentences, EVAL_BATCH)
            ref = self.embed(self.reference, batches)
            self._eval_sets[name] = EvalSet(name, sentences, batches, ref, nearest_neighbours(ref))
        return self._eval_sets[name]

    def batch(self, sentences: list[str], index: list[int]) -> Batch:
        """One batch of `sentences`, tokenized as the model's own tokenizer does, on the task's
        device; `index` their positions in their set."""
        return self._tokenize(sentences, index)

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
        """Unit-norm embeddings [B, 384] of a batch by the model with the tensors `state`
        (each cast to the network's dtype of its name, as `load_state_dict` would)."""
        tensors = {k: v if v.dtype == self.dtypes.get(k, v.dtype) else v.to(self.dtypes[k])
                   for k, v in state.items()}
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
            hidden = self._encode_checkpointed(tensors, batch.inputs)
        else:
            out = functional_call(self.bert, tensors, args=(), kwargs=batch.inputs)
            hidden = out.last_hidden_state
        return mean_pool(hidden, batch.inputs["attention_mask"])

    def _encode_checkpointed(self, tensors: Mapping[str, torch.Tensor],
                             inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's last hidden state with each layer under activation checkpointing
        (`torch.utils.checkpoint`, issue 19): a layer's activations (the attention maps above
        all) are recomputed in the backward pass instead of kept, so a training step holds the
        hidden states between layers and one layer's activations, not every layer's. The
        layer's tensors are inputs of the checkpointed function, so that the recomputation
        runs the student's weights (by then the module's own would be back). The same values
        and gradients as `functional_call` on the whole model (tests/test_minilm.py); the
        pooler, which the embedding does not use, is not run."""
        bert = self.bert

        def under(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items()
                    if k.startswith(prefix)}

        hidden = functional_call(bert.embeddings, under("embeddings."), args=(),
                                 kwargs={"input_ids": inputs["input_ids"],
                                         "token_type_ids": inputs["token_type_ids"]})
        mask = bert._create_attention_masks(inputs["attention_mask"], None, hidden, None,
                                            None)[0]
        for i, layer in enumerate(bert.encoder.layer):
            own = under(f"encoder.layer.{i}.")
            keys = list(own)

            def run(h: torch.Tensor, *ps: torch.Tensor, layer: Any = layer,
                    keys: list[str] = keys) -> torch.Tensor:
                return functional_call(layer, dict(zip(keys, ps, strict=True)),
                                       args=(h, mask))

            hidden = checkpoint(run, hidden, *own.values(), use_reentrant=False)
        return hidden

    @torch.no_grad()
    def embed(self, state: Mapping[str, torch.Tensor],
              batches: list[Batch] | None = None) -> torch.Tensor:
        """Embeddings of the default fidelity set (or of `batches`), in the set's order, on the
        CPU."""
        batches = self.eval_batches if batches is None else batches
        state = {k: v.to(self.device) for k, v in state.items()}
        n = sum(len(b.index) for b in batches)
        out = torch.empty(n, minilm.EMBED_DIM)
        for b in batches:
            out[b.index] = self.forward(state, b).float().cpu()
        return out

    def fidelity(self, state: Mapping[str, torch.Tensor],
                 eval_set: str | None = None) -> dict[str, Any]:
        """cos_mean, cos_min and nn_same of the model with `state` against the original, on the
        fidelity set `eval_set` ("eval" or "heldout"; default: the task's `eval_set`)."""
        fs = self.fidelity_set(self.eval_set if eval_set is None else eval_set)
        emb = self.embed(state, fs.batches)
        cos = (emb * fs.reference).sum(1).clamp(-1.0, 1.0)
        same = nearest_neighbours(emb) == fs.nn
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "nn_same": float(same.float().mean()), "n_sentences": len(emb)}

    def validation(self, sentences: Sequence[str] | None = None, *,
                   n: int = VALIDATION_SENTENCES, seed: int = 0,
                   source: str = "tasks/data/train.txt") -> Validation:
        """The mean cosine of a model's embeddings to the original's on `n` sentences drawn with
        `seed` from `sentences` (default: the training set, `source` naming where they come
        from), for the search of `--max-drop` (`target`; the drop is 1 - mean cosine): the
        fidelity sets stay for judging what it chose."""
        pool = list(self.train_sentences if sentences is None else sentences)
        pick = sorted(random.Random(f"max-drop-{seed}").sample(range(len(pool)),
                                                               min(n, len(pool))))
        chosen = [pool[i] for i in pick]
        batches = self._batches(chosen, EVAL_BATCH)
        ref = self.embed(self.reference, batches)

        def score(state: Mapping[str, torch.Tensor]) -> float:
            emb = self.embed(state, batches)
            return float((emb * ref).sum(1).clamp(-1.0, 1.0).mean())

        return Validation(score, "cosine", f"{len(chosen):,} sentences of {source} (seed {seed})")

    def probe(self, *, batches: int = 8, batch_size: int = 16, length: int = 32,
              seed: int = 0) -> Probe:
        """The model on synthetic inputs, for the data-free codec's sensitivities (`tasks.probe`):
        sequences of `length` tokens drawn uniformly from the vocabulary's ordinary tokens
        (special ones excluded), between [CLS] and [SEP]; no sentence of any set is read."""
        gen = torch.Generator().manual_seed(seed)
        special = set(self.tokenizer.all_special_ids)
        vocab = torch.tensor([i for i in range(self.tokenizer.vocab_size) if i not in special])
        draw = vocab[torch.randint(len(vocab), (batches * batch_size, length), generator=gen)]
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        ids = torch.cat([torch.full((len(draw), 1), cls), draw, torch.full((len(draw), 1), sep)],
                        dim=1).to(self.device)
        mask = torch.ones_like(ids)

        def outputs(state: Mapping[str, torch.Tensor], i: int) -> torch.Tensor:
            rows = slice(i * batch_size, (i + 1) * batch_size)
            inputs = {"input_ids": ids[rows], "token_type_ids": torch.zeros_like(ids[rows]),
                      "attention_mask": mask[rows]}
            return self.forward(state, Batch(inputs, torch.arange(batch_size)))

        return Probe(outputs, batches, "embedding")

    def finetuner(self, seed: int = 0, batch_size: int = TRAIN_BATCH,
                  validation: int = VALIDATION) -> Finetuner:
        """Distillation on the training sentences: loss `mean(1 - cos(student, teacher))`,
        batches drawn in a seeded order, `steps_per_epoch` full batches per pass. `validation`
        sentences of the training set (a seeded draw) are kept out of the batches, for early
        stopping (`Finetuner.validation`)."""
        sents = self.train_sentences
        whole = self._batches(sents, EVAL_BATCH)
        teacher = self.embed(self.reference, whole).to(self.device)
        order = list(range(len(sents)))
        random.Random(f"validation-{seed}").shuffle(order)
        n_val = min(validation, len(sents) // 4)
        held, train = sorted(order[:n_val]), order[n_val:]
        val = [self._tokenize([sents[i] for i in held[j : j + EVAL_BATCH]],
                              held[j : j + EVAL_BATCH]) for j in range(0, n_val, EVAL_BATCH)]

        def loss(state: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
            student = self.forward(state, batch)
            target = teacher[batch.index.to(self.device)]
            return (1.0 - (student * target).sum(1)).mean()

        def batches() -> Iterator[Batch]:
            rng = random.Random(seed)
            while True:
                order = list(train)
                rng.shuffle(order)
                for j in range(0, len(order) - batch_size + 1, batch_size):
                    idx = order[j : j + batch_size]
                    yield self._tokenize([sents[i] for i in idx], idx)

        return Finetuner(loss=loss, batches=batches, steps_per_epoch=len(train) // batch_size,
                         validation=val or None)

    def check_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """UserError unless `state` holds exactly MiniLM's tensors under its own names and
        shapes (the buffers the network does not save, `embeddings.position_ids` of the
        packaged file, may be there or not): `functional_call` would silently run the
        packaged weights for a tensor that is missing."""
        persistent = self.bert.state_dict()
        prefix = wrapper_prefix(list(state), list(persistent))
        if prefix:
            raise UserError(f"{source}: MiniLM's tensors are read under their own names, these "
                            f"carry the prefix '{prefix}'; save the model without its wrapper")
        optional = {k: v for k, v in self.bert.named_buffers() if k not in persistent}
        fit_state(self.bert, {k: v for k, v in state.items() if k not in optional},
                  name=minilm.NAME, source=source)
        for k, v in optional.items():
            if k in state and state[k].shape != v.shape:
                raise UserError(f"{source} does not hold {minilm.NAME} weights: shape of '{k}' "
                                f"{tuple(state[k].shape)} where the model has {tuple(v.shape)}")

    def distiller(self, sentences: Sequence[str] | None = None, *, seed: int = 0,
                  batch_size: int = TRAIN_BATCH, embedding: str = "cosine") -> Finetuner:
        """Distillation of the task's reference model (the teacher) into the one a codec
        trains, on `sentences` (default: the training set): `tasks.distill` on the embeddings,
        `embedding` "cosine" (mean `1 - cos`) or "mse", exactly zero at the reference. The
        batches are fixed groups of `batch_size` sentences of similar length (little
        padding), tokenized at each use, in a seeded order every pass; each one's teacher
        embeddings are kept after its first use (1.5 KB a sentence). One batch in 16 (given
        16 or more) is kept apart as `validation`, for early stopping. `steps_per_epoch` is
        the number of training batches."""
        sents = list(self.train_sentences if sentences is None else sentences)
        if not sents:
            raise UserError("no sentences to distil on")
        order = sorted(range(len(sents)), key=lambda i: (len(sents[i]), i))
        groups = [order[j : j + batch_size] for j in range(0, len(order), batch_size)]
        # Every 16th group (of every length) kept apart for early stopping, given 16 or more.
        held = groups[HELD_EVERY // 2 :: HELD_EVERY] if len(groups) >= HELD_EVERY else []
        train = [g for i, g in enumerate(groups)
                 if len(groups) < HELD_EVERY or i % HELD_EVERY != HELD_EVERY // 2]
        val = SentenceBatches(self, sents, held)
        return distiller(self.forward, SentenceBatches(self, sents, train),
                         state=self.reference, output="embedding", embedding=embedding,
                         cache=True, seed=seed, validation=[val[i] for i in range(len(val))])


class SentenceBatches(Sequence[Batch]):
    """Fixed groups of sentences, tokenized when one is asked for (the tokens of a large file
    are never all held at once)."""

    def __init__(self, task: SentenceTask, sentences: list[str], groups: list[list[int]]) -> None:
        self.task, self.sentences, self.groups = task, sentences, groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, j: int) -> Batch:  # type: ignore[override]
        idx = self.groups[j]
        return self.task._tokenize([self.sentences[i] for i in idx], idx)
