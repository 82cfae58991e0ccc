"""`report.md` and `figures/` of a `vaecompress reproduce` run, drawn from its results alone.

Module boundary: this module selects records from the `results` dict that
`experiments.reproduce` writes to `results.json`, formats the markdown tables and the generated
"honest finding" text, and orchestrates the figures (drawn by `experiments.figures`). Besides
`results` it reads only the run's `predictions/*.npz` and the MNIST test images (Figures 4/5,
skipped with a note when either is missing). Every number in the report comes from `results`
(the paper's own numbers from `results["paper"]`); nothing is measured here. All files are
written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaecompress.experiments import figures
from vaecompress.io import atomic_write_text

Record = Mapping[str, Any]

FIG_TRAINING = "fig2_vae_training.png"
FIG_PARAMS_TIME = "fig3_params_time.png"
FIG_CNN_SAMPLES = "fig4_cnn_samples.png"
FIG_RNN_SAMPLES = "fig5_rnn_samples.png"
FIG_ACC_RATIO = "accuracy_vs_ratio.png"
AMORTIZE_K = ("10", "100")
DROP_OK = 1.0  # accuracy points: the paper's "accuracy loss of about 1%"


# ---- formatting -----------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_ratio(x: Any) -> str:
    """A compression ratio: 3 significant figures at most, never scientific notation."""
    if not _finite(x):
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
    return f"{x:.2f}" if _finite(x) else "—"


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if _finite(x) else "—"


def fmt_s(x: Any) -> str:
    if not _finite(x):
        return "—"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _span(values: Sequence[float], fmt: Any = fmt_ratio) -> str:
    """"X" when every value formats the same, else "X-Y" (min-max)."""
    vals = [v for v in values if _finite(v)]
    if not vals:
        return "—"
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}-{hi}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _name(model: str) -> str:
    return model.upper()


# ---- selecting records ----------------------------------------------------------------------


@dataclass
class Selection:
    """The records of one run, grouped the way the report uses them."""

    latent: int
    sweep_model: str
    models: list[str]
    main: dict[str, Record] = field(default_factory=dict)  # model -> record at `latent`
    sweep: list[Record] = field(default_factory=list)  # sweep model, every latent, ascending

    @property
    def main_records(self) -> list[Record]:
        return [self.main[m] for m in self.models if m in self.main]


def select(results: Mapping[str, Any]) -> Selection:
    cfg = results.get("config") or {}
    records: list[Record] = list(results.get("records") or [])
    latent = int(cfg.get("latent", 64))
    sweep_model = str(cfg.get("sweep_model", "cnn"))
    order = [str(m) for m in cfg.get("models") or []]
    order += [r["model"] for r in results.get("table1") or [] if r["model"] not in order]
    order += [r["model"] for r in records if r["model"] not in order]
    sel = Selection(latent, sweep_model, order)
    for r in records:
        if r.get("latent") != latent:
            continue
        # The Table 2 record wins over a duplicate measurement at the same latent.
        if r["model"] not in sel.main or r.get("experiment") == "table2":
            sel.main[r["model"]] = r
    by_latent: dict[int, Record] = {}
    for r in records:
        if r["model"] == sweep_model and r.get("latent") is not None:
            lat = int(r["latent"])
            if lat == latent and sweep_model in sel.main:
                by_latent[lat] = sel.main[sweep_model]
            else:
                by_latent.setdefault(lat, r)
    has_sweep = any(r.get("experiment") == "sweep" for r in by_latent.values())
    if has_sweep:
        sel.sweep = [by_latent[k] for k in sorted(by_latent)]
    return sel


# ---- sections -------------------------------------------------------------------------------


def _environment(results: Mapping[str, Any]) -> str:
    env = results.get("environment") or {}
    cfg = results.get("config") or {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("vaecompress", "python", "torch", "numpy")
                         if env.get(k))
    device = str(env.get("device", "—")) + (f" ({env['gpu']})" if env.get("gpu") else "")
    lines = [
        f"- preset: `{cfg.get('preset', '—')}`, seed {env.get('seed', cfg.get('seed', '—'))}, "
        f"device {device}",
        f"- git revision: `{env.get('git_revision') or 'unknown'}`",
        f"- versions: {versions or '—'}",
        f"- platform: {env.get('platform', '—')}, {env.get('cpu_count', '—')} CPUs, "
        f"{env.get('torch_threads', '—')} torch threads",
        f"- time (UTC): {env.get('time_utc', '—')}",
    ]
    if cfg:
        lats = ", ".join(str(x) for x in cfg.get("sweep_latents") or [])
        lines.append(f"- models: {', '.join(cfg.get('models') or [])}; latent {cfg.get('latent')}"
                     f"; sweep on {cfg.get('sweep_model')} over latents [{lats}]")
        vae = cfg.get("vae") or {}
        if vae:
            keys = ("chunk_size", "hidden", "n_variants", "val_fraction", "noise_kind",
                    "noise_fraction", "noise_scale", "normalize", "epochs", "patience",
                    "batch_size", "lr", "sigma_x", "external_decoder")
            kv = ", ".join(f"{k}={vae[k]}" for k in keys if k in vae)
            lines.append(f"- VAE: {kv}")
        if cfg.get("train_overrides"):
            lines.append(f"- classifier training overrides: {cfg['train_overrides']}")
    return "\n".join(lines)


def _table1(results: Mapping[str, Any]) -> str:
    rows = [[_name(r["model"]), "[" + ", ".join(str(n) for n in r.get("neurons", [])) + "]",
             fmt_int(r.get("params"))] for r in results.get("table1") or []]
    if not rows:
        return "_No models in this run._"
    return _table(["model", "neurons", "parameters"], rows, ["l", "l", "r"])


def _table2(results: Mapping[str, Any], sel: Selection) -> str:
    paper = (results.get("paper") or {}).get("table2") or {}
    rows = []
    for m in sel.models:
        p = paper.get(m) or {}
        r = sel.main.get(m)
        if r is None and not p:
            continue
        p_drop = (p["acc_orig"] - p["acc_recon"]) if _finite(p.get("acc_orig")) and \
            _finite(p.get("acc_recon")) else None
        rows.append([
            _name(m), fmt_acc(p.get("acc_orig")), fmt_acc(p.get("acc_recon")), fmt_acc(p_drop),
            fmt_acc(r and r.get("acc_orig")), fmt_acc(r and r.get("acc_recon")),
            fmt_acc(r and r.get("acc_drop")),
        ])
    if not rows:
        return "_No Table 2 records._"
    return _table(["model", "paper original %", "paper reconstructed %", "paper drop",
                   "ours original %", "ours reconstructed %", "ours drop"], rows)


def _sweep_table(sel: Selection) -> str:
    rows = [[str(r["latent"]) + (" (Table 2)" if r.get("experiment") == "table2" else ""),
             fmt_acc(r.get("acc_recon")), fmt_acc(r.get("acc_drop")),
             fmt_ratio(r.get("ratio_paper")), fmt_ratio(r.get("ratio_honest")),
             fmt_int(r.get("file_bytes")), fmt_int(r.get("vae_epochs"))]
            for r in sorted(sel.sweep, key=lambda r: -int(r["latent"]))]
    return _table(["latent", "acc_recon %", "drop", "ratio_paper", "ratio_honest",
                   "file_bytes", "vae_epochs"], rows)


def _amortized(r: Record, k: str) -> Any:
    am = r.get("ratio_amortized") or {}
    return am.get(k)


def _accounting_table(sel: Selection) -> str:
    rows = [[_name(r["model"]), fmt_int(r.get("params")), fmt_int(r.get("orig_bytes")),
             fmt_int(r.get("payload_bytes")), fmt_int(r.get("model_bytes")),
             fmt_int(r.get("file_bytes")), fmt_int(r.get("external_bytes")),
             fmt_ratio(r.get("ratio_paper")), fmt_ratio(r.get("ratio_honest")),
             *(fmt_ratio(_amortized(r, k)) for k in AMORTIZE_K)]
            for r in sel.main_records]
    return _table(["model", "params", "orig_bytes", "payload_bytes (code)",
                   "model_bytes (decoder)", "file_bytes", "external_bytes", "ratio_paper",
                   "ratio_honest", *(f"amortized K={k}" for k in AMORTIZE_K)], rows)


def _epoch_s_median(r: Record) -> float | None:
    es = [x for x in (r.get("history") or {}).get("epoch_s") or [] if _finite(x)]
    return float(np.median(es)) if es else None


def _training_table(sel: Selection) -> str:
    rows = []
    for r in sel.main_records:
        va = [x for x in (r.get("history") or {}).get("val_loss") or [] if _finite(x)]
        best = r.get("vae_best_epoch")
        best_val = va[best - 1] if isinstance(best, int) and 1 <= best <= len(va) else None
        epochs = r.get("vae_epochs")
        per_epoch = r["vae_train_s"] / epochs if _finite(r.get("vae_train_s")) and \
            _finite(epochs) and epochs else None
        rows.append([
            _name(r["model"]), fmt_int(r.get("n_chunks")), fmt_int(epochs), fmt_int(best),
            "yes" if r.get("vae_stopped_early") else "no", fmt_s(r.get("vae_train_s")),
            fmt_s(per_epoch), fmt_s(_epoch_s_median(r)),
            f"{best_val:,.0f}" if best_val is not None else "—",
        ])
    return _table(["model", "chunks", "epochs run", "best epoch", "stopped early",
                   "vae_train_s", "s/epoch (mean)", "s/epoch (median)",
                   "best val -ELBO (nats/chunk)"], rows)


def _break_even_k(r: Record) -> float | None:
    """Smallest K at which K models sharing one decoder take fewer bytes than the originals,
    from the record's byte counts (the same split as `Accounting.amortized_ratio`)."""
    need = ("orig_bytes", "file_bytes", "model_bytes", "external_bytes")
    if not all(_finite(r.get(k)) for k in need):
        return None
    embedded = r["model_bytes"] if r["external_bytes"] == 0 else 0
    per_model = r["file_bytes"] - embedded
    shared = r["external_bytes"] + embedded
    if r["orig_bytes"] <= per_model:
        return math.inf
    return max(1.0, math.floor(shared / (r["orig_bytes"] - per_model)) + 1.0)


