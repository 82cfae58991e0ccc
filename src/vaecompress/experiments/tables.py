"""The markdown tables of the reproduction report (and of the README's results block), drawn
from the `results` dict and its `Selection`; every number formatted by `experiments.formatting`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vaecompress.experiments.formatting import (
    finite,
    fmt_acc,
    fmt_int,
    fmt_ratio,
    fmt_s,
    md_table,
    model_name,
)
from vaecompress.experiments.selection import Record, Selection

AMORTIZE_K = ("10", "100")


def environment_lines(results: Mapping[str, Any]) -> str:
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


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def threads_note(results: Mapping[str, Any]) -> str:
    """Where the numbers depend on more than the seed: the thread count (CPU) or the GPU."""
    env = results.get("environment") or {}
    device = str(env.get("device") or "")
    if device.startswith("cuda"):
        return (f"These numbers were computed on {env.get('gpu') or 'a GPU'}. GPU kernels add "
                "floats in their own order, so another GPU, or the CPU, trains slightly "
                "different weights from the same seed and gives slightly different accuracies.")
    n = env.get("torch_threads")
    used = (f"with {_plural(n, 'torch thread')}" if isinstance(n, int)
            else "with an unrecorded number of torch threads")
    return (f"These numbers were computed on the CPU {used}. They depend on the thread count: "
            "PyTorch splits float sums across threads, so another count adds them in another "
            "order and, from the same seed, trains slightly different weights; accuracies move "
            "most where training is least stable (the smallest latents). vaecompress picks the "
            "count itself (1 thread on a 2-core machine); set `VAECOMPRESS_THREADS=N` to match "
            "another run.")


def measured_where(results: Mapping[str, Any]) -> str:
    """One line on where the timings were taken: device, machine, threads and load."""
    env = results.get("environment") or {}
    device = str(env.get("device") or "unknown device")
    if env.get("gpu"):
        device += f" ({env['gpu']})"
    parts = [f"Measured on {device}"]
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} CPUs")
    if isinstance(env.get("torch_threads"), int):
        parts.append(_plural(env["torch_threads"], "torch thread"))
    line = ", ".join(parts)
    if env.get("platform"):
        line += f" ({env['platform']})"
    load = results.get("load_average") or {}
    ends = [(k, v[0]) for k in ("start", "end") if isinstance(v := load.get(k), list) and v]
    if ends:
        line += "; 1-minute load average " + ", ".join(f"{v:.2f} at the {k}" for k, v in ends)
        line += " of the run (other jobs share the machine when it exceeds the thread count)"
    else:
        line += "; machine load not recorded (other jobs may have run)"
    return line + "."


def table1(results: Mapping[str, Any]) -> str:
    rows = [[model_name(r["model"]), "[" + ", ".join(str(n) for n in r.get("neurons", [])) + "]",
             fmt_int(r.get("params"))] for r in results.get("table1") or []]
    if not rows:
        return "_No models in this run._"
    return md_table(["model", "neurons", "parameters"], rows, ["l", "l", "r"])


def table2(results: Mapping[str, Any], sel: Selection) -> str:
    paper = (results.get("paper") or {}).get("table2") or {}
    rows = []
    for m in sel.models:
        p = paper.get(m) or {}
        r = sel.main.get(m)
        if r is None and not p:
            continue
        p_drop = (p["acc_orig"] - p["acc_recon"]) if finite(p.get("acc_orig")) and \
            finite(p.get("acc_recon")) else None
        rows.append([
            model_name(m), fmt_acc(p.get("acc_orig")), fmt_acc(p.get("acc_recon")), fmt_acc(p_drop),
            fmt_acc(r and r.get("acc_orig")), fmt_acc(r and r.get("acc_recon")),
            fmt_acc(r and r.get("acc_drop")),
        ])
    if not rows:
        return "_No Table 2 records._"
    return md_table(["model", "paper original %", "paper reconstructed %", "paper drop",
                   "ours original %", "ours reconstructed %", "ours drop"], rows)


def sweep_table(sel: Selection) -> str:
    rows = [[str(r["latent"]) + (" (Table 2)" if r.get("experiment") == "table2" else ""),
             fmt_acc(r.get("acc_recon")), fmt_acc(r.get("acc_drop")),
             fmt_ratio(r.get("ratio_paper")), fmt_ratio(r.get("ratio_honest")),
             fmt_int(r.get("file_bytes")), fmt_int(r.get("vae_epochs"))]
            for r in sorted(sel.sweep, key=lambda r: -int(r["latent"]))]
    return md_table(["latent", "acc_recon %", "drop", "ratio_paper", "ratio_honest",
                   "file_bytes", "vae_epochs"], rows)


def amortized(r: Record, k: str) -> Any:
    am = r.get("ratio_amortized") or {}
    return am.get(k)


def accounting_table(sel: Selection) -> str:
    rows = [[model_name(r["model"]), fmt_int(r.get("params")), fmt_int(r.get("orig_bytes")),
             fmt_int(r.get("payload_bytes")), fmt_int(r.get("model_bytes")),
             fmt_int(r.get("file_bytes")), fmt_int(r.get("external_bytes")),
             fmt_ratio(r.get("ratio_paper")), fmt_ratio(r.get("ratio_honest")),
             *(fmt_ratio(amortized(r, k)) for k in AMORTIZE_K)]
            for r in sel.main_records]
    return md_table(["model", "params", "orig_bytes", "payload_bytes (code)",
                   "model_bytes (decoder)", "file_bytes", "external_bytes", "ratio_paper",
                   "ratio_honest", *(f"amortized K={k}" for k in AMORTIZE_K)], rows)


def epoch_s_median(r: Record) -> float | None:
    es = [x for x in (r.get("history") or {}).get("epoch_s") or [] if finite(x)]
    return float(np.median(es)) if es else None


def training_table(sel: Selection) -> str:
    rows = []
    for r in sel.main_records:
        va = [x for x in (r.get("history") or {}).get("val_loss") or [] if finite(x)]
        best = r.get("vae_best_epoch")
        best_val = va[best - 1] if isinstance(best, int) and 1 <= best <= len(va) else None
        epochs = r.get("vae_epochs")
        per_epoch = r["vae_train_s"] / epochs if finite(r.get("vae_train_s")) and \
            finite(epochs) and epochs else None
        rows.append([
            model_name(r["model"]), fmt_int(r.get("n_chunks")), fmt_int(epochs), fmt_int(best),
            "yes" if r.get("vae_stopped_early") else "no", fmt_s(r.get("vae_train_s")),
            fmt_s(per_epoch), fmt_s(epoch_s_median(r)),
            f"{best_val:,.0f}" if best_val is not None else "—",
        ])
    return md_table(["model", "chunks", "epochs run", "best epoch", "stopped early",
                   "vae_train_s", "s/epoch (mean)", "s/epoch (median)",
                   "best val -ELBO (nats/chunk)"], rows)
