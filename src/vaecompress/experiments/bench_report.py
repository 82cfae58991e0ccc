"""`bench.md` and `rate_accuracy.png` drawn from `bench.json` alone.

For each model: every operating point (honest and paper ratio, accuracy, timings) and, per
method, the best honest ratio reached within 0.5 and within 1 point of the original accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vaecompress.experiments.formatting import fmt_ratio3, fmt_seconds, fmt_settings
from vaecompress.files import atomic_write, atomic_write_text
from vaecompress.format import FORMAT_VERSION

# Records made before a record kept its format were written in format 3.
FORMAT_BEFORE = 3


def record_formats(recs: list[dict[str, Any]]) -> str:
    """Which container formats the records' files were written in, for a report's provenance
    line: a record is reused across revisions, and an older format's header may be larger
    (docs/format.md, version 4)."""
    found = sorted({int(r.get("format_version", FORMAT_BEFORE)) for r in recs})
    text = f"files written in format {', '.join(map(str, found))}"
    if found and found[0] < FORMAT_VERSION:
        text += (f" (format {FORMAT_VERSION} writes the same payloads under a smaller header: "
                 "results/header-bytes)")
    return text

TOLERANCES = (0.5, 1.0)
# The data-free sweep also asks what is near-lossless (issue 18).
DATAFREE_TOLERANCES = (0.1, 0.5, 1.0)


def tolerances(results: dict[str, Any]) -> tuple[float, ...]:
    """The accuracy drops (points) a report's tables are drawn at."""
    return DATAFREE_TOLERANCES if results["config"]["preset"] == "datafree" else TOLERANCES


def _tol_words(tols: tuple[float, ...]) -> str:
    return " / ".join(f"{t:g}" for t in tols)


def method_of(r: dict[str, Any]) -> tuple[str, bool]:
    """(method name, uses training data) of a record: the codec's own word on its settings
    (nncodec with pruning is its own method); a codec unknown here is its name."""
    from vaecompress.codecs import REGISTRY

    cls = REGISTRY.get(r["codec"])
    if cls is None:
        return r["codec"], False
    return cls.method(r.get("codec_settings") or r["settings"])


def best_within(records: list[dict[str, Any]], tol: float) -> dict[tuple[str, str], dict | None]:
    """(model, method) -> the record with the highest ratio_honest whose drop is <= tol."""
    best: dict[tuple[str, str], dict | None] = {}
    for r in records:
        key = (r["model"], method_of(r)[0])
        current = best.setdefault(key, None)
        if r["acc_drop"] <= tol and (
            current is None or r["ratio_honest"] > current["ratio_honest"]
        ):
            best[key] = r
    return best


def plot_rate_accuracy(results: dict[str, Any], path: Path) -> None:
    recs = results["records"]
    models = list(dict.fromkeys(r["model"] for r in recs))
    codecs = list(dict.fromkeys(method_of(r)[0] for r in recs))
    cols = min(2, len(models)) or 1
    rows = (len(models) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(codecs)}
    for ax, model in zip(axes.flat, models, strict=False):
        mrecs = [r for r in recs if r["model"] == model]
        for codec in codecs:
            pts = sorted((r["ratio_honest"], r["acc_recon"]) for r in mrecs
                         if method_of(r)[0] == codec)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=codec, color=colors[codec], ms=4)
        acc = mrecs[0]["acc_orig"]
        ax.axhline(acc, color="k", lw=0.8, ls="--", label="original")
        ax.axhspan(acc - 1.0, acc, color="0.9", zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, acc - 8.0), min(100.0, acc + 1.5))
        ax.set_title(f"{model.upper()} (shaded: within 1 point)")
        ax.set_xlabel("honest compression ratio (original bytes / all bytes stored)")
        ax.set_ylabel("test accuracy of the rebuilt model (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120,
                                                 metadata={"Software": None}))
    finally:
        plt.close(fig)


