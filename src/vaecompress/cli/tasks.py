"""What `compress` knows of the model's task, from its flags: what the codecs retrain on (and
the line that says so), the probe of the data-free codec, how the rebuilt model is measured, and
the validation data the search of `--max-drop` reads.
Two tasks: MiniLM's sentence embeddings (--model minilm, --sentences) and MNIST classification
(a zoo model or --arch), both built by `tasks/`; and on any model the user's own score of the
weights (--score), which then measures the rebuilt model and judges --max-drop's tries. This
module only reads flags and words lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaecompress.cli.arch import load_classifier, resolve_arch
from vaecompress.errors import UserError


@dataclass
class Task:
    """What compress knows of the model's task: what the codecs retrain on (and the line
    that says so), the probe of the data-free codec, and how the rebuilt model is measured
    (its JSON fields and its line), each None where it does not apply."""

    finetune: Any = None
    finetune_desc: str | None = None
    probe: Any = None
    # The rebuilt model's measure (`api.compress(evaluate=...)`), and the line that reports it.
    evaluate: Callable[[Any], dict[str, Any]] | None = None
    describe: Callable[[dict[str, Any]], str] | None = None
    # With --max-drop: the data the search judges each try on (`tasks.validation`).
    validation: Any = None


def _steps(n: int) -> str:
    return f"{n:,} step" if n == 1 else f"{n:,} steps"


def compress_task(args: argparse.Namespace, state: Any, meta: dict[str, str],
                  sentences: list[str] | None, device: Any, *, distill: bool) -> Task:
    """The task of the model being compressed: MiniLM's, else MNIST's; with --score, the
    rebuilt model measured and --max-drop judged by the user's function instead."""
    if args.score is not None and args.no_eval:
        raise UserError("--score measures the rebuilt model and --no-eval says not to: give "
                        "one")
    if sentence_model(args):
        task = sentence_task(args, state, sentences, device, retrain=args.finetune or distill)
    else:
        task = mnist_task(args, state, meta, device, distill=distill)
    if args.score is not None:
        from vaecompress.tasks.user import UserScore, user_score

        score = user_score(args.score, state)
        score.input_score()  # the user's function runs once before the work
        task.evaluate, task.describe = score.evaluate, UserScore.describe
        if args.max_drop is not None:
            task.validation = score.validation()
    return task


def _searched_by_task(args: argparse.Namespace) -> bool:
    """--max-drop judged on the task's own validation data (not on --score)."""
    return args.max_drop is not None and args.score is None


def sentence_model(args: argparse.Namespace) -> bool:
    from vaecompress.zoo import minilm

    return bool(args.model) and args.model.lower() == minilm.NAME


def sentences_of(args: argparse.Namespace) -> list[str] | None:
    """The sentences of --sentences (None without it), and the checks of --model minilm that
    need no model: the flags that go with it, the optional extra."""
    from vaecompress.zoo import minilm

    if not sentence_model(args):
        if args.sentences is not None:
            raise UserError("--sentences goes with --model minilm, the sentence-embedding "
                            "model vaecompress runs (a zoo model or --arch classifier distils "
                            "on the MNIST training images: --distill)")
        return None
    if args.arch or args.arch_kwargs is not None or args.normalize is not None:
        raise UserError("--arch, --arch-kwargs and --normalize are for MNIST classifiers; "
                        "--model minilm knows its own network")
    sentences = None
    if args.sentences is not None:
        from vaecompress.tasks.sentence import read_sentence_file

        sentences = read_sentence_file(args.sentences)
    hint = minilm.missing()
    if hint is not None:
        raise UserError(hint)
    return sentences


