"""Which network a state_dict belongs to: a zoo model by name, or a class from the user's code.

An `Arch` says how to build the network and how it wants its MNIST images. `zoo_arch("cnn")`:
a zoo model, images normalized with MNIST's mean and std as the zoo was trained.
`import_arch("my_mlp:MyMLP")`: a class (or a function returning an `nn.Module`) importable from
the working directory or PYTHONPATH, built without arguments or with `kwargs`; its images lie
in [0, 1] unless `normalize=(mean, std)` says otherwise. Importing runs the user's module, as
`python -c "import my_mlp"` would: only a name the user typed is ever imported, never one read
from a file.

`fit_state` checks a state_dict against a built network as `load_state_dict(strict=True)`
does, but names the first few missing, unexpected and misshapen tensors in one line. A prefix
on every name of the state_dict and on none of the network's (`module.` of DataParallel and
DDP, `_orig_mod.` of torch.compile) is dropped for the fit, never in the files: a rebuilt file
keeps the names of its input.

Boundary: resolving, building and loading. What the network is measured and fine-tuned on is
the task's (`tasks.mnist`: accuracy, `make_finetuner`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vaecompress.errors import UserError
from vaecompress.io import StateDict
from vaecompress.usercode import first_line, import_named
from vaecompress.zoo.models import get_spec
from vaecompress.zoo.train import ZOO_NORMALIZE

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
SHOWN = 3  # names an error lists of each kind


@dataclass(frozen=True)
class Arch:
    """A network to load weights into: its name in reports, how to build it, its inputs."""

    name: str  # "cnn", "my_mlp:MyMLP"
    build: Callable[[], nn.Module] = field(repr=False)
    normalize: tuple[float, float] | None  # (mean, std) for images x / 255; None: [0, 1]
    zoo: bool = False


def zoo_arch(name: str) -> Arch:
    spec = get_spec(name)
    return Arch(spec.name, spec.build, ZOO_NORMALIZE, zoo=True)


def import_arch(spec: str, *, kwargs: Mapping[str, Any] | None = None,
                normalize: tuple[float, float] | None = None) -> Arch:
    """The class (or factory) `module.path:Name` of the user's code, found now (UserError if
    it cannot be imported, is missing or is not an nn.Module class) and built by `Arch.build`.
    The working directory is put on `sys.path` first, as for `python -c`."""
    try:
        obj = import_named(spec, "ClassName", "my_mlp:MyMLP")
    except UserError as e:
        raise UserError(f"--arch: {e}") from None
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise UserError(f"'{spec}' is a class but not a torch.nn.Module")
    if not callable(obj):
        raise UserError(f"'{spec}' is a {type(obj).__name__}, not a torch.nn.Module class")
    args = dict(kwargs or {})

    def build() -> nn.Module:
        try:
            net = obj(**args)
        except Exception as e:  # the user's constructor refused its arguments
            shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
            raise UserError(f"building {spec}({shown}) failed: {type(e).__name__}: "
                            f"{first_line(e)}") from None
        if not isinstance(net, nn.Module):
            raise UserError(f"'{spec}' made a {type(net).__name__}, not a torch.nn.Module")
        return net

    return Arch(spec, build, normalize)


def wrapper_prefix(names: Sequence[str], expected: Sequence[str]) -> str:
    """The wrapper prefixes (`module.`, `_orig_mod.`, nested) that every one of `names`
    carries and none of the network's `expected` names does; "" when there is none."""
    prefix = ""
    while names:
        for w in WRAPPER_PREFIXES:
            if all(n.startswith(prefix + w) for n in names) and \
                    not any(e.startswith(w) for e in expected):
                prefix += w
                break
        else:
            break
    return prefix


def _few(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def fit_state(net: nn.Module, state: Mapping[str, torch.Tensor], *, name: str,
              source: str) -> StateDict:
    """`state` under the network's own names (a wrapper prefix dropped), checked to hold
    exactly the network's tensors in its shapes; else one UserError naming the first few
    missing, unexpected and misshapen tensors."""
    expected = net.state_dict()
    prefix = wrapper_prefix(list(state), list(expected))
    fitted = {k[len(prefix):]: v for k, v in state.items()}
    missing = [f"'{k}'" for k in expected if k not in fitted]
    unexpected = [f"'{k}'" for k in fitted if k not in expected]
    shapes = [f"'{k}' {tuple(fitted[k].shape)} where the model has {tuple(v.shape)}"
              for k, v in expected.items() if k in fitted and fitted[k].shape != v.shape]
    problems = [f"{what} {_few(items)}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)) if items]
    if problems:
        raise UserError(f"{source} does not hold {name} weights: {'; '.join(problems)}")
    return fitted


def load_network(arch: Arch, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """A new `arch` network holding `state` (strict: every tensor, no other), in eval mode."""
    net = arch.build()
    fitted = fit_state(net, state, name=arch.name, source=source)
    try:
        net.load_state_dict(fitted)
    except RuntimeError as e:  # e.g. a tensor whose dtype cannot be copied into the network's
        raise UserError(f"{source} does not load into {arch.name}: {first_line(e)}") from None
    return net.eval()
