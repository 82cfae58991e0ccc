"""How numbers look in the generated markdown: ratios, accuracies, counts, seconds, spans and
tables. Pure string formatting, shared by the reproduction report, the README block and prose."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_ratio(x: Any) -> str:
    """A compression ratio: 3 significant figures at most, never scientific notation."""
    if not finite(x):
        return "inf" if isinstance(x, float) and math.isinf(x) else "—"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2g}"


def fmt_acc(x: Any) -> str:
    return f"{x:.2f}" if finite(x) else "—"


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if finite(x) else "—"


def fmt_s(x: Any) -> str:
    if not finite(x):
        return "—"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def span(values: Sequence[float | None], fmt: Any = fmt_ratio) -> str:
    """"X" when every value formats the same, else "X-Y" (min-max); values that are not finite
    numbers (None among them) are left out."""
    vals = [v for v in values if v is not None and finite(v)]
    if not vals:
        return "—"
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}-{hi}"


def signed_range(values: Sequence[float], fmt: Any = fmt_acc) -> str:
    """"from -0.12 to +0.05" for values of both signs, where "-0.12-0.05" would misread."""
    vals = [v for v in values if finite(v)]
    if not vals:
        return "—"

    def sign(x: float) -> str:
        s = fmt(x)
        if s.strip("-+0.") == "":  # zero as printed: no sign
            return s.lstrip("-+")
        return s if s.startswith("-") else f"+{s}"

    lo, hi = sign(min(vals)), sign(max(vals))
    return lo if lo == hi else f"from {lo} to {hi}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]],
           align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def model_name(model: str) -> str:
    return model.upper()


def fmt_settings(point: dict[str, Any]) -> str:
    """A codec's settings as `k=v, ...` ("defaults" when none)."""
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def fmt_ratio3(x: float) -> str:
    """A ratio to three significant digits, e.g. 12.3x."""
    return f"{x:.3g}x"


def fmt_seconds(r: dict[str, Any], key: str) -> str:
    """A record's time `key`, with the time inside a peer's worker process when it reported one
    (that is its coder; the rest is the process start)."""
    inside = r.get(f"{key}_inside_worker")
    text = f"{r[key]:.2f}" if key == "decompress_s" else f"{r[key]:.1f}"
    return text + (f" ({inside:.2f} in worker)" if inside is not None else "")