def _per_model_limit(r: Record) -> float | None:
    """The amortized ratio as K grows without bound: original bytes / per-model bytes."""
    if not all(_finite(r.get(k)) for k in ("orig_bytes", "file_bytes", "model_bytes",
                                            "external_bytes")):
        return None
    embedded = r["model_bytes"] if r["external_bytes"] == 0 else 0
    per_model = r["file_bytes"] - embedded
    return r["orig_bytes"] / per_model if per_model > 0 else None


def honest_finding(sel: Selection) -> str:
    """The plain-language summary, generated from the numbers of the main-latent records."""
    recs = [r for r in sel.main_records if _finite(r.get("ratio_honest"))]
    if not recs:
        return "_No records at the main latent: nothing to summarize._"
    names = ", ".join(_name(r["model"]) for r in recs)
    rp = [r.get("ratio_paper") for r in recs]
    rh = [r["ratio_honest"] for r in recs]
    dec = [r["model_bytes"] / r["orig_bytes"] for r in recs
           if _finite(r.get("model_bytes")) and _finite(r.get("orig_bytes")) and r["orig_bytes"]]
    parts = [f"At latent {sel.latent} ({names}) the latent codes are {_span(rp)} times smaller "
             "than the float32 weights (the paper's ratio, which counts the codes alone)"]
    if dec and max(dec) > 0:
        parts[0] += (f", but the decoder needed to rebuild them is {_span(dec)} times "
                     f"{'larger than' if min(dec) >= 1 else 'the size of'} the model itself")
    larger = [r for r in recs if r["ratio_honest"] < 1]
    store = "so what a user must store to get the model back is"
    if len(larger) == len(recs):
        inv = [1 / x for x in rh]
        verdict = (f"{store} {_span(inv)} times LARGER than the original model "
                   f"(ratio_honest {_span(rh)})")
    elif not larger:
        verdict = (f"{store} {_span(rh)} times smaller than the original model "
                   f"(ratio_honest {_span(rh)})")
    else:
        verdict = (f"{store} larger than the original for "
                   f"{', '.join(_name(r['model']) for r in larger)} and smaller for the others "
                   f"(ratio_honest {_span(rh)})")
    text = [parts[0] + ", " + verdict + "."]
    pairs = [(r, k) for r in recs if (k := _break_even_k(r)) is not None]
    if pairs:
        need = [(r, k) for r, k in pairs if math.isfinite(k) and k > 1]
        never = [r for r, k in pairs if not math.isfinite(k)]
        am = {k: [_amortized(r, k) for r in recs if _finite(_amortized(r, k))]
              for k in AMORTIZE_K}
        amtxt = "; ".join(f"K={k}: {_span(v)}" for k, v in am.items() if v)
        clauses = []
        if need:
            each = ", ".join(f"{fmt_int(k)} ({_name(r['model'])})" for r, k in need)
            clauses.append(f"Only when one decoder serves at least {each} models of the same "
                           "size do they take fewer bytes than the original weights"
                           + (f" (amortized ratio {amtxt})" if amtxt else ""))
        elif amtxt:
            clauses.append(f"Shared by K models, one decoder gives an amortized ratio {amtxt}")
        if never:
            clauses.append(f"for {', '.join(_name(r['model']) for r in never)} no number of "
                           "models does, since each file without the decoder is already as "
                           "large as the model")
        lim = [x for r, _ in pairs if (x := _per_model_limit(r)) is not None]
        extra = [r["file_bytes"] - (r["model_bytes"] if r["external_bytes"] == 0 else 0)
                 - r["payload_bytes"] for r, _ in pairs if _finite(r.get("payload_bytes"))]
        if lim:
            tail = ("even if one decoder served unboundedly many models the ratio would only "
                    f"tend to {_span(lim)}")
            if extra:
                tail += (f", below ratio_paper, since each file carries {_span(extra, fmt_int)} "
                         "bytes besides the codes (header, layout, normalization)")
            clauses.append(tail)
        if clauses:
            joined = "; ".join(clauses)
            text.append(joined[0].upper() + joined[1:] + ".")
    drops = [r.get("acc_drop") for r in recs if _finite(r.get("acc_drop"))]
    if drops:
        text.append(f"Accuracy drops by {_span(drops, fmt_acc)} points at latent {sel.latent} "
                    "(the paper reports about 1).")
    sw = [r for r in sel.sweep if _finite(r.get("acc_drop"))]
    if len(sw) > 1:
        # The smallest latent from which every larger latent also stays within DROP_OK.
        keep = None
        for r in sorted(sw, key=lambda r: -int(r["latent"])):
            if r["acc_drop"] > DROP_OK:
                break
            keep = r
        smallest = min(sw, key=lambda r: int(r["latent"]))
        name = _name(sel.sweep_model)
        if keep is not None:
            s = (f"In the latent sweep the reconstructed {name} stays within {DROP_OK:g} point "
                 f"of the original down to latent {keep['latent']} (ratio_paper "
                 f"{fmt_ratio(keep.get('ratio_paper'))}, ratio_honest "
                 f"{fmt_ratio(keep.get('ratio_honest'))})")
        else:
            s = (f"In the latent sweep the reconstructed {name} loses more than {DROP_OK:g} "
                 "point at every latent")
        if smallest is not keep:
            s += (f"; at latent {smallest['latent']} it scores "
                  f"{fmt_acc(smallest.get('acc_recon'))}% (drop "
                  f"{fmt_acc(smallest.get('acc_drop'))})")
        rh_sw = [r.get("ratio_honest") for r in sw]
        s += (f". Across the sweep ratio_paper spans {_span([r.get('ratio_paper') for r in sw])}"
              f" while ratio_honest stays at {_span(rh_sw)}: shrinking the latent shrinks the "
              "codes, not the decoder that dominates the file")
        text.append(s + ".")
    return " ".join(text)