def sentence_task(args: argparse.Namespace, state: Any, sentences: list[str] | None,
                  device: Any, *, retrain: bool) -> Task:
    """MiniLM, the input its teacher: distillation on the sentences (--sentences, else the
    bundled training set), the probe on synthetic token sequences, and the fidelity of the
    rebuilt embeddings on the bundled fidelity set."""
    from vaecompress.tasks.sentence import SentenceTask

    measured = not args.no_eval and args.score is None  # else --score measures it, or nothing
    task = SentenceTask(device, n_eval=None if measured else 0, reference=state,
                        source=args.input)
    out = Task(probe=task.probe(seed=args.seed))
    if _searched_by_task(args):
        out.validation = (task.validation(seed=args.seed) if sentences is None else
                          task.validation(sentences, seed=args.seed, source=args.sentences))
    if retrain:
        out.finetune = task.distiller(sentences, seed=args.seed)
        where = (f"{len(sentences):,} sentences of {args.sentences}" if sentences is not None
                 else f"the {len(task.train_sentences):,} bundled training sentences")
        out.finetune_desc = (f"distilling minilm from the input model (the teacher): 1 - cosine "
                             f"of the embeddings, on {where} "
                             f"({_steps(out.finetune.steps_per_epoch)} an epoch)")
    if measured:
        def describe(fid: dict[str, Any]) -> str:
            return (f"sentence embeddings rebuilt from the file: mean cosine "
                    f"{fid['cos_mean']:.5f} to the input model's (worst {fid['cos_min']:.4f})"
                    f", nearest neighbour kept for {100 * fid['nn_same']:.1f}% "
                    f"(minilm, {fid['n_sentences']:,} sentences of its fidelity set "
                    "tasks/data/eval.txt)")

        out.evaluate, out.describe = task.fidelity, describe
    return out


def mnist_task(args: argparse.Namespace, state: Any, meta: dict[str, str], device: Any, *,
               distill: bool) -> Task:
    """A zoo model or --arch classifier: fine-tuning on MNIST (cross-entropy with --finetune,
    distillation from the input model with --distill), the probe on noise images, and the
    test accuracy of the rebuilt model."""
    retrain = args.finetune or distill
    search = _searched_by_task(args)
    measured = not args.no_eval and args.score is None  # else --score measures it, or nothing
    arch = _mnist_arch(args, state, meta, device, retrain=retrain or search)
    out = Task(probe=_probe(arch, state, device, args.seed))
    train = test = None
    if search and arch is None:
        raise UserError("--max-drop needs the model's task: --score module:function (your "
                        "measure of the weights), --model (a zoo model, or minilm with its "
                        "sentences) or --arch module:Class (your MNIST classifier); the file "
                        "does not name one")
    if arch is not None and (retrain or search or measured):
        # The task is known: its data is loaded before the work, to measure the rebuilt model.
        train, test = _mnist_data(args, retrain=retrain or search)
    if search:
        out.validation = _mnist_validation(args, arch, train, device)
    if retrain:
        # Retraining codecs (prune, deep-compression) need the task: MNIST and the architecture.
        if arch is None:
            flag = "--distill" if distill else "--finetune"
            raise UserError(f"{flag} needs the model's architecture: --model (a zoo model) "
                            "or --arch module:Class (yours); the file does not name one")
        out.finetune, out.finetune_desc = _mnist_finetuner(args, arch, state, train, device,
                                                           distill=distill)
    if test is not None and measured:
        out.evaluate, out.describe = _accuracy_measure(args, arch, state, test, device)
    return out


def _mnist_validation(args: argparse.Namespace, arch: Any, train: Any, device: Any) -> Any:
    """The accuracy on a seeded draw of the training images, which `--max-drop` reads."""
    from vaecompress.tasks.mnist import mnist_validation
    from vaecompress.zoo.arch import load_network

    def network(state: Any) -> Any:
        return load_network(arch, state, source=args.input).to(device)

    return mnist_validation(network, train, seed=args.seed, device=device,
                            normalize=arch.normalize)


