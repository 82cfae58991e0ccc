"""The command line: a thin layer over the library, callable from tests as `main(argv)`.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal error.
Set VAECOMPRESS_DEBUG=1 to see the traceback of an internal error. Heavy modules (torch, the
codecs, matplotlib) are imported inside the commands that use them, so `--help` and `zoo`
start fast.

The package: `parser` (the grammar), one module per group of commands (`models`: data, zoo,
train, evaluate; `compress`, with the model's task in `tasks`; `decompress`: decompress,
inspect; `experiments`: reproduce, bench), what they share (`common`, `arch`), and here the
process around a command: threads, signals, warnings, torchrun, errors and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from vaecompress.cli import compress, decompress, models
from vaecompress.cli.compress import parse_size
from vaecompress.cli.parser import build_parser
from vaecompress.errors import UserError

__all__ = ["build_parser", "main", "parse_size"]


def _process_group(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """Under torchrun (`WORLD_SIZE` set), `compress` runs in the process group of its
    processes, which share the VAE's training (docs/distributed.md); no other command does."""
    if "WORLD_SIZE" not in os.environ:  # checked first: the light commands import no torch
        return contextlib.nullcontext()
    from vaecompress.training import distributed

    if not distributed.launched():
        return contextlib.nullcontext()
    if args.func is not compress.cmd_compress:
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
    if args is None or args.func not in (models.cmd_train, compress.cmd_compress):
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
        if args.func not in (models.cmd_zoo, decompress.cmd_inspect):  # commands that compute
            from vaecompress.runinfo import (
                COMPRESS_MMAP_THRESHOLD,
                MMAP_THRESHOLD,
                auto_threads,
                release_large_frees,
            )

            auto_threads()
            # a training's freed tensors are not kept under the next; `compress` gives back
            # smaller blocks too, for its memory, at some of its time (runinfo)
            release_large_frees(COMPRESS_MMAP_THRESHOLD if args.func is compress.cmd_compress
                                else MMAP_THRESHOLD)
        with warnings.catch_warnings(), _process_group(args):
            warnings.showwarning = _one_line_warning
            # A library's deprecations are its users' business, not this command's: hidden as
            # Python hides them outside __main__, also when the command runs inside a test.
            warnings.simplefilter("ignore", DeprecationWarning)
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
