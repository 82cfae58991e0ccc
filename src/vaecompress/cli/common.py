"""What the commands share: printing (JSON, ratios), repeatable NAME=VALUE flags, and the model
the receiver already has (--base).

Boundary: parsing and printing; what reads a file imports its module when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from vaecompress.errors import UserError


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
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


def read_base(args: argparse.Namespace) -> Any:
    """The state_dict of `--base FILE` (the model the receiver already has), or None."""
    from vaecompress.io import load_weights_file

    return load_weights_file(args.base)[0] if args.base else None
