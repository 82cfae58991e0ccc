"""The MNIST-sample sections of the report (paper Figures 4 and 5): a run's saved predictions
(`predictions/<model>-latent<N>.npz`), compared on the test set, drawn by `experiments.figures`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vaecompress.experiments import figures
from vaecompress.experiments.formatting import model_name


def load_predictions(out: Path, model: str, latent: int) -> tuple[np.ndarray, np.ndarray] | str:
    path = out / "predictions" / f"{model}-latent{latent}.npz"
    if not path.is_file():
        return f"no predictions file `{path.relative_to(out).as_posix()}`"
    try:
        with np.load(path) as z:
            return np.asarray(z["orig"]).astype(np.int64), np.asarray(z["recon"]).astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        return f"cannot read `{path.relative_to(out).as_posix()}`: {e}"


def samples_section(out: Path, model: str, latent: int, fig_name: str, fig_no: int,
                     test: Any, test_error: str | None) -> str:
    title = f"Figure {fig_no}: MNIST test samples, {model_name(model)} and reconstructed " \
        f"{model_name(model)} (latent {latent})"
    if test is None:
        return f"**{title}** — not drawn: MNIST test set unavailable ({test_error})."
    preds = load_predictions(out, model, latent)
    if isinstance(preds, str):
        return f"**{title}** — not drawn: {preds}."
    orig, recon = preds
    labels = np.asarray(test.labels)
    if orig.shape != labels.shape or recon.shape != labels.shape:
        return (f"**{title}** — not drawn: predictions hold {orig.shape[0]} labels, the test "
                f"set {labels.shape[0]}.")
    figures.fig_samples(np.asarray(test.images), labels, orig, recon,
                        out / "figures" / fig_name, title)
    n = labels.shape[0]
    err_o = int((orig != labels).sum())
    err_r = int((recon != labels).sum())
    dis = int((orig != recon).sum())
    fixed = int(((orig != labels) & (recon == labels)).sum())
    broke = int(((orig == labels) & (recon != labels)).sum())
    return (f"**{title}**\n\n![{title}](figures/{fig_name})\n\n"
            f"On all {n:,} test images the original {model_name(model)} makes {err_o:,} mistakes "
            f"and the reconstructed one {err_r:,} ({err_r - err_o:+,}); they disagree on {dis:,} "
            f"images (reconstruction newly wrong on {broke:,}, newly right on {fixed:,}). The "
            "grid shows these disagreements (as many as fit below its first row) among the "
            "first test images.")
