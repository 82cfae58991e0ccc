"""The figures of `vaecompress reproduce`, drawn from the records of `results.json`.

Module boundary: plotting only. Each function takes already-selected records (plain dicts as
written by `experiments.reproduce`) or arrays, and a target path; it draws one PNG and writes it
atomically (`io.atomic_write`). Nothing here reads results files,
loads MNIST or decides what goes in the report: that is `experiments.report`. Output is
deterministic: Agg backend, fixed figure sizes, dpi 120, no software/time metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from vaecompress.io import atomic_write

DPI = 120
Record = Mapping[str, Any]

_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#ff7f0e"
_WRONG = "#d62728"
_DISAGREE = "#ff7f0e"


def _save(fig: Figure, path: Path) -> None:
    """Write `fig` as PNG to `path` through a temp file and a rename, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI,
                                                 metadata={"Software": None}))
    finally:
        plt.close(fig)


def _label(model: str) -> str:
    return model.upper()


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _loss_scale(values: Sequence[float]) -> tuple[str, dict[str, float]]:
    """Pick one y scale for all loss panels: linear for a narrow positive range, log for a wide
    positive one, symlog when the -ELBO crosses zero (it can: the Gaussian likelihood is a
    density). Returns the scale name and its keyword arguments."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if v.size == 0:
        return "linear", {}
    lo, hi = float(v.min()), float(v.max())
    big = max(abs(lo), abs(hi))
    if lo <= 0:
        if big <= 0:
            return "linear", {}
        return "symlog", {"linthresh": max(1.0, 10 ** math.floor(math.log10(big)) * 1e-3)}
    if hi / lo > 30:
        return "log", {}
    return "linear", {}


def fig_vae_training(records: Sequence[Record], path: Path) -> None:
    """Figure 2: train and validation loss (-ELBO per chunk) per epoch, one panel per model."""
    n = max(4, len(records))
    ncols = 2
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 3.6 * nrows), squeeze=False)
    flat = list(axes.ravel())
    every: list[float] = []
    for rec in records:
        hist = rec.get("history") or {}
        every += list(hist.get("train_loss") or []) + list(hist.get("val_loss") or [])
    scale, kw = _loss_scale(every)
    for ax, rec in zip(flat, records, strict=False):
        hist = rec.get("history") or {}
        tr = list(hist.get("train_loss") or [])
        va = list(hist.get("val_loss") or [])
        letter = "abcdefghijklmnopqrstuvwxyz"[flat.index(ax)]
        early = ", stopped early" if rec.get("vae_stopped_early") else ""
        ax.set_title(f"({letter}) {_label(rec['model'])}, latent {rec.get('latent', '?')}{early}")
        if not tr and not va:
            ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(range(1, len(tr) + 1), tr, color=_TRAIN_COLOR, lw=1.4, label="train")
        ax.plot(range(1, len(va) + 1), va, color=_VAL_COLOR, lw=1.4, label="validation")
        ax.set_yscale(scale, **kw)
        if scale == "symlog":
            ax.axhline(0.0, color="0.6", lw=0.6, zorder=0)
        best = rec.get("vae_best_epoch")
        if isinstance(best, int) and 1 <= best <= len(va):
            ax.axvline(best, color="0.4", ls="--", lw=0.9)
            ax.plot([best], [va[best - 1]], "o", color=_VAL_COLOR, mec="k", ms=6,
                    label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("-ELBO per chunk (nats)" + ("" if scale == "linear" else f", {scale}"))
        ax.grid(True, which="major", alpha=0.3)
        if len(tr) < 20:
            ax.set_xticks(range(1, max(len(tr), len(va)) + 1))
        ax.legend(fontsize=8, loc="upper right")
    for ax in flat[len(records):]:
        ax.axis("off")
    fig.suptitle("VAE training (paper Fig. 2)")
    fig.tight_layout()
    _save(fig, path)


def _bar_labels(ax: Axes, bars: Any, texts: Sequence[str]) -> None:
    for b, t in zip(bars, texts, strict=True):
        ax.annotate(t, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9)


def fig_params_time(models: Sequence[str], params: Sequence[int | None],
                    train_s: Sequence[float | None], path: Path) -> None:
    """Figure 3: (a) parameters per model, (b) VAE training time per model (seconds).

    A missing value (None) leaves its bar out."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(models))
    names = [_label(m) for m in models]
    p = [v if v is not None else 0 for v in params]
    bars = a.bar(x, p, color="#4c72b0")
    _bar_labels(a, bars, [f"{v:,}" if v is not None else "n/a" for v in params])
    a.set_title("(a) parameters per model")
    a.set_ylabel("parameters")
    t = [v if _finite(v) else 0.0 for v in train_s]
    bars = b.bar(x, t, color="#dd8452")
    _bar_labels(b, bars, [f"{v:.1f} s" if _finite(v) else "n/a" for v in train_s])
    b.set_title("(b) VAE training time")
    b.set_ylabel("seconds")
    a.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    for ax, vals in ((a, p), (b, t)):
        ax.set_xticks(x, names)
        ax.set_ylim(0, (max(vals) if vals and max(vals) > 0 else 1) * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Parameters and VAE training time (paper Fig. 3)")
    fig.tight_layout()
    _save(fig, path)


def sample_indices(labels: np.ndarray, orig: np.ndarray, recon: np.ndarray, n: int, *,
                   max_disagree: int | None = None) -> np.ndarray:
    """Up to `n` test indices: the test images where the two models disagree (the first
    `max_disagree` of them, default all that fit), filled up with the first test images;
    returned in test-set order."""
    cap = n if max_disagree is None else min(n, max_disagree)
    disagree = np.flatnonzero(orig != recon)[:cap]
    chosen = set(disagree.tolist())
    for i in range(len(labels)):
        if len(chosen) >= n:
            break
        chosen.add(i)
    return np.array(sorted(chosen), dtype=np.int64)


def fig_samples(images: np.ndarray, labels: np.ndarray, orig: np.ndarray, recon: np.ndarray,
                path: Path, title: str, *, rows: int = 6, cols: int = 8) -> None:
    """Figures 4/5: a grid of test digits with the predictions of the original (O) and the
    reconstructed (R) model; a wrong prediction in red, a tile where they disagree framed.
    Disagreements fill at most all rows but the first, which keeps the first test images."""
    idx = sample_indices(labels, orig, recon, rows * cols, max_disagree=(rows - 1) * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.6 * rows + 0.7),
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(idx):
            ax.axis("off")
            continue
        i = int(idx[k])
        y, o, r = int(labels[i]), int(orig[i]), int(recon[i])
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.text(0.02, 1.03, f"O:{o}", transform=ax.transAxes, ha="left", va="bottom",
                fontsize=9, color=_WRONG if o != y else "black",
                fontweight="bold" if o != y else "normal")
        ax.text(0.98, 1.03, f"R:{r}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=9, color=_WRONG if r != y else "black",
                fontweight="bold" if r != y else "normal")
        ax.set_xlabel(f"#{i} y={y}", fontsize=7, color="0.35", labelpad=1)
        edge, width = (_DISAGREE, 3.0) if o != r else ("0.7", 0.6)
        for s in ax.spines.values():
            s.set_edgecolor(edge)
            s.set_linewidth(width)
    n_dis = int((orig != recon).sum())
    fig.suptitle(f"{title}\nO = original, R = reconstructed; red = wrong, "
                 f"orange frame = the two disagree ({n_dis:,} of {len(labels):,} test images)",
                 fontsize=10)
    fig.tight_layout(h_pad=1.2, w_pad=0.3)
    _save(fig, path)


def fig_accuracy_vs_ratio(sweep: Sequence[Record], others: Sequence[Record], path: Path, *,
                          sweep_model: str = "cnn") -> None:
    """Accuracy of the reconstructed `sweep_model` against compression ratio (log x): one curve
    with the paper's ratio (codes only), one with the honest ratio (every byte needed), the
    original accuracy as a line, and the other models' points at the main latent."""
    fig, ax = plt.subplots(figsize=(9, 6))
    pts = sorted((r for r in sweep if _finite(r.get("ratio_paper"))
                  and _finite(r.get("ratio_honest"))), key=lambda r: r["latent"])
    if pts:
        acc = [r["acc_recon"] for r in pts]
        rp = [r["ratio_paper"] for r in pts]
        rh = [r["ratio_honest"] for r in pts]
        name = _label(sweep_model)
        ax.plot(rp, acc, "o-", color="#4c72b0", label=f"{name}, ratio_paper (codes only)")
        ax.plot(rh, acc, "s-", color=_WRONG, label=f"{name}, ratio_honest (whole file)")
        for r, x, y in zip(pts, rp, acc, strict=True):
            ax.annotate(f"{r['latent']}", (x, y), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, color="#4c72b0")
        orig = [r["acc_orig"] for r in pts if _finite(r.get("acc_orig"))]
        if orig:
            ax.axhline(float(np.mean(orig)), color="0.3", ls="--", lw=1,
                       label=f"{name} original ({float(np.mean(orig)):.2f}%)")
    markers = "^vD<>pP*hX"
    for k, r in enumerate(others):
        if not (_finite(r.get("ratio_paper")) and _finite(r.get("ratio_honest"))):
            continue
        m = markers[k % len(markers)]
        lab = f"{_label(r['model'])} latent {r['latent']}"
        ax.plot([r["ratio_paper"]], [r["acc_recon"]], m, color="#55a868", ms=8, mec="k",
                label=f"{lab} (filled: paper, hollow: honest)")
        ax.plot([r["ratio_honest"]], [r["acc_recon"]], m, color="white", ms=8, mec="#55a868",
                mew=1.6)
    ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
    ax.annotate("ratio 1: file as big as the model", (1.0, 0.02),
                xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points",
                fontsize=8, color="0.4")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (original float32 bytes / compressed bytes), log scale")
    ax.set_ylabel("test accuracy of the reconstructed model (%)")
    ax.set_title(f"Accuracy against compression ratio ({_label(sweep_model)} latent sweep; "
                 "numbers are latent sizes)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  frameon=False)
    fig.tight_layout()
    _save(fig, path)
