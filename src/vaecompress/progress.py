"""Progress of long loops: a tqdm bar on a terminal, plain periodic lines anywhere else.

Every long loop of the library (classifier training, VAE training, fine-tuning, the RD codecs'
optimization, `reproduce`) reports through `progress(...)`. On a terminal it draws a tqdm bar.
When the stream is not a terminal (a log file, a pipe, CI), bars would turn into kilobytes of
carriage returns and escape codes, so it writes one plain line each time another tenth of the
work is done or `every_s` seconds have passed, and a last line when the loop ends, e.g.

    vae fnn l64: epoch 120, best 98 (val -ELBO -3270), patience 12 left, 41 s

A loop whose length is not known in advance (the VAE's early stopping) passes `total=None` and
says what is known in its status (best epoch, patience left) instead of an ETA to its cap.
The object mimics the part of tqdm's interface the loops use: `update`, `set_postfix`,
`set_status`, `close`, and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

EVERY_S = 30.0  # at most this long between two plain lines
MIN_GAP_S = 2.0  # and no two plain lines closer than this (fast loops print little)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _fmt_postfix(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in fields.items())


class Progress:
    """One loop's progress; see the module docstring. Disabled, every method does nothing."""

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it",
                 enabled: bool = True, stream: TextIO | None = None, every_s: float = EVERY_S,
                 leave: bool = False) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.status = ""
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._t0 = self._last = time.monotonic()
        self._next_tenth = 1
        self._closed = False
        self._bar: Any = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            fmt = None if total else "{desc}: {unit} {n_fmt}{postfix} [{elapsed}]"
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=self.stream,
                             bar_format=fmt, dynamic_ncols=True)

    # -- the loop's side -------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._maybe_line()

    def set_status(self, text: str) -> None:
        """What is known besides the count (best epoch, loss, patience left)."""
        if not self.enabled:
            return
        self.status = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def set_postfix(self, **fields: Any) -> None:
        """tqdm's spelling: `set_postfix(loss="0.12")` shows as "loss 0.12"."""
        self.set_status(_fmt_postfix(fields))

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.n:
            self._line(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain lines -----------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        """The plain line for the current state."""
        elapsed = time.monotonic() - self._t0
        count = f"{self.unit} {self.n}"
        if self.total:
            count += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        parts = [count] + ([self.status] if self.status else [])
        parts.append(f"{elapsed:.0f} s" + (", done" if final else ""))
        return f"{self.desc}: " * bool(self.desc) + ", ".join(parts)

    def _line(self, final: bool = False) -> None:
        self.stream.write(self.line(final) + "\n")
        self.stream.flush()
        self._last = time.monotonic()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        tenth = False
        if self.total:
            while self.n * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
                tenth = True
        since = now - self._last
        if since >= MIN_GAP_S and (tenth or since >= self.every_s):
            self._line()


def progress(total: int | None = None, *, desc: str = "", unit: str = "it",
             enabled: bool = True, stream: TextIO | None = None,
             every_s: float = EVERY_S) -> Progress:
    """A progress reporter for a loop of `total` steps (None: not known in advance)."""
    return Progress(total, desc=desc, unit=unit, enabled=enabled, stream=stream,
                    every_s=every_s)
