"""The README's results section, drawn from the committed results files, never typed by hand.

    python scripts/readme.py          # rewrite the block in README.md
    python scripts/readme.py --check  # exit 1 if README.md is out of date

A development script, not part of the package: it writes this repository's README.

The block between `<!-- results:start -->` and `<!-- results:end -->` is replaced; a test checks
that README.md matches what this module renders from `results/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vaecompress.experiments.bench_report import (
    default_point,
    leaders,
    write_ablation_table,
    write_summary_table,
)
from vaecompress.experiments.families import comparisons, per_member
from vaecompress.experiments.prose import honest_finding
from vaecompress.experiments.report import ours_table
from vaecompress.experiments.selection import select
from vaecompress.experiments.tables import accounting_table, sweep_table, table2
from vaecompress.files import atomic_write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = (
    "results/paper/results.json",
    "vaecompress reproduce --preset paper --out results/paper",
)
QUICK = ("results/quick/results.json", "vaecompress reproduce --preset quick --out results/quick")
BENCH = (
    "results/bench-full/bench.json",
    "vaecompress bench --preset full --out results/bench-full",
)
ABLATION = (
    "results/ablation/bench.json",
    "vaecompress bench --preset ablation --models fnn --codecs vae-rd --out results/ablation",
)
MINILM = (
    "results/minilm/bench.json",
    "vaecompress bench --preset minilm --out results/minilm",
)
SCALING = "benchmarks/results/scaling-cpu.json"
MINILM_ABLATION = (
    "results/minilm-ablation/bench.json",
    "vaecompress bench --preset minilm-ablation --out results/minilm-ablation",
)
DISTILL_COVERAGE = ("results/distill-coverage/distill_coverage.md",
                    "python benchmarks/distill_coverage.py --out results/distill-coverage")
DATAFREE = (
    "results/datafree/bench.json",
    "vaecompress bench --preset datafree --out results/datafree",
)
MINILM_DATAFREE = (
    "results/minilm-datafree/bench.json",
    "vaecompress bench --preset minilm-datafree --out results/minilm-datafree",
)
DEFAULT = ("results/default/default.md",
           "python benchmarks/default_codec.py --out results/default")
HELDOUT_VAD = ("results/heldout-vad/heldout_vad.md",
               "python benchmarks/heldout_vad.py --out results/heldout-vad")
HELDOUT_PITCH = ("results/heldout-pitch/heldout_pitch.md",
                 "python benchmarks/heldout_pitch.py --out results/heldout-pitch")
SYNTHETIC_HELDOUT = ("results/synthetic-heldout/synthetic_heldout.md",
                     "python benchmarks/synthetic_heldout.py --out results/synthetic-heldout")
MAX_DROP = ("results/max-drop/max_drop.md",
            "python benchmarks/max_drop.py --out results/max-drop")
DELTA_DEFAULT = ("results/delta-default/delta_default.md",
                 "python benchmarks/delta_default.py --out results/delta-default")
FAMILIES = (  # (results file, the command that made it)
    ("results/families/families.json",
     "python -m vaecompress.experiments.families --out results/families"),
    ("results/families-cnn/families.json",
     "python -m vaecompress.experiments.families --model cnn --out results/families-cnn"),
    ("results/families-rnn/families.json",
     "python -m vaecompress.experiments.families --model rnn --families fine-tunes "
     "--out results/families-rnn"),
    ("results/families-minilm/families.json",
     "python -m vaecompress.experiments.families_minilm --out results/families-minilm"),
)


def _load(root: Path, rel: str) -> dict[str, Any] | None:
    p = root / rel
    return json.loads(p.read_text()) if p.is_file() else None


def _provenance(results: dict[str, Any], rel: str, cmd: str) -> str:
    env = results["environment"]
    threads = env.get("torch_threads")
    where = str(env.get("device"))
    if where == "cpu" and isinstance(threads, int):
        where += f" with {threads} torch thread" + ("" if threads == 1 else "s")
    return (
        f"From [`{rel}`]({rel}), made by `{cmd}` (git `{env.get('git_revision')}`, "
        f"{where}, torch {env.get('torch')}, {env.get('time_utc')})."
    )


def _reproduce_section(results: dict[str, Any], rel: str, cmd: str) -> list[str]:
    sel = select(results)
    folder = str(Path(rel).parent)
    preset = results["config"]["preset"]
    took = f" This invocation took {results['run_s']:.0f} s." if "run_s" in results else ""
    out = [
        f"### The paper, reproduced ({preset} preset)",
        "",
        _provenance(results, rel, cmd) + took,
        "",
        "**Honest finding.** " + honest_finding(sel),
        "",
        table2(results, sel),
        "",
        "Latent sweep on the CNN:",
        "",
        sweep_table(sel),
        "",
        accounting_table(sel),
        "",
    ]
    if results.get("ours"):  # the main command's last word: the project's codecs
        out += ["The project's own codecs on the same models:", "", ours_table(results), ""]
    out += [
        f"Full report: [`{folder}/report.md`]({folder}/report.md).",
        "",
        f"![accuracy against ratio]({folder}/figures/accuracy_vs_ratio.png)",
        "",
    ]
    if preset == "paper":  # the paper's figures once, from the run at the paper's settings
        out += [
            "The paper's Figures 2 and 3 (training curves; parameters and training time), then "
            "4 and 5 (reconstructed CNN and RNN weights against the originals):",
            "",
            *(f"![{alt}]({folder}/figures/{name}.png)\n" for alt, name in (
                ("VAE training curves (Fig. 2)", "fig2_vae_training"),
                ("parameters and training time (Fig. 3)", "fig3_params_time"),
                ("CNN samples (Fig. 4)", "fig4_cnn_samples"),
                ("RNN samples (Fig. 5)", "fig5_rnn_samples"),
            )),
        ]
    return out


def _bench_section(bench: dict[str, Any]) -> list[str]:
    folder = str(Path(BENCH[0]).parent)
    return [
        "### Every codec on the same models",
        "",
        _provenance(bench, *BENCH),
        "",
        write_summary_table(bench).replace("## ", "#### ", 1),
        "",
        "**Best method per model.** " + leaders(bench),
        "",
        f"All operating points, with timings and peak memory: [`{folder}/bench.md`]"
        f"({folder}/bench.md).",
        "",
        f"![rate against accuracy]({folder}/rate_accuracy.png)",
        "",
    ]


def _datafree_section(bench: dict[str, Any], mini: dict[str, Any] | None,
                      default_md: str | None) -> list[str]:
    """Issue 18: the default codec and every method that needs the weights alone, swept
    densely on the zoo and MiniLM, and the default on models it was not chosen on."""
    from vaecompress.experiments.minilm_report import summary_table

    folder = str(Path(DATAFREE[0]).parent)
    out = [
        "### The default, and every method that needs no data",
        "",
        _provenance(bench, *DATAFREE),
        "",
        write_summary_table(bench).replace("## ", "#### ", 1),
        "",
        "**Best method per model.** " + leaders(bench),
        "",
        default_point(bench).replace("## ", "#### ", 1),
        "",
        f"All operating points: [`{folder}/bench.md`]({folder}/bench.md).",
        "",
        f"![rate against accuracy]({folder}/rate_accuracy.png)",
        "",
    ]
    if mini is not None:
        mfolder = str(Path(MINILM_DATAFREE[0]).parent)
        out += ["#### all-MiniLM-L6-v2, every method that needs no data", "",
                _provenance(mini, *MINILM_DATAFREE), "",
                "On the fidelity set (Python documentation):", "", summary_table(mini), "",
                "On held-out text of another kind (Jane Austen's novels; no codec or default "
                "was tuned on it):", "", summary_table(mini, "heldout_"), "",
                f"All operating points: [`{mfolder}/bench.md`]({mfolder}/bench.md).", ""]
    if default_md is not None:
        body = default_md.split("\n", 2)[2].strip()  # without its title
        out += ["#### The default on models it was not chosen on", "",
                f"From [`{DEFAULT[0]}`]({DEFAULT[0]}), made by `{DEFAULT[1]}`. " + body, ""]
    return out


def _ablation_section(abl: dict[str, Any]) -> list[str]:
    return [
        "### What each ingredient of vae-rd contributes",
        "",
        _provenance(abl, *ABLATION),
        "",
        write_ablation_table(abl).replace("## ", "#### ", 1),
        "",
    ]


def _warm_ablation_section(abl: dict[str, Any], mini: dict[str, Any],
                           free: dict[str, Any] | None) -> list[str]:
    """vae-rd's warm start on MiniLM with one ingredient changed at a time, beside the full
    point of the bench and the closed form it starts from (issue 19)."""
    from vaecompress.experiments.bench_minilm import STEPS_PER_EPOCH

    ref = abl["records"][0]["settings"] if abl["records"] else {}
    snr = ref.get("snr", 18.0)
    rows: list[tuple[str, dict[str, Any]]] = []
    for r in (free or {}).get("records", []):
        if r["codec"] == "vae-rd-free" and r["settings"] == {"snr": snr, "weighting": "auto"}:
            rows.append(("the closed form it starts from (vae-rd-free, no data)", r))
    for r in mini["records"]:
        if r["codec"] == "vae-rd" and r["settings"].get("snr") == snr:
            rows.append(("warm start + distillation (the bench's point)", r))
    names = {"rounding": "the warm start rounded to nearest (no error feedback)",
             "slope": "no rate term (slope 0)", "rate_sample": "the rate on every latent",
             "lam": "no warm start (first step std / 16, lam 0.01)"}
    steps = ref.get("epochs", 0) * STEPS_PER_EPOCH
    for r in abl["records"]:
        changed = [k for k in names if k in r["settings"]]
        label = names[changed[0]] if changed else "?"
        if not changed and r["settings"].get("epochs", 0) * STEPS_PER_EPOCH < steps:
            label = (f"{r['settings']['epochs'] * STEPS_PER_EPOCH:.0f} distillation step(s): "
                     "the rounding with feedback alone")
        rows.append((label, r))
    lines = ["| variant | ratio_honest | cos / neighbours (fidelity set) | cos / neighbours "
             "(held-out) | compress_s | of which task passes / rate term |",
             "|---|---|---|---|---|---|"]
    for label, r in rows:
        rep = r.get("report", {})
        split = (f"{rep['task_s']:.0f} / {rep['rate_s']:.0f}" if "task_s" in rep else "-")
        lines.append(f"| {label} | {r['ratio_honest']:.2f}x | {r['cos_mean']:.5f} / "
                     f"{100 * r['nn_same']:.1f}% | {r['heldout_cos_mean']:.5f} / "
                     f"{100 * r['heldout_nn_same']:.1f}% | {r['compress_s']:.0f} | {split} |")
    return ["#### What each ingredient of the warm start buys", "",
            _provenance(abl, *MINILM_ABLATION) + f" At {snr:g} dB, "
            f"{abl['records'][0]['settings'].get('epochs', 0) * STEPS_PER_EPOCH:.0f} "
            "distillation steps "
            "each ([`docs/vae-rd.md`](docs/vae-rd.md)); the first two rows are from the "
            "benches above.", "", "\n".join(lines), ""]


def _distill_coverage_section(md: str) -> list[str]:
    """Issue 19: what vae-rd's distillation on MiniLM reaches (`distill_coverage.md` under the
    README's headings)."""
    body = ["#" * 3 + line if line.startswith("## ") else line
            for line in md.splitlines()[2:]]
    return ["#### What the distillation reaches: the training sentences' vocabulary", "",
            f"From [`{DISTILL_COVERAGE[0]}`]({DISTILL_COVERAGE[0]}). Why and what it shows: "
            "[`docs/minilm.md`](docs/minilm.md).", "", *body, ""]