def _mnist_arch(args: argparse.Namespace, state: Any, meta: dict[str, str], device: Any, *,
                retrain: bool) -> Any:
    """The classifier's architecture, its weights checked to fit before any work; None when
    nothing names one, or when only the metadata names a model the weights do not fit."""
    try:
        arch = resolve_arch(args, meta)
        if arch is not None:
            load_classifier(arch, state, args.input, device)  # the weights fit, before any work
    except UserError:
        if args.arch or args.model or retrain or args.arch_kwargs is not None \
                or args.normalize is not None:
            raise
        arch = None  # only the metadata names a model, which the weights do not fit: no accuracy
    return arch


def _mnist_data(args: argparse.Namespace, *, retrain: bool) -> tuple[Any, Any]:
    """MNIST's (train, test) splits; (None, None) when they cannot be had and only the
    measurement needed them."""
    from vaecompress.data import load_mnist

    try:
        return load_mnist(args.data_dir)
    except UserError as e:
        if retrain:
            raise
        # Measuring is a courtesy, not the job: offline without MNIST, compress anyway.
        print(f"vaecompress: warning: the rebuilt model's accuracy will not be measured "
              f"({e}); --no-eval silences this", file=sys.stderr)
        return None, None


def _mnist_finetuner(args: argparse.Namespace, arch: Any, state: Any, train: Any, device: Any,
                     *, distill: bool) -> tuple[Any, str | None]:
    """What the codecs retrain on, and the line that says so (None for cross-entropy)."""
    from vaecompress.tasks.mnist import make_finetuner, mnist_distiller
    from vaecompress.zoo.arch import wrapper_prefix

    net = arch.build()
    prefix = wrapper_prefix(list(state), list(net.state_dict()))
    if not distill:
        return make_finetuner(net, train, device=device, seed=args.seed,
                              normalize=arch.normalize, prefix=prefix), None
    finetune = mnist_distiller(net, state, train, device=device, seed=args.seed,
                               normalize=arch.normalize, prefix=prefix)
    return finetune, (f"distilling {arch.name} from the input model (the teacher):"
                      f" KL divergence of the predictions, on {len(train):,} MNIST "
                      f"training images, labels unused "
                      f"({_steps(finetune.steps_per_epoch or 0)} an epoch)")


def _accuracy_measure(
    args: argparse.Namespace, arch: Any, state: Any, test: Any, device: Any,
) -> tuple[Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], str]]:
    """The test accuracies of the input and the rebuilt model (JSON fields), and their line."""

    def evaluate(rebuilt: Any) -> dict[str, Any]:
        return _accuracies(arch, args.input, state, rebuilt, test, device)

    def describe(evals: dict[str, Any]) -> str:
        drop = evals["accuracy_original"] - evals["accuracy_rebuilt"]
        return (f"test accuracy {evals['accuracy_rebuilt']:.2f}% rebuilt from the file, "
                f"{evals['accuracy_original']:.2f}% before ("
                f"{f'{drop:.2f} points lost' if drop >= 0 else f'{-drop:.2f} points gained'}; "
                f"{arch.name}, {evals['n_test']:.0f} MNIST test images)")

    return evaluate, describe


def _probe(arch: Any, state: Any, device: Any, seed: int) -> Any:
    """The classifier run on synthetic images, for codecs that weigh tensors by what they do
    to the outputs (the default codec); None when the architecture is not known."""
    if arch is None:
        return None
    from vaecompress.tasks.mnist import mnist_probe
    from vaecompress.zoo.arch import wrapper_prefix

    net = arch.build()
    return mnist_probe(net, normalize=arch.normalize, seed=seed,
                       prefix=wrapper_prefix(list(state), list(net.state_dict())), device=device)


def _accuracies(arch: Any, source: str, original: Any, rebuilt: Any, test: Any,
                device: Any) -> dict[str, float]:
    from vaecompress.tasks.mnist import accuracy
    from vaecompress.zoo.arch import load_network

    out: dict[str, float] = {"n_test": float(len(test))}
    for key, state in (("accuracy_original", original), ("accuracy_rebuilt", rebuilt)):
        net = load_network(arch, state, source=source)
        out[key] = accuracy(net, test, device=device, normalize=arch.normalize)
    return out
