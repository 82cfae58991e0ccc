"""Distillation as the task of any model (`tasks.distill`, issue 19): the loss is exactly zero at
the teacher's weights, its gradient reaches every trained tensor, Adam on it brings a perturbed
model back, the teacher is kept per batch when asked, and bad arguments are one UserError.
The MNIST distiller of the zoo and MiniLM's sentence distiller (with the optional extra) are
checked the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaecompress
from vaecompress.errors import UserError
from vaecompress.tasks.distill import (
    DistillLoss,
    Indexed,
    cosine_distance,
    distiller,
    kl_logits,
)
from vaecompress.training.finetune import run_finetune
from vaecompress.zoo import minilm

needs_minilm = pytest.mark.skipif(minilm.missing() is not None,
                                  reason="optional extra 'minilm' not installed")


class Net(nn.Module):
    """A conv, BatchNorm (floating buffers) and a linear head: logits [N, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():  # statistics that are not the identity, as after training
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture
def inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=gen) for _ in range(4)]


def _leaves(state: dict[str, torch.Tensor], noise: float = 0.0,
            seed: int = 2) -> dict[str, torch.Tensor]:
    """Float32 leaf copies of the floating tensors that require grad (as a codec trains them),
    perturbed by `noise` times each tensor's scale."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            w = v.detach().float().clone()
            w += noise * (w.abs().mean() + 1e-3) * torch.randn(w.shape, generator=gen)
            out[k] = w.requires_grad_(True)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize(("output", "embedding"),
                         [("logits", "cosine"), ("embedding", "cosine"), ("embedding", "mse")])
def test_loss_is_exactly_zero_at_the_teacher(net: Net, inputs: list[torch.Tensor], output: str,
                                             embedding: str) -> None:
    task = distiller(net, inputs, output=output, embedding=embedding, temperature=2.0)
    student = _leaves(net.state_dict())
    batches = task.batches()
    for _ in range(len(inputs) + 2):  # every batch, and two of them again
        assert task.loss(student, next(batches)).item() == 0.0
    noisy = task.loss(_leaves(net.state_dict(), noise=0.1), next(batches))
    assert noisy.item() > 1e-6


def test_hidden_states_are_matched_and_zero_at_the_teacher(net: Net,
                                                          inputs: list[torch.Tensor]) -> None:
    task = distiller(net, inputs, hidden=["conv", "bn"], hidden_weight=0.5)
    plain = distiller(net, inputs)
    batch = next(task.batches())
    assert task.loss(_leaves(net.state_dict()), batch).item() == 0.0
    noisy = _leaves(net.state_dict(), noise=0.1)
    assert task.loss(noisy, batch).item() > plain.loss(noisy, batch).item() > 0.0
    with pytest.raises(UserError, match="no submodule 'nope'"):
        distiller(net, inputs, hidden=["nope"])


def test_gradient_reaches_every_student_tensor(net: Net, inputs: list[torch.Tensor]) -> None:
    task = distiller(net, inputs)
    student = _leaves(net.state_dict(), noise=0.1)
    task.loss(student, next(task.batches())).backward()
    for k in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
              "bn.running_var", "head.weight", "head.bias"):
        g = student[k].grad
        assert g is not None and bool(g.abs().sum() > 0), k
    # BatchNorm's statistics are the floating buffers retraining leaves alone (ModuleLoss's)
    assert task.frozen == {"bn.running_mean", "bn.running_var"}


@pytest.mark.parametrize("output", ["logits", "embedding"])
def test_adam_on_the_loss_brings_a_perturbed_model_back(net: Net, inputs: list[torch.Tensor],
                                                        output: str) -> None:
    task = distiller(net, inputs, output=output)
    state = net.state_dict()
    params = {k: v for k, v in _leaves(state, noise=0.3).items()
              if v.is_floating_point() and k not in task.frozen}
    fixed = {k: v for k, v in state.items() if k not in params}

    def total() -> float:
        with torch.no_grad():
            return sum(float(task.loss({**fixed, **params}, Indexed(i, b)))
                       for i, b in enumerate(inputs))

    before = total()
    losses = run_finetune(params, lambda: {**fixed, **params}, task, steps=40, lr=3e-3)
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]
    assert total() < 0.5 * before


def test_teacher_runs_once_per_batch_with_the_cache() -> None:
    w = torch.randn(3, 4)
    calls: list[bool] = []  # True: a call of the teacher (the student's tensor requires grad)

    def outputs(state: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        calls.append(not state["w"].requires_grad)
        return batch @ state["w"].T

    batches = [torch.randn(5, 4) for _ in range(3)]
    cached = distiller(outputs, batches, state={"w": w}, output="embedding", cache=True)
    stream = cached.batches()
    student = {"w": w.clone().requires_grad_(True)}
    for _ in range(9):  # three passes
        assert cached.loss(student, next(stream)).item() == 0.0
    assert calls.count(True) == 3 and calls.count(False) == 9
    calls.clear()
    fresh = distiller(outputs, batches, state={"w": w}, output="embedding")
    stream = fresh.batches()
    for _ in range(6):
        fresh.loss(student, next(stream))
    assert calls.count(True) == 6  # no cache: the teacher runs on every step


def test_batch_order_is_seeded_and_covers_every_batch_each_pass() -> None:
    batches = [torch.full((2, 3), float(i)) for i in range(5)]
    seen = [next(s).index for s in [distiller(lambda st, b: b, batches, state={}, seed=3)
                                    .batches()] for _ in range(15)]
    again = distiller(lambda st, b: b, batches, state={}, seed=3).batches()
    assert [next(again).index for _ in range(15)] == seen
    for p in range(3):
        assert sorted(seen[5 * p : 5 * p + 5]) == list(range(5))
    ordered = distiller(lambda st, b: b, batches, state={}, seed=None).batches()
    assert [next(ordered).index for _ in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    assert distiller(lambda st, b: b, batches, state={}).steps_per_epoch == 5


def test_a_stream_of_inputs_is_distilled_on_the_fly(net: Net) -> None:
    def stream() -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(8, 1, 8, 8, generator=gen)

    task = distiller(net, stream)
    assert task.steps_per_epoch == 100  # an endless stream's default epoch
    it = task.batches()
    assert task.loss(_leaves(net.state_dict()), next(it)).item() == 0.0


def test_kl_and_cosine_are_the_textbook_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 7, generator=gen), torch.randn(6, 7, generator=gen)
    want = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                    reduction="batchmean") * 4
    assert torch.allclose(kl_logits(s, t, 2.0), want, atol=1e-6)
    assert torch.allclose(cosine_distance(s, t), (1 - F.cosine_similarity(s, t)).mean(),
                          atol=1e-6)
    # rows of a [B, L, D] output are its B * L vectors
    s3, t3 = s.reshape(2, 3, 7), t.reshape(2, 3, 7)
    assert torch.allclose(cosine_distance(s3, t3), cosine_distance(s, t))


def test_bad_arguments_are_one_user_error(net: Net, inputs: list[torch.Tensor]) -> None:
    def fn(state: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        return batch.sum(1)  # one number per input

    cases = [
        (lambda: distiller(net, inputs, output="probs"), "output must be one of"),
        (lambda: distiller(net, inputs, output="embedding", embedding="l1"), "embedding loss"),
        (lambda: distiller(net, inputs, temperature=0), "temperature"),
        (lambda: distiller(net, inputs, temperature=float("nan")), "temperature"),
        (lambda: distiller(net, inputs, hidden_weight=-1), "hidden_weight"),
        (lambda: distiller(net, iter(inputs), cache=True), "sequence"),
        (lambda: distiller(net, []), "empty"),
        (lambda: distiller(fn, inputs), "needs its tensors"),
        (lambda: distiller(fn, inputs, state={}, hidden=["x"]), "module teacher"),
        (lambda: distiller(3, inputs, state={}), "nn.Module or a function"),  # type: ignore[arg-type]
    ]
    for make, match in cases:
        with pytest.raises(UserError, match=match):
            make()
    flat = distiller(fn, [torch.randn(4, 3)], state={})
    with pytest.raises(UserError, match="last dimension"):
        flat.loss({}, next(flat.batches()))
    ok = distiller(fn, [torch.randn(4, 3)], state={}, output="embedding", embedding="mse")
    assert ok.loss({}, next(ok.batches())).item() == 0.0


def test_prune_retrained_by_distillation_keeps_the_outputs(net: Net,
                                                           inputs: list[torch.Tensor]) -> None:
    """The public API end to end: a codec that trains on the task, given a distiller, rebuilds
    a model closer to the teacher than without retraining."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    task = vaecompress.distiller(net, inputs)
    assert isinstance(task.loss, vaecompress.DistillLoss)

    def gap(rebuilt: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return sum(float(task.loss(rebuilt, b)) for b in inputs)

    plain = vaecompress.compress(state, "prune", sparsity=0.7)
    tuned = vaecompress.compress(state, "prune", finetune=task, sparsity=0.7,
                                 finetune_epochs=15)
    assert plain.rebuilt is not None and tuned.rebuilt is not None
    assert gap(tuned.rebuilt) < 0.5 * gap(plain.rebuilt)
    assert torch.equal(tuned.rebuilt["bn.running_var"], state["bn.running_var"])  # frozen


def test_mnist_distiller_is_zero_at_the_original_on_the_zoo(toy_mnist_dir: Path) -> None:
    from vaecompress.data import load_mnist
    from vaecompress.tasks.mnist import make_finetuner, mnist_distiller
    from vaecompress.zoo import build_model

    train, _ = load_mnist(toy_mnist_dir)
    for name in ("cnn", "lstm"):
        torch.manual_seed(0)
        state = {k: v.detach() for k, v in build_model(name).state_dict().items()}
        task = mnist_distiller(name, state, train, batch_size=32, seed=4)
        labelled = make_finetuner(name, train, batch_size=32, seed=4)
        assert task.steps_per_epoch == labelled.steps_per_epoch == len(train) // 32
        batch, (x, _y) = next(task.batches()), next(labelled.batches())
        assert torch.equal(batch, x)  # the same images, without their labels
        assert task.loss(_leaves(state), batch).item() == 0.0, name
        assert task.loss(_leaves(state, noise=0.2), batch).item() > 0.0


def test_distill_loss_refuses_mismatched_outputs() -> None:
    loss = DistillLoss(lambda st, b: b * st["k"], {"k": torch.ones(())}, output="embedding")
    with pytest.raises(UserError, match="shape"):
        loss.compare(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------ MiniLM (optional extra)


def test_sentence_file_is_read_as_documented(tmp_path: Path) -> None:
    from vaecompress.tasks.sentence import read_sentence_file

    f = tmp_path / "s.txt"
    f.write_text("# a comment\n\n  The first sentence.  \r\n#another\n   \nThe second one.\n",
                 encoding="utf-8")
    assert read_sentence_file(f) == ["The first sentence.", "The second one."]
    bad = {"empty.txt": b"", "comments.txt": b"# only\n\n  \n", "latin1.txt": b"caf\xe9\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    for path, match in ((tmp_path / "empty.txt", "holds no sentences"),
                        (tmp_path / "comments.txt", "holds no sentences"),
                        (tmp_path / "latin1.txt", "not UTF-8"),
                        (tmp_path / "missing.txt", "does not exist"),
                        (tmp_path, "is a folder")):
        with pytest.raises(UserError, match=match):
            read_sentence_file(path)


@pytest.fixture(scope="module")
def sentence_task():  # type: ignore[no-untyped-def]
    if minilm.missing() is not None:
        pytest.skip("optional extra 'minilm' not installed")
    from vaecompress.tasks.sentence import SentenceTask

    return SentenceTask(n_eval=0, n_train=16)


@needs_minilm
def test_minilm_distillation_is_exactly_zero_at_the_original(sentence_task) -> None:  # type: ignore[no-untyped-def]
    from vaecompress.tasks.sentence import read_sentences

    sentences = read_sentences("heldout")[:12]
    task = sentence_task.distiller(sentences, batch_size=4, seed=1)
    assert task.steps_per_epoch == 3
    student = _leaves(sentence_task.reference)
    stream = task.batches()
    seen = set()
    for _ in range(4):
        batch = next(stream)
        seen.add(batch.index)
        assert task.loss(student, batch).item() == 0.0
    assert seen == {0, 1, 2}
    loss = task.loss(_leaves(sentence_task.reference, noise=0.05), batch)
    assert loss.item() > 1e-5
    loss.backward()
    # the default: the bundled training sentences
    assert sentence_task.distiller().steps_per_epoch == 1  # n_train=16 in one batch of 32


@needs_minilm
def test_minilm_state_is_checked_before_it_is_used(sentence_task) -> None:  # type: ignore[no-untyped-def]
    ref = sentence_task.reference
    sentence_task.check_state(ref, "ok.safetensors")  # the packaged file, position_ids and all
    sentence_task.check_state({k: v for k, v in ref.items()
                               if k != "embeddings.position_ids"}, "ok.safetensors")
    missing = {k: v for k, v in ref.items() if k != "pooler.dense.bias"}
    with pytest.raises(UserError, match=r"m\.safetensors does not hold minilm weights: "
                                        r"missing 'pooler\.dense\.bias'"):
        sentence_task.check_state(missing, "m.safetensors")
    with pytest.raises(UserError, match=r"prefix 'module\.'"):
        sentence_task.check_state({f"module.{k}": v for k, v in ref.items()}, "w.safetensors")
    with pytest.raises(UserError, match="position_ids"):
        sentence_task.check_state({**ref, "embeddings.position_ids": torch.zeros(1, 3)}, "p")


def test_vae_rd_trains_on_a_distiller(net: Net, inputs: list[torch.Tensor]) -> None:
    """The task-aware VAE codec on the distillation loss: the same bytes for the same input,
    and a rate term that trades against it (a larger lam, a smaller file and a larger gap)."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    task = vaecompress.distiller(net, inputs, cache=True)

    def gap(rebuilt: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return sum(float(task.loss(rebuilt, b)) for b in inputs)

    fine = vaecompress.compress(state, "vae-rd", finetune=task, lam=0.01, epochs=5)
    again = vaecompress.compress(state, "vae-rd", finetune=task, lam=0.01, epochs=5)
    coarse = vaecompress.compress(state, "vae-rd", finetune=task, lam=1.0, epochs=5)
    assert fine.data == again.data
    assert fine.rebuilt is not None and coarse.rebuilt is not None
    assert len(coarse.data) < len(fine.data) and gap(fine.rebuilt) < gap(coarse.rebuilt)


@needs_minilm
def test_minilm_distiller_keeps_one_batch_in_16_apart(sentence_task) -> None:  # type: ignore[no-untyped-def]
    """Early stopping's batches (`Finetuner.validation`) are sentences never trained on."""
    from vaecompress.tasks.sentence import read_sentences

    sentences = read_sentences("heldout")[:64]
    task = sentence_task.distiller(sentences, batch_size=2, seed=0)  # 32 groups: 2 kept
    assert task.validation is not None and len(task.validation) == 2
    assert task.steps_per_epoch == 30
    held = {int(i) for b in task.validation for i in b.index}
    stream = task.batches()
    trained = {int(i) for _ in range(30) for i in next(stream).batch.index}
    assert len(held) == 4 and len(trained) == 60 and not held & trained
    few = sentence_task.distiller(sentences[:8], batch_size=2)  # fewer than 16 groups
    assert few.validation is None and few.steps_per_epoch == 4
