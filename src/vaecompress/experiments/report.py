"""`report.md` and `figures/` of a `vaecompress reproduce` run, drawn from its results alone.

Module boundary: this module puts the report together. The records it shows are chosen by
`experiments.selection`, the tables come from `experiments.tables`, the generated text from
`experiments.prose`, the MNIST-sample sections from `experiments.predictions`, and the figures are
drawn by `experiments.figures`. Besides `results` it reads only the run's `predictions/*.npz`
and the MNIST test images (Figures 4/5, skipped with a note when either is missing). Every
number in the report comes from `results` (the paper's own numbers from `results["paper"]`);
nothing is measured here. All files are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaecompress.experiments import figures
from vaecompress.experiments.formatting import fmt_int, fmt_s, model_name
from vaecompress.experiments.predictions import samples_section
from vaecompress.experiments.prose import honest_finding
from vaecompress.experiments.selection import Selection, select
from vaecompress.experiments.tables import (
    accounting_table,
    environment_lines,
    epoch_s_median,
    measured_where,
    sweep_table,
    table1,
    table2,
    threads_note,
    training_table,
)
from vaecompress.files import atomic_write_text

FIG_TRAINING = "fig2_vae_training.png"
FIG_PARAMS_TIME = "fig3_params_time.png"
FIG_CNN_SAMPLES = "fig4_cnn_samples.png"
FIG_RNN_SAMPLES = "fig5_rnn_samples.png"
FIG_ACC_RATIO = "accuracy_vs_ratio.png"


def _load_test(data_dir: str | Path | None) -> tuple[Any, str | None]:
    from vaecompress.data import load_mnist
    from vaecompress.errors import UserError

    try:
        _, test = load_mnist(data_dir)
    except (UserError, OSError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    return test, None


def render(results: Mapping[str, Any], out: Path, *, data_dir: str | Path | None = None,
           test_split: Any = None) -> str:
    """Draw the figures under `out/figures/` and return the text of report.md."""
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    sel = select(results)
    paper = results.get("paper") or {}
    md: list[str] = ["# Reproduction of Cheng et al. 2024, “Variational Autoencoder-based "
                     "Neural Network Model Compression”", ""]
    md += ["All numbers below are read from `results.json` of this run; the paper's own numbers "
           "are those stored in its `paper` block. `ratio_paper` = float32 bytes / latent-code "
           "bytes (what the paper counts); `ratio_honest` = float32 bytes / every byte needed "
           "to get the model back (file plus any external decoder).", ""]
    md += ["## Environment", "", environment_lines(results), ""]

    md += ["## Honest finding", "", honest_finding(sel), ""]

    md += ["## Table 1: models", "", table1(results), ""]

    md += [f"## Table 2: test accuracy, original and reconstructed (latent {sel.latent})", "",
           table2(results, sel), "", threads_note(results), ""]
    md += _sweep_section(sel, paper, figdir)
    md += _accounting_section(sel, paper)
    md += _training_section(results, sel, figdir)
    md += _samples_sections(sel, out, data_dir, test_split)
    if results.get("ours"):
        md += ["## The project's own codecs on the same models", "", ours_table(results), ""]
    return "\n".join(md).rstrip() + "\n"


def _sweep_section(sel: Selection, paper: Mapping[str, Any], figdir: Path) -> list[str]:
    """Experiment 1: the latent sweep, its table and the accuracy-ratio figure."""
    md = [f"## Experiment 1: latent sweep on the {model_name(sel.sweep_model)}", ""]
    if paper.get("sweep"):
        md += [f"Paper: {paper['sweep']}.", ""]
    if sel.sweep:
        md += [sweep_table(sel), ""]
    else:
        md += ["_No sweep in this run._", ""]
    if sel.sweep or sel.main_records:
        sweep = sel.sweep or ([sel.main[sel.sweep_model]] if sel.sweep_model in sel.main else [])
        others = [r for r in sel.main_records if r["model"] != sel.sweep_model]
        figures.fig_accuracy_vs_ratio(sweep, others, figdir / FIG_ACC_RATIO,
                                      sweep_model=sel.sweep_model)
        md += [f"![accuracy against compression ratio](figures/{FIG_ACC_RATIO})", ""]
    return md


def _accounting_section(sel: Selection, paper: Mapping[str, Any]) -> list[str]:
    md = [f"## Byte accounting at latent {sel.latent}", ""]
    if paper.get("ratio_paper_claim"):
        md += [f"Paper's claim: {paper['ratio_paper_claim']}.", ""]
    if sel.main_records:
        md += [accounting_table(sel), "",
               "`amortized K` = ratio when K models of this size share one decoder (paid "
               "once).", ""]
    else:
        md += ["_No records at the main latent._", ""]
    return md


def _training_section(results: Mapping[str, Any], sel: Selection, figdir: Path) -> list[str]:
    """The VAE's training (paper Figures 2 and 3): its table, curves, and time per parameter."""
    md = ["## VAE training (paper Figures 2 and 3)", ""]
    if sel.main_records:
        md += [training_table(sel), ""]
        figures.fig_vae_training(sel.main_records, figdir / FIG_TRAINING)
        md += [f"![VAE training curves](figures/{FIG_TRAINING})", ""]
    else:
        md += ["_No records at the main latent._", ""]
    t1 = {r["model"]: r.get("params") for r in results.get("table1") or []}
    models = [m for m in sel.models if m in t1 or m in sel.main]
    if models:
        params = [t1.get(m, sel.main[m].get("params") if m in sel.main else None)
                  for m in models]
        per_m, details = [], []
        for m, n in zip(models, params, strict=True):
            r = sel.main.get(m) or {}
            med = epoch_s_median(r)
            per_m.append(med / (n / 1e6) if med is not None and n else None)
            details.append(f"{fmt_int(r.get('vae_epochs'))} epochs\n"
                           f"{fmt_s(r.get('vae_train_s'))} s in all" if r else "no record")
        figures.fig_params_time(models, params, per_m, figdir / FIG_PARAMS_TIME,
                                details=details, where=measured_where(results))
        md += [f"![parameters and VAE training time](figures/{FIG_PARAMS_TIME})", ""]
    return md