def _minilm_section(res: dict[str, Any], scaling: dict[str, Any] | None) -> list[str]:
    """The large real model (`experiments.bench_minilm`) and, when committed, the scaling
    benchmark."""
    from vaecompress.experiments.minilm_report import summary_table

    sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/scaling_report.py
    from scaling_report import growth_table, marginal_table  # type: ignore[import-not-found]
    from scaling_report import provenance as scaling_provenance

    folder = str(Path(MINILM[0]).parent)
    n = res["records"][0]["n_sentences"] if res["records"] else 0
    out = [
        "### A large real model: all-MiniLM-L6-v2",
        "",
        _provenance(res, *MINILM),
        "",
        f"{res['config']['params']:,} parameters, rebuilt from the file alone and judged by its "
        f"sentence embeddings over {n:,} sentences: the mean cosine to the original model's, "
        "and the share of sentences whose nearest neighbour stays the same "
        "([`docs/minilm.md`](docs/minilm.md)). Budgets are cut to fit this machine (stated "
        "there); methods marked (data) distil the original model's embeddings.",
        "",
        "On the fidelity set (Python documentation):",
        "",
        summary_table(res),
        "",
        "On held-out text of another kind (Jane Austen's novels; the distillation saw only the "
        "standard library's docstrings):",
        "",
        summary_table(res, "heldout_"),
        "",
        "Added bytes per parameter are the peak above the process before the point; records "
        "made before 518c247 that were not their process's first point counted memory the "
        "allocator kept from the earlier point in that base and read low (vae-rd at 18 and "
        "22 dB read less than half of what its points at 12, 14 and 26 dB read; "
        "[`docs/minilm.md`](docs/minilm.md)).",
        "",
        f"All operating points, with time per million parameters and peak memory: "
        f"[`{folder}/bench.md`]({folder}/bench.md).",
        "",
        f"![rate against fidelity]({folder}/rate_fidelity.png)",
        "",
    ]
    if scaling is not None:
        out += [
            "#### Scaling from 54k to 50M parameters",
            "",
            f"From [`{SCALING}`]({SCALING}), {scaling_provenance(scaling)}. Log-log slopes of "
            "time and memory against the parameter count (1 is linear growth), and issue 12's "
            "target: peak memory while compressing under 3 times the float32 parameters plus "
            "the VAE's own training state ([`benchmarks/README.md`](benchmarks/README.md)), "
            "at every size and per added parameter between the two largest sizes, where the "
            "libraries' fixed costs cancel.",
            "",
            growth_table(scaling),
            "",
            marginal_table(scaling),
            "",
        ]
    return out


