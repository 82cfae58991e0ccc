"""Tables of the scaling benchmark (`benchmarks/scaling.py`), drawn from its JSON alone.

    python benchmarks/scaling_report.py benchmarks/results/scaling-cpu.json

prints the block that `benchmarks/README.md` shows between `<!-- generated:scaling -->` and
`<!-- /generated:scaling -->` (a test compares them); the README's MiniLM section shows
`growth_table`.
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
             "peak above base MiB | bytes / param | target MiB | target met | "
             "peak of its worker process MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(results["codecs"])
    for r in sorted(results["rows"], key=lambda r: (order.index(r["codec"]), r["params"])):
        met = "yes" if r["memory_target_met"] else f"no ({r['memory_over_target']:.2f}x)"
        # A peer that codes in a process of its own (NNCodec): that process's peak, apart.
        peer = r["compress"].get("peak_child_rss_bytes") if r["codec"] == "nncodec" else None
        child = _mib(peer) if peer else "-"
        lines.append(
            f"| {r['codec']} | {r['model']} | {r['params']:,} | {r['compress']['wall_s']:.1f} | "
            f"{r['compress_s_per_mparam']:.2f} | {r['decompress']['wall_s']:.2f} | "
            f"{_mib(r['compress_peak_above_base_bytes'])} | "
            f"{r['compress_peak_above_base_per_param']:.1f} | "
            f"{_mib(r['memory_target_bytes'])} | {met} | {child} |")
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


def marginal_per_param(codec: str) -> float:
    """Issue 12's memory target per added parameter: 3 float32 copies, plus for vae-rd-free
    its per-weight latents with their gradients and two Adam moments (vae-paper's VAE is the
    same size whatever the model, so it adds nothing per parameter)."""
    return 12.0 + (16.0 if codec == "vae-rd-free" else 0.0)


def marginal_table(results: dict[str, Any]) -> str:
    """Per codec, between the two largest sizes: the memory and time each added parameter
    costs (differences, so the interpreter's and the libraries' fixed costs cancel), against
    the target per parameter; and the fixed part at the smallest size."""
    lines = ["| codec | sizes compared | added peak bytes / added param | target bytes / param | "
             "per-param target | compress s / added M params | decompress s / added M params "
             "| peak above base at the smallest size |", "|---|---|---|---|---|---|---|---|"]
    for codec in results["analysis"]:
        rs = sorted((r for r in results["rows"] if r["codec"] == codec),
                    key=lambda r: r["params"])
        if len(rs) < 2:
            continue
        a, b = rs[-2], rs[-1]
        dn = b["params"] - a["params"]
        mem = (b["compress_peak_above_base_bytes"] - a["compress_peak_above_base_bytes"]) / dn
        target = marginal_per_param(codec)
        met = "met" if mem <= target else f"missed ({mem / target:.2f}x)"
        ct = (b["compress"]["wall_s"] - a["compress"]["wall_s"]) / dn * 1e6
        dt = (b["decompress"]["wall_s"] - a["decompress"]["wall_s"]) / dn * 1e6
        lines.append(
            f"| {codec} | {a['model']} -> {b['model']} | {mem:.1f} | {target:.0f} | {met} | "
            f"{ct:.2f} | {dt:.3f} | {_mib(rs[0]['compress_peak_above_base_bytes'])} MiB "
            f"({rs[0]['model']}) |")
    return "\n".join(lines)


def provenance(results: dict[str, Any]) -> str:
    env = results["environment"]
    threads = sorted({r[op]["torch_threads"] for r in results["rows"]
                      for op in ("compress", "decompress")})
    return (f"made by `{results['command']}` (git `{env.get('git_revision')}`, cpu, workers "
            f"with {'/'.join(map(str, threads))} torch thread(s), torch {env.get('torch')}, "
            f"{env.get('time_utc')}; {results['run_s']:.0f} s)")


def block(results: dict[str, Any]) -> str:
    """Everything the benchmark says, as benchmarks/README.md shows it."""
    failed = [f"{f['codec']} on {f['model']}" for f in results.get("failed", [])]
    skipped = [f"{k} ({v})" for k, v in results.get("skipped", {}).items()]
    notes = [f"Failed: {', '.join(failed)}." if failed else "",
             f"Skipped: {'; '.join(skipped)}." if skipped else ""]
    return "\n".join(["From `benchmarks/results/scaling-cpu.json`, " + provenance(results) + ".",
                      *(n for n in notes if n), "", rows_table(results), "",
                      growth_table(results), "", marginal_table(results), ""])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/scaling_report.py RESULTS.json",
              file=sys.stderr)
        return 2
    res = json.loads(Path(args[0]).read_text())
    print(block(res), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