def _samples_sections(sel: Selection, out: Path, data_dir: str | Path | None,
                      test_split: Any) -> list[str]:
    """MNIST test samples (paper Figures 4 and 5), rebuilt by the CNN and the RNN."""
    md = ["## MNIST test samples (paper Figures 4 and 5)", ""]
    test: Any = test_split
    test_error: str | None = None
    need = [m for m in ("cnn", "rnn") if m in sel.main]
    if need and test is None:
        test, test_error = _load_test(data_dir)
    for fig_no, model, fig_name in ((4, "cnn", FIG_CNN_SAMPLES), (5, "rnn", FIG_RNN_SAMPLES)):
        if model not in sel.main:
            md += [f"**Figure {fig_no}** — not drawn: no {model_name(model)} record in this run.",
                   ""]
            continue
        md += [samples_section(out, model, sel.latent, fig_name, fig_no, test, test_error), ""]
    return md


def ours_table(results: Mapping[str, Any]) -> str:
    """The paper's VAE at its latent beside the project's codecs, per model: both ratios of
    the paper's, the honest ratio and the accuracy drop of each."""
    sel = select(results)
    codecs = list(dict.fromkeys(r["codec"] for r in results["ours"]))
    by = {(r["model"], r["codec"]): r for r in results["ours"]}
    head = ["model", "acc_orig", f"vae-paper latent {sel.latent}: ratio_paper / ratio_honest "
            "(drop)"] + [f"{c}: ratio_honest (drop)" for c in codecs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in dict.fromkeys(r["model"] for r in results["ours"]):
        paper = sel.main.get(m)
        cells = [m, f"{by[(m, codecs[0])]['acc_orig']:.2f}",
                 f"{paper['ratio_paper']:.1f}x / {paper['ratio_honest']:.3f}x "
                 f"({paper['acc_drop']:+.2f})" if paper else "-"]
        cells += [f"{by[(m, c)]['ratio_honest']:.1f}x ({by[(m, c)]['acc_drop']:+.2f})"
                  if (m, c) in by else "-" for c in codecs]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nvae-rd-free is the default of `vaecompress compress` (no "
            "data, no settings; near-lossless); vae-rd trains on the task's data. Drops are "
            "test-accuracy points lost (negative: gained).")


def write_report(results: dict[str, Any], out: Path, *, data_dir: str | Path | None = None,
                 test_split: Any = None) -> None:
    """Write `out/report.md` and `out/figures/*.png` from `results` (the content of
    `results.json`). `test_split` (an `MnistSplit`) skips loading MNIST from `data_dir`."""
    out = Path(out)
    text = render(results, out, data_dir=data_dir, test_split=test_split)
    atomic_write_text(out / "report.md", text)