TORCH_IMPORT = "python -c 'import torch'"
SPEED = ("benchmarks/results/main_command.json", "benchmarks/results/cli_start.json",
         "benchmarks/results/codec_speed.json")


def _speed_section(main_cmd: dict[str, Any] | None, start: dict[str, Any] | None,
                   speed: dict[str, Any] | None) -> list[str]:
    """Issue 12's user-facing times, from the benchmarks' committed results (every number and
    how it was measured: benchmarks/README.md)."""
    lines = []
    if main_cmd is not None:
        lines.append(
            f"- The README's main command on a fresh clone with an empty cache: "
            f"{main_cmd['wall_s_command'] / 60:.1f} minutes, setup and MNIST download included "
            f"(git `{main_cmd['measured_commit'][:12]}`, load average "
            f"{main_cmd['load_average_start'][0]} at the start; [`{SPEED[0]}`]({SPEED[0]})).")
    if start is not None:
        med = {k: v["wall_s"]["median"] for k, v in start["commands"].items()}
        lines.append(
            f"- `vaecompress --help` starts in {med['vaecompress --help'] * 1000:.0f} ms and "
            f"`inspect FILE` in {med['vaecompress inspect FILE'] * 1000:.0f} ms, without torch "
            f"(`python -c 'import torch'` alone: {med[TORCH_IMPORT]:.2f} s; "
            f"[`{SPEED[1]}`]({SPEED[1]})).")
    if speed is not None:
        for m in speed["models"].values():
            ratios = ", ".join(f"{c} {q['decode_vs_nncodec_inside_worker']:.2f}x"
                               for c, q in m["ratios"].items())
            lines.append(
                f"- Decoding the {m['model'].upper()}, against NNCodec's own decoder timed "
                f"inside its worker: {ratios} of its time ([`{SPEED[2]}`]({SPEED[2]})).")
    if not lines:
        return []
    return ["### Speed", "", *lines,
            "", "How each is measured, and the rest (threads, VAE training against the "
            "machine's matrix-multiply rate): [`benchmarks/README.md`](benchmarks/README.md).",
            ""]