# ---- predictions and samples ----------------------------------------------------------------


def _load_predictions(out: Path, model: str, latent: int) -> tuple[np.ndarray, np.ndarray] | str:
    path = out / "predictions" / f"{model}-latent{latent}.npz"
    if not path.is_file():
        return f"no predictions file `{path.relative_to(out).as_posix()}`"
    try:
        with np.load(path) as z:
            return np.asarray(z["orig"]).astype(np.int64), np.asarray(z["recon"]).astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        return f"cannot read `{path.relative_to(out).as_posix()}`: {e}"


def _samples_section(out: Path, model: str, latent: int, fig_name: str, fig_no: int,
                     test: Any, test_error: str | None) -> str:
    title = f"Figure {fig_no}: MNIST test samples, {_name(model)} and reconstructed " \
        f"{_name(model)} (latent {latent})"
    if test is None:
        return f"**{title}** — not drawn: MNIST test set unavailable ({test_error})."
    preds = _load_predictions(out, model, latent)
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
            f"On all {n:,} test images the original {_name(model)} makes {err_o:,} mistakes and "
            f"the reconstructed one {err_r:,} ({err_r - err_o:+,}); they disagree on {dis:,} "
            f"images (reconstruction newly wrong on {broke:,}, newly right on {fixed:,}). The "
            "grid shows these disagreements (as many as fit below its first row) among the "
            "first test images.")


