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

from vaecompress.files import atomic_write

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


def _positive_scale(values: Sequence[float]) -> str:
    """log for a positive range wider than 30x (losses that fall by orders of magnitude),
    else linear."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if v.size and v.min() > 0 and v.max() / v.min() > 30:
        return "log"
    return "linear"


def training_curves(rec: Record) -> dict[str, list[float]]:
    """The series Figure 2 draws for one record: `{train,val}_recon` (RMS reconstruction error
    per parameter, in units of each tensor's std, as the VAE sees the normalized weights) and
    `{train,val}_kl` (nats per chunk). Records written before the split was kept have the
    validation split (its -ELBO minus its KL) but only the train total: the train curves are
    then left out. Without the settings to convert, `{train,val}_total` (-ELBO) stand in."""
    from vaecompress.methods.paper.train import nll_to_mse

    hist = rec.get("history") or {}
    settings = rec.get("settings") or {}
    dim: Any = settings.get("chunk_size")  # checked by `_finite` before use
    sigma: Any = settings.get("sigma_x")

    def rms(mse: Sequence[float]) -> list[float]:
        return [math.sqrt(max(m, 1e-30)) if _finite(m) else math.nan for m in mse]

    out: dict[str, list[float]] = {}
    for split in ("train", "val"):
        kl = list(hist.get(f"{split}_kl") or [])
        mse = list(hist.get(f"{split}_mse") or [])
        total = list(hist.get(f"{split}_loss") or [])
        if not mse and kl and total and _finite(dim) and _finite(sigma):
            mse = [nll_to_mse(t - k, int(dim), float(sigma)) if _finite(t) and _finite(k)
                   else math.nan for t, k in zip(total, kl, strict=False)]
        if mse and kl:
            out[f"{split}_recon"] = rms(mse)
            out[f"{split}_kl"] = kl
        elif total:
            out[f"{split}_total"] = total
    return out


def _zoom_tail(ax: Axes, series: Sequence[Sequence[float]]) -> str | None:
    """The reconstruction error falls by an order of magnitude in the first few epochs and then
    changes by a few percent: scale the axis to the rest of the run so that convergence shows,
    and return a note on the early epochs that lie above it."""
    n = max((len(s) for s in series), default=0)
    skip = max(3, n // 20)
    tail = [x for s in series for x in s[skip:] if _finite(x)]
    head = [x for s in series for x in s[:skip] if _finite(x)]
    if n < 20 or not tail or not head or max(head) < 2 * max(tail):
        return None  # a short run, or no steep start: the whole curve reads well as it is
    lo, hi = min(tail + head), max(tail)
    pad = (hi - lo) * 0.15 or hi * 0.05
    ax.set_yscale("linear")
    ax.set_ylim(lo - pad, hi + pad)
    above = [i + 1 for s in series for i, x in enumerate(s[:skip]) if _finite(x) and x > hi + pad]
    if not above:
        return None
    return f"epochs 1-{max(above)} off the top (up to {max(head):.2g})"


def fig_vae_training(records: Sequence[Record], path: Path) -> None:
    """Figure 2: per model (one row), the reconstruction error and the KL term per epoch, train
    and validation, with the best validation epoch (the weights kept) marked."""
    rows = max(1, len(records))
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.7 * rows + 0.8), squeeze=False)
    curves = [training_curves(r) for r in records]
    scale = {
        kind: _positive_scale([x for c in curves for k, v in c.items() if k.endswith(kind)
                               for x in v])
        for kind in ("_recon", "_kl", "_total")
    }
    ylabel = {"_recon": "recon. RMS error\n(tensor std units)", "_kl": "KL (nats per chunk)",
              "_total": "-ELBO (nats per chunk)"}
    for row, (rec, c) in enumerate(zip(records, curves, strict=True)):
        head = f"{_label(rec['model'])}, latent {rec.get('latent', '?')}"
        for col, kind in enumerate(("_recon", "_kl")):
            if not any(k.endswith(kind) for k in c) and kind == "_recon":
                kind = "_total"
            letter = "abcdefghijklmnopqrstuvwxyz"[(2 * row + col) % 26]
            _training_panel(axes[row][col], rec, c, kind, f"({letter}) {head}",
                            scale[kind], ylabel[kind], last_row=row == rows - 1)
    for ax in axes.ravel()[2 * len(records):]:
        ax.axis("off")
    fig.suptitle("VAE training (paper Fig. 2): reconstruction error and KL per epoch")
    fig.tight_layout()
    _save(fig, path)


def _training_panel(ax: Axes, rec: Record, c: dict[str, list[float]], kind: str, title: str,
                    scale: str, ylabel: str, *, last_row: bool) -> None:
    """One panel of Figure 2: a term (`kind`) per epoch, train and validation, the best
    validation epoch marked."""
    what = {"_recon": "reconstruction error", "_kl": "KL term",
            "_total": "-ELBO (split not recorded)"}[kind]
    ax.set_title(f"{title}: {what}", fontsize=10)
    drawn = False
    for split, color, name in (("train", _TRAIN_COLOR, "train"),
                               ("val", _VAL_COLOR, "validation")):
        ys = c.get(f"{split}{kind}")
        if ys:
            ax.plot(range(1, len(ys) + 1), ys, color=color, lw=1.3, label=name)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_yscale(scale)
    note = None
    if kind == "_recon":
        note = _zoom_tail(ax, [c.get("train_recon") or [], c.get("val_recon") or []])
    va = c.get(f"val{kind}") or []
    best = rec.get("vae_best_epoch")
    if isinstance(best, int) and 1 <= best <= len(va):
        early = ", stopped early" if rec.get("vae_stopped_early") else ""
        ax.axvline(best, color="0.4", ls="--", lw=0.9)
        ax.plot([best], [va[best - 1]], "o", color=_VAL_COLOR, mec="k", ms=5,
                label=f"best epoch {best}{early}")
    if "train_recon" not in c and kind == "_recon":
        ax.plot([], [], " ", label="train split: not recorded in this run")
    if note:
        ax.plot([], [], " ", label=note)
    ax.set_ylabel(ylabel + ("" if scale == "linear" else ", log"), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    epochs = max((len(v) for v in c.values()), default=0)
    if epochs < 20:
        ax.set_xticks(range(1, epochs + 1))
    if last_row:
        ax.set_xlabel("epoch")
    ax.legend(fontsize=7, loc="best")


def _bar_labels(ax: Axes, bars: Any, texts: Sequence[str]) -> None:
    for b, t in zip(bars, texts, strict=True):
        ax.annotate(t, (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9)


def fig_params_time(models: Sequence[str], params: Sequence[int | None],
                    s_per_epoch_per_m: Sequence[float | None], path: Path, *,
                    details: Sequence[str] | None = None, where: str = "") -> None:
    """Figure 3: (a) parameters per model, (b) VAE training time normalized by the work: the
    median seconds per epoch per million parameters (an epoch's work grows with the number of
    chunks, so with the parameters). Totals depend on when early stopping ends and on what else
    ran on the machine; `details` (per model, e.g. epochs and total seconds) are printed under
    the bars, `where` (machine, threads, load) under the figure. A missing value (None) leaves
    its bar out."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.6))
    x = np.arange(len(models))
    names = [_label(m) for m in models]
    p = [v if v is not None else 0 for v in params]
    bars = a.bar(x, p, color="#4c72b0")
    _bar_labels(a, bars, [f"{v:,}" if v is not None else "n/a" for v in params])
    a.set_title("(a) parameters per model")
    a.set_ylabel("parameters")
    t = [float(v) if v is not None and _finite(v) else 0.0 for v in s_per_epoch_per_m]
    bars = b.bar(x, t, color="#dd8452")
    _bar_labels(b, bars, [f"{v:.3g} s" if _finite(v) else "n/a" for v in s_per_epoch_per_m])
    b.set_title("(b) VAE training time per epoch and parameter")
    b.set_ylabel("median s per epoch per 10$^6$ parameters")
    a.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    for ax, vals in ((a, p), (b, t)):
        ax.set_xticks(x, names)
        ax.set_ylim(0, (max(vals) if vals and max(vals) > 0 else 1) * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
    if details:
        b.set_xticks(x, [f"{n}\n{d}" for n, d in zip(names, details, strict=True)],
                     fontsize=8)
    fig.suptitle("Parameters and VAE training time (paper Fig. 3)")
    if where:
        fig.text(0.5, 0.01, where, ha="center", va="bottom", fontsize=8, color="0.3",
                 wrap=True)
    fig.tight_layout(rect=(0, 0.07 if where else 0, 1, 1))
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


def _honest_inset(ax: Axes, rh: Sequence[float], acc: Sequence[float],
                  latents: Sequence[int]) -> None:
    """The honest ratios of a latent sweep differ by a few percent, so on the main log axis
    they sit on one spot: an inset with a linear axis spreads them out, each point labelled
    with its latent size (alternately above and below, as neighbours can be close)."""
    ins = ax.inset_axes((0.31, 0.24, 0.32, 0.42))
    ins.plot(rh, acc, "s-", color=_WRONG, ms=5, lw=1)
    for k, (x, y, lat) in enumerate(zip(rh, acc, latents, strict=True)):
        ins.annotate(str(lat), (x, y), xytext=(0, 6 if k % 2 == 0 else -7),
                     textcoords="offset points", ha="center",
                     va="bottom" if k % 2 == 0 else "top", fontsize=7, color=_WRONG)
    lo, hi = min(rh), max(rh)
    pad = (hi - lo) * 0.12 or hi * 0.01
    ins.set_xlim(lo - pad, hi + pad)
    ylo, yhi = min(acc), max(acc)
    ypad = (yhi - ylo) * 0.25 or 0.05
    ins.set_ylim(ylo - ypad, yhi + ypad)
    ins.xaxis.set_major_formatter(StrMethodFormatter("{x:.3f}"))
    ins.tick_params(labelsize=7)
    ins.set_title("ratio_honest zoomed in (linear); numbers are latent sizes", fontsize=7)
    ins.grid(True, alpha=0.25)


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
    if len(pts) > 1:
        _honest_inset(ax, rh, acc, [int(r["latent"]) for r in pts])
    _save(fig, path)