def _coding(c: dict[str, Any] | None) -> str:
    if c is None:
        return "none passes"
    settings = ", ".join(f"{k}={v}" for k, v in c["settings"].items())
    return (f"`{c['codec']}`{f' {settings}' if settings else ''}: {c['total_bytes']:,} B "
            f"({c['ratio']:.1f}x)")


def _sweep_end(picks: list[dict[str, Any]]) -> str:
    """`*` where, for some member, no setting of its pick's codec gave fewer bytes
    (`per_member`'s `at_sweep_end`)."""
    return "*" if any(p["at_sweep_end"] for p in picks) else ""


def _families_section(found: list[tuple[dict[str, Any], str, str]]) -> list[str]:
    """One table for every family results file: the smallest passing coding of the members
    alone and as a family (against the base, or as a series), data-free and with the task."""
    out = ["### Families of models: fine-tunes against their base, a run's checkpoints", "",
           "Every byte that rebuilds the members given the base (the base itself is not "
           "counted); a coding passes when every member stays within the tolerance of the "
           "member it replaces (MNIST: 0.5 point of accuracy on the member's own test set; "
           "MiniLM: a mean cosine of 0.999 on the held-out Austen text). Ratios are over the "
           "members' float32 bytes. What `--base`, series and shared priors are: "
           "[`docs/families.md`](docs/families.md).", ""]
    rows = []
    for res, _rel, _cmd in found:
        model = res["config"]["model"]
        minilm = res.get("metric", {}).get("key") == "cos_mean"
        lost = ("mean cosine down by up to {:.5f}" if minilm
                else "loses up to {:.2f} points")
        for family, info in res["families"].items():
            comps = {c["codecs"]: c for c in comparisons(info)}
            for label, c in comps.items():
                # data-free, and in the task-aware row with its scales refined on the task
                bd = info["summary"].get("bitdelta" if label.startswith("data-free")
                                         else "bitdelta_refined")
                rows.append(
                    f"| {model} | {family} ({len(info['members'])}) | {label} | "
                    f"{_coding(c['alone'])} | {_coding(c['family'])} | "
                    + (f"**{c['family_vs_alone']:.2f}x**" if c["family_vs_alone"] else "-")
                    + " | "
                    + (f"{bd['total_bytes']:,} B, " + lost.format(bd["max_drop"]) if bd else "")
                    + " |")
    out += ["| model | family (members) | codecs | smallest passing alone | smallest passing "
            "as a family | family vs alone | bitdelta (1 bit a weight; scales refined where "
            "task-aware) |",
            "|---|---|---|---|---|---|---|", *rows, ""]
    each_rows = []
    for res, _rel, _cmd in found:
        key = res.get("metric", {}).get("key", "accuracy")
        for family, info in res["families"].items():
            shown: list[tuple[int, int]] = []
            for c in comparisons(info):
                each = per_member(info, res["config"]["tolerance"], key,
                                  c["codecs"] == "data-free")
                # a task-aware row that picks the data-free codings again is not repeated
                if each is not None and (each["alone_bytes"], each["family_bytes"]) not in shown:
                    shown.append((each["alone_bytes"], each["family_bytes"]))
                    ends = [_sweep_end(each[k]) for k in ("alone", "family")]
                    each_rows.append(
                        f"| {res['config']['model']} | {family} ({len(info['members'])}) | "
                        f"{c['codecs']} | {each['alone_bytes']:,} B{ends[0]} | "
                        f"{each['family_bytes']:,} B{ends[1]} | "
                        f"**{each['family_vs_alone']:.2f}x** |")
    if each_rows:
        out += ["The same sweeps with each member at its own smallest passing coding (what "
                "compressing each fine-tune with its own `--max-drop` would pick), alone and "
                "against the base (`*`: for some member, no setting its pick's codec was "
                "tried at gave fewer bytes, so a smaller coding of it was not tried):", "",
                "| model | family (members) | codecs | each alone | each against the base | "
                "family vs alone |", "|---|---|---|---|---|---|", *each_rows, ""]
    for res, rel, cmd in found:
        out.append(f"- {res['config']['model']}: [`{rel}`]({rel}) (tables: "
                   f"[`{rel.replace('.json', '.md')}`]({rel.replace('.json', '.md')})), made "
                   f"by `{cmd}` at git `{res['environment']['git_revision']}`.")
    return [*out, ""]


