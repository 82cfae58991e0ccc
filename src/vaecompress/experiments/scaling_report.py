"""Tables of the scaling benchmark (`benchmarks/scaling.py`), drawn from its JSON alone.

    python -m vaecompress.experiments.scaling_report benchmarks/results/scaling-cpu.json

prints the tables that `benchmarks/README.md` and the README's MiniLM section show.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _slope(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def rows_table(results: dict[str, Any]) -> str:
    """Per codec and size: times, per million parameters, and peak memory against the target."""
    lines = ["| codec | model | params | compress s | s / M params | decompress s | "
             "peak above base MiB | bytes / param | target MiB | target met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(results["codecs"])
    for r in sorted(results["rows"], key=lambda r: (order.index(r["codec"]), r["params"])):
        met = "yes" if r["memory_target_met"] else f"no ({r['memory_over_target']:.2f}x)"
        lines.append(
            f"| {r['codec']} | {r['model']} | {r['params']:,} | {r['compress']['wall_s']:.1f} | "
            f"{r['compress_s_per_mparam']:.2f} | {r['decompress']['wall_s']:.2f} | "
            f"{_mib(r['compress_peak_above_base_bytes'])} | "
            f"{r['compress_peak_above_base_per_param']:.1f} | "
            f"{_mib(r['memory_target_bytes'])} | {met} |")
    return "\n".join(lines)


def growth_table(results: dict[str, Any]) -> str:
    """Per codec: log-log slopes (1 = linear) and the memory target at every size."""
    lines = ["| codec | compress time slope (all sizes / two largest) | decompress time slope "
             "(all / two largest) | memory slope (two largest) | memory target at every size |",
             "|---|---|---|---|---|"]
    for codec, a in results["analysis"].items():
        met = "met" if a["memory_target_met"] else \
            f"missed (worst {a['worst_memory_over_target']:.2f}x the target)"
        lines.append(
            f"| {codec} | {_slope(a['compress_time_slope_all'])} / "
            f"{_slope(a['compress_time_slope_top2'])} | "
            f"{_slope(a['decompress_time_slope_all'])} / "
            f"{_slope(a['decompress_time_slope_top2'])} | "
            f"{_slope(a['compress_memory_slope_top2'])} | {met} |")
    return "\n".join(lines)


def provenance(results: dict[str, Any]) -> str:
    env = results["environment"]
    return (f"made by `{results['command']}` (git `{env.get('git_revision')}`, cpu with "
            f"{env.get('torch_threads')} torch thread(s), torch {env.get('torch')}, "
            f"{env.get('time_utc')}; {results['run_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vaecompress.experiments.scaling_report RESULTS.json",
              file=sys.stderr)
        return 2
    res = json.loads(Path(args[0]).read_text())
    print(provenance(res), "", rows_table(res), "", growth_table(res), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