def write_summary_table(results: dict[str, Any]) -> str:
    """Per model and method: the best honest ratio within each tolerance."""
    recs = results["records"]
    tols = tolerances(results)
    models = list(dict.fromkeys(r["model"] for r in recs))
    methods = dict(method_of(r) for r in recs)
    codecs = list(methods)
    best = {tol: best_within(recs, tol) for tol in tols}
    heads = [f"{c} (data)" if methods[c] else c for c in codecs]
    summary = [
        f"## Best honest ratio within {_tol_words(tols)} point of the original accuracy",
        "",
        "Methods marked (data) train on the task's data at compression time; the others need "
        "the weights alone.",
        "",
        "| model | acc_orig | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(codecs),
    ]
    for m in models:
        acc = next(r["acc_orig"] for r in recs if r["model"] == m)
        cells = []
        for c in codecs:
            vals = [best[t].get((m, c)) for t in tols]
            cells.append(" / ".join(fmt_ratio3(v["ratio_honest"]) if v else "-" for v in vals))
        summary.append(f"| {m} | {acc:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(summary)


def write_ablation_table(results: dict[str, Any]) -> str:
    """Per model and codec: the reference point (its first ablation point) and each variant,
    with what changing that one ingredient did to the honest ratio and to accuracy."""
    recs = results["records"]
    grids = results["config"].get("grid", {})
    lines = ["## Ablation: one ingredient changed at a time", "",
             "| model | codec | variant | acc_recon | drop | ratio_honest | vs reference | "
             "bits/param | file_bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in recs):
        for codec, points in grids.items():
            rows = [r for r in recs if r["model"] == model and r["codec"] == codec]
            if not rows or not points:
                continue
            ref = next((r for r in rows if r["settings"] == points[0]), rows[0])
            for r in rows:
                diff = {k: v for k, v in r["settings"].items() if ref["settings"].get(k) != v}
                name = ("reference: " + fmt_settings(ref["settings"]) if r is ref
                        else fmt_settings(diff))
                rel = r["ratio_honest"] / ref["ratio_honest"]
                lines.append(
                    f"| {model} | {codec} | {name} | {r['acc_recon']:.2f} | "
                    f"{r['acc_drop']:+.2f} | {fmt_ratio3(r['ratio_honest'])} | "
                    f"{'-' if r is ref else f'{rel:.2f}x'} | {r['bits_per_param']:.3f} | "
                    f"{r['file_bytes']:,} |")
    return "\n".join(lines)


def leaders(results: dict[str, Any]) -> str:
    """One sentence per tolerance, drawn from the records: per model, the method with the best
    honest ratio within the tolerance and its margin over the runner-up."""
    recs = results["records"]
    models = list(dict.fromkeys(r["model"] for r in recs))
    tols = tolerances(results)
    out = []
    for tol in tols:
        best = best_within(recs, tol)
        parts = []
        for m in models:
            ranked = sorted(((v["ratio_honest"], k[1]) for k, v in best.items()
                             if k[0] == m and v is not None), reverse=True)
            if not ranked:
                continue
            (r1, m1), rest = ranked[0], ranked[1:]
            margin = f", {r1 / rest[0][0]:.2f} times {rest[0][1]} ({fmt_ratio3(rest[0][0])})" \
                if rest else ""
            parts.append(f"{m.upper()} {m1} {fmt_ratio3(r1)}{margin}")
        out.append(f"Within {tol:g} point: " + "; ".join(parts) + ".")
    methods = dict(method_of(r) for r in recs)
    free = []
    for m in models:
        cells = []
        for tol in tols:
            best = best_within(recs, tol)
            ranked = sorted(((v["ratio_honest"], k[1]) for k, v in best.items()
                             if k[0] == m and v is not None and not methods[k[1]]),
                            reverse=True)
            cells.append(f"{ranked[0][1]} {fmt_ratio3(ranked[0][0])}" if ranked else "-")
        free.append(f"{m.upper()} " + " / ".join(cells))
    out.append(f"Among methods that need the weights alone (within {_tol_words(tols)} point): "
               + "; ".join(free) + ".")
    return " ".join(out)


def default_records(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, the record of the default codec at its default settings (what
    `vaecompress compress` writes for a zoo model), when the sweep has it."""
    from vaecompress.codecs import DEFAULT_CODEC, make_codec

    default = make_codec(DEFAULT_CODEC).settings_json()
    return {r["model"]: r for r in results["records"]
            if r["codec"] == DEFAULT_CODEC and _at(r.get("codec_settings"), default)}


def _at(settings: dict[str, Any] | None, default: dict[str, Any]) -> bool:
    """Whether a record's resolved settings are `default`. A setting the record predates counts
    as at its default: a codec adds a setting only with a default that does what it did
    before (its golden digest's rule), as `vae-rd-free`'s `rounding=nearest` does."""
    return settings is not None and set(settings) <= set(default) and all(
        settings.get(k, v) == v for k, v in default.items())


def default_point(results: dict[str, Any]) -> str:
    """The default's own point on each model, against NNCodec's smallest file that loses no
    more accuracy (the same fidelity) and its smallest within 0.1 point."""
    from vaecompress.codecs import DEFAULT_CODEC

    recs = results["records"]
    lines = [f"## The default (`vaecompress compress`, no settings: {DEFAULT_CODEC})", "",
             "| model | ratio_honest | drop | compress_s | nncodec at no larger drop | "
             "nncodec within 0.1 |", "|---|---|---|---|---|---|"]
    for model, d in default_records(results).items():
        peer = [r for r in recs if r["model"] == model and method_of(r)[0] == "nncodec"]

        def best(limit: float, peer: list[dict[str, Any]] = peer) -> str:
            ok = [r for r in peer if r["acc_drop"] <= limit]
            if not ok:
                return "-"
            top = max(ok, key=lambda r: r["ratio_honest"])
            return f"{fmt_ratio3(top['ratio_honest'])} ({fmt_settings(top['settings'])})"

        lines.append(f"| {model} | {fmt_ratio3(d['ratio_honest'])} | {d['acc_drop']:+.2f} | "
                     f"{d['compress_s']:.1f} | {best(max(d['acc_drop'], 0.0))} | "
                     f"{best(0.1)} |")
    return "\n".join(lines)


def write_bench_report(results: dict[str, Any], out: Path) -> str:
    """Write bench.md and rate_accuracy.png; returns the summary table (also printed)."""
    recs = results["records"]
    env = results["environment"]
    lines = [
        "# vaecompress bench",
        "",
        f"Preset `{results['config']['preset']}`, seed {results['config']['seed']}, device "
        f"{env['device']}, git {env['git_revision']}, torch {env['torch']}, "
        f"{env['time_utc']}. Every ratio counts the bytes actually written; accuracy is "
        "measured on the model rebuilt from those bytes alone.",
        "",
    ]
    revs = sorted({str(r.get("git_revision")) for r in recs})
    lines += [f"Records measured at revision(s): {', '.join(revs)}; {record_formats(recs)}.",
              ""]
    for codec, hint in results.get("skipped", {}).items():
        lines.append(f"- skipped `{codec}`: {hint}")
    models = list(dict.fromkeys(r["model"] for r in recs))
    summary = write_summary_table(results)
    lines += ["", summary, "", "**Best method per model.** " + leaders(results), "",
              "![rate against accuracy](rate_accuracy.png)", ""]
    if results["config"]["preset"] == "ablation":
        lines += [write_ablation_table(results), ""]
    if results["config"]["preset"] == "datafree":
        lines += [default_point(results), ""]
    lines += [
        "## Every operating point",
        "",
        "| model | codec | settings | acc_recon | drop | ratio_honest | ratio_paper | "
        "file_bytes | external_bytes | bits/param | compress_s | decompress_s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(recs, key=lambda r: (models.index(r["model"]), r["codec"], r["ratio_honest"])):
        peak = r.get("peak_cuda_bytes") or r.get("peak_rss_bytes")
        peak_s = f"{peak / 2**20:.0f}" if peak else "-"
        lines.append(
            f"| {r['model']} | {r['codec']} | {fmt_settings(r['settings'])} | "
            f"{r['acc_recon']:.2f} | {r['acc_drop']:+.2f} | {fmt_ratio3(r['ratio_honest'])} | "
            f"{fmt_ratio3(r['ratio_paper'])} | "
            f"{r['file_bytes']:,} | {r['external_bytes']:,} | {r['bits_per_param']:.3f} | "
            f"{fmt_seconds(r, 'compress_s')} | {fmt_seconds(r, 'decompress_s')} | "
            f"{peak_s} |"
        )
    lines.append("")
    plot_rate_accuracy(results, out / "rate_accuracy.png")
    atomic_write_text(out / "bench.md", "\n".join(lines))
    return summary