def _heldout_vad_section(md: str) -> list[str]:
    """The default on a real model nobody here tuned on: `heldout_vad.md` up to its table of
    every point, its headings under the README's."""
    lines = md.splitlines()
    end = lines.index("## Every point")
    body = [("###" + line) if line.startswith("## ") else line for line in lines[2:end]]
    return ["#### The default on a real model nobody here tuned on: a voice detector", "",
            f"From [`{HELDOUT_VAD[0]}`]({HELDOUT_VAD[0]}) (every point there), made by "
            f"`{HELDOUT_VAD[1]}`.", "", *body, ""]


def _heldout_pitch_section(md: str) -> list[str]:
    """The default on a second real model: `heldout_pitch.md` without its tables of every
    point, its headings under the README's."""
    body, skipping = [], False
    for line in md.splitlines()[2:]:
        if line.startswith("#"):
            skipping = line == "### Every point"
            if line.startswith(("## ", "### ")):
                line = "###" + line
        if not skipping:
            body.append(line)
    return ["#### The default on a second real model nobody here tuned on: a pitch tracker", "",
            f"From [`{HELDOUT_PITCH[0]}`]({HELDOUT_PITCH[0]}) (every point there), made by "
            f"`{HELDOUT_PITCH[1]}`.", "", *body, ""]


