"""Which network a weights file belongs to, from the command line: --arch (the user's class, with
--arch-kwargs and --normalize), else --model, else the zoo model the file's metadata names
(`zoo.arch`), and the network built with the weights, checked to be an MNIST classifier.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from vaecompress.errors import UserError


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


def resolve_arch(args: argparse.Namespace, meta: dict[str, str]) -> Any:
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


def load_classifier(arch: Any, state: Any, source: str, device: Any) -> Any:
    """A network of `arch` holding `state`, checked to be an MNIST classifier."""
    from vaecompress.tasks.mnist import check_classifier
    from vaecompress.zoo.arch import load_network

    net = load_network(arch, state, source=source)
    if not arch.zoo:
        check_classifier(net, device=device, name=arch.name)
    return net