# ---- orchestration --------------------------------------------------------------------------


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
    md += ["## Environment", "", _environment(results), ""]

    md += ["## Honest finding", "", honest_finding(sel), ""]

    md += ["## Table 1: models", "", _table1(results), ""]

    md += [f"## Table 2: test accuracy, original and reconstructed (latent {sel.latent})", "",
           _table2(results, sel), ""]

    md += [f"## Experiment 1: latent sweep on the {_name(sel.sweep_model)}", ""]
    if paper.get("sweep"):
        md += [f"Paper: {paper['sweep']}.", ""]
    if sel.sweep:
        md += [_sweep_table(sel), ""]
    else:
        md += ["_No sweep in this run._", ""]
    if sel.sweep or sel.main_records:
        sweep = sel.sweep or ([sel.main[sel.sweep_model]] if sel.sweep_model in sel.main else [])
        others = [r for r in sel.main_records if r["model"] != sel.sweep_model]
        figures.fig_accuracy_vs_ratio(sweep, others, figdir / FIG_ACC_RATIO,
                                      sweep_model=sel.sweep_model)
        md += [f"![accuracy against compression ratio](figures/{FIG_ACC_RATIO})", ""]

    md += [f"## Byte accounting at latent {sel.latent}", ""]
    if paper.get("ratio_paper_claim"):
        md += [f"Paper's claim: {paper['ratio_paper_claim']}.", ""]
    if sel.main_records:
        md += [_accounting_table(sel), "",
               "`amortized K` = ratio when K models of this size share one decoder (paid "
               "once).", ""]
    else:
        md += ["_No records at the main latent._", ""]

    md += ["## VAE training (paper Figures 2 and 3)", ""]
    if sel.main_records:
        md += [_training_table(sel), ""]
        figures.fig_vae_training(sel.main_records, figdir / FIG_TRAINING)
        md += [f"![VAE training curves](figures/{FIG_TRAINING})", ""]
    else:
        md += ["_No records at the main latent._", ""]
    t1 = {r["model"]: r.get("params") for r in results.get("table1") or []}
    models = [m for m in sel.models if m in t1 or m in sel.main]
    if models:
        params = [t1.get(m, sel.main[m].get("params") if m in sel.main else None)
                  for m in models]
        train_s = [sel.main[m].get("vae_train_s") if m in sel.main else None for m in models]
        figures.fig_params_time(models, params, train_s, figdir / FIG_PARAMS_TIME)
        md += [f"![parameters and VAE training time](figures/{FIG_PARAMS_TIME})", ""]

    md += ["## MNIST test samples (paper Figures 4 and 5)", ""]
    test, test_error = (test_split, None) if test_split is not None else (None, None)
    need = [m for m in ("cnn", "rnn") if m in sel.main]
    if need and test is None:
        test, test_error = _load_test(data_dir)
    for fig_no, model, fig_name in ((4, "cnn", FIG_CNN_SAMPLES), (5, "rnn", FIG_RNN_SAMPLES)):
        if model not in sel.main:
            md += [f"**Figure {fig_no}** — not drawn: no {_name(model)} record in this run.", ""]
            continue
        md += [_samples_section(out, model, sel.latent, fig_name, fig_no, test, test_error), ""]
    return "\n".join(md).rstrip() + "\n"


def write_report(results: dict[str, Any], out: Path, *, data_dir: str | Path | None = None,
                 test_split: Any = None) -> None:
    """Write `out/report.md` and `out/figures/*.png` from `results` (the content of
    `results.json`). `test_split` (an `MnistSplit`) skips loading MNIST from `data_dir`."""
    out = Path(out)
    text = render(results, out, data_dir=data_dir, test_split=test_split)
    atomic_write_text(out / "report.md", text)