def _max_drop_section(md: str) -> list[str]:
    """Issue 18's `--max-drop`: the tables of `max_drop.md`, under its own words."""
    body = md.splitlines()[2:]  # past its title
    return ["#### `--max-drop D`: the smallest file that loses at most D, chosen on validation "
            "data", "", f"From [`{MAX_DROP[0]}`]({MAX_DROP[0]}), made by `{MAX_DROP[1]}`. "
            "How the search works: [`docs/default-codec.md`](docs/default-codec.md).", "",
            *body, ""]


def _delta_default_section(md: str) -> list[str]:
    """Issue 20's `--base` with no settings: the summary table of `delta_default.md`."""
    lines = md.splitlines()
    made = next(line for line in lines if line.startswith("Made by"))
    start = next(i for i, line in enumerate(lines) if line.startswith("| model (fine-tunes)"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")),
               len(lines))
    return ["#### The default against a base (`compress FT --base BASE`, no settings)", "",
            f"From [`{DELTA_DEFAULT[0]}`]({DELTA_DEFAULT[0]}), made by `{DELTA_DEFAULT[1]}`. "
            + "At git " + made.split(" at git ", 1)[1],
            "", *lines[start:end], ""]


def _synthetic_heldout_section(text: str) -> list[str]:
    """`vae-rd` distilled on inputs made from the model (no data) on the held-out
    classifiers, beside the default and NNCodec."""
    body = text.split("\n", 2)[2].strip()  # without its title
    return ["#### `vae-rd` without data (`--set synthetic=true`) on classifiers it was not "
            "built on", "",
            f"From [`{SYNTHETIC_HELDOUT[0]}`]({SYNTHETIC_HELDOUT[0]}), made by "
            f"`{SYNTHETIC_HELDOUT[1]}`. " + body, ""]


def render(root: Path = ROOT) -> str:
    parts: list[str] = []
    datafree = _load(root, DATAFREE[0])
    if datafree is not None:
        dmd = root / DEFAULT[0]
        parts += _datafree_section(datafree, _load(root, MINILM_DATAFREE[0]),
                                   dmd.read_text() if dmd.is_file() else None)
    smd = root / SYNTHETIC_HELDOUT[0]
    if smd.is_file():
        parts += _synthetic_heldout_section(smd.read_text())
    vmd = root / HELDOUT_VAD[0]
    if vmd.is_file():
        parts += _heldout_vad_section(vmd.read_text())
    pmd = root / HELDOUT_PITCH[0]
    if pmd.is_file():
        parts += _heldout_pitch_section(pmd.read_text())
    mdmd = root / MAX_DROP[0]
    if mdmd.is_file():
        parts += _max_drop_section(mdmd.read_text())
    bench = _load(root, BENCH[0])
    if bench is not None:
        parts += _bench_section(bench)
    abl = _load(root, ABLATION[0])
    if abl is not None:
        parts += _ablation_section(abl)
    mini = _load(root, MINILM[0])
    if mini is not None:
        parts += _minilm_section(mini, _load(root, SCALING))
        abl_mini = _load(root, MINILM_ABLATION[0])
        if abl_mini is not None:
            parts += _warm_ablation_section(abl_mini, mini, _load(root, MINILM_DATAFREE[0]))
        dcmd = root / DISTILL_COVERAGE[0]
        if dcmd.is_file():
            parts += _distill_coverage_section(dcmd.read_text())
    found = [(res, rel, cmd) for rel, cmd in FAMILIES if (res := _load(root, rel)) is not None]
    if found:
        parts += _families_section(found)
    ddmd = root / DELTA_DEFAULT[0]
    if ddmd.is_file():
        parts += _delta_default_section(ddmd.read_text())
    parts += _speed_section(*(_load(root, rel) for rel in SPEED))
    for rel, cmd in (REPRODUCE, QUICK):
        res = _load(root, rel)
        if res is not None:
            parts += _reproduce_section(res, rel, cmd)
    if not parts:
        parts = ["_No committed results yet: run the commands above._", ""]
    return "\n".join(parts)


def updated(readme: str, block: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError("README.md lacks the results markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    path = ROOT / "README.md"
    text = path.read_text()
    new = updated(text, render())
    if args.check:
        if new != text:
            print("README.md results are out of date: run python scripts/readme.py")
            return 1
        return 0
    if new != text:
        atomic_write_text(path, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
