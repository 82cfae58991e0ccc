"""The commands about the zoo's models and their data: `data` (MNIST), `zoo` (the list),
`train` (a zoo model) and `evaluate` (the test accuracy of any MNIST classifier's weights).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from vaecompress.cli.arch import load_classifier, resolve_arch
from vaecompress.cli.common import print_json
from vaecompress.errors import UserError


def cmd_data(args: argparse.Namespace) -> int:
    from vaecompress.data import ensure_mnist

    info = ensure_mnist(args.data_dir)
    print_json(info) if args.json else print(
        f"MNIST ({info['train']} train / {info['test']} test) from {info['source']}: {info['path']}"
    )
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from vaecompress.zoo import MODELS  # the registry alone: no torch

    rows = [{"name": s.name, "params": s.params, "neurons": list(s.neurons)}
            for s in MODELS.values()]
    if args.json:
        print_json(rows)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vaecompress.data import load_mnist
    from vaecompress.io import load_weights_file
    from vaecompress.runinfo import resolve_device
    from vaecompress.tasks.mnist import accuracy

    state, meta = load_weights_file(args.file, key=args.key)
    arch = resolve_arch(args, meta)
    if arch is None:
        raise UserError(f"{args.file} does not say which model it holds; pass --model (a zoo "
                        "model) or --arch module:Class (your own)")
    device = resolve_device(args.device)
    net = load_classifier(arch, state, args.file, device)
    _, test = load_mnist(args.data_dir)
    acc = accuracy(net, test, device=device, normalize=arch.normalize)
    if args.json:
        print_json({"model": arch.name, "accuracy": acc, "n": len(test)})
    else:
        print(f"{arch.name}: test accuracy {acc:.2f}% on {len(test)} images")
    return 0
