"""The report's plain-language "honest finding", generated from the numbers of the records:
never typed by hand, so it cannot disagree with the tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vaecompress.accounting import break_even_k, per_model_limit, split_shared
from vaecompress.experiments.formatting import (
    finite,
    fmt_acc,
    fmt_int,
    fmt_ratio,
    model_name,
    signed_range,
    span,
)
from vaecompress.experiments.selection import Record, Selection
from vaecompress.experiments.tables import AMORTIZE_K, amortized

DROP_OK = 1.0  # accuracy points: the paper's "accuracy loss of about 1%"

def _break_even(r: Record) -> float | None:
    return break_even_k(*(r.get(k) for k in _BYTES))


def _limit(r: Record) -> float | None:
    return per_model_limit(*(r.get(k) for k in _BYTES))


_BYTES = ("orig_bytes", "file_bytes", "model_bytes", "external_bytes")


def accuracy_change(drops: list[float], latent: int) -> str:
    """One sentence on the accuracy drops (original minus rebuilt, points) at `latent`; a range
    with ends of both signs reads "from -0.12 to +0.05", never "-0.12-0.05"."""
    paper = "the paper reports a drop of about 1"
    # The values as printed, signed zero dropped: a drop of -0.001 shows as 0.00, not -0.00.
    shown = [float(fmt_acc(d)) + 0.0 for d in drops]
    if min(shown) >= 0:
        return (f"Accuracy drops by {span(shown, fmt_acc)} points at latent {latent} "
                "(the paper reports about 1).")
    if max(shown) <= 0:
        rises = [-d + 0.0 for d in shown]
        return f"Accuracy rises by {span(rises, fmt_acc)} points at latent {latent} ({paper})."
    return (f"The accuracy drop at latent {latent} ranges {signed_range(shown)} points "
            f"(negative: the rebuilt model scores higher; {paper}).")


def honest_finding(sel: Selection) -> str:
    """The plain-language summary, generated from the numbers of the main-latent records."""
    recs = [r for r in sel.main_records if finite(r.get("ratio_honest"))]
    if not recs:
        return "_No records at the main latent: nothing to summarize._"
    text = [_sizes(sel, recs)]
    shared = _sharing(recs)
    if shared:
        text.append(shared)
    drops = [float(r["acc_drop"]) for r in recs if finite(r.get("acc_drop"))]
    if drops:
        text.append(accuracy_change(drops, sel.latent))
    sw = [r for r in sel.sweep if finite(r.get("acc_drop"))]
    if len(sw) > 1:
        text.append(_sweep(sel, sw))
    return " ".join(text)


def _sizes(sel: Selection, recs: Sequence[Mapping[str, Any]]) -> str:
    """The codes against the weights, the decoder against the model, and what a user stores."""
    names = ", ".join(model_name(r["model"]) for r in recs)
    rp = [r.get("ratio_paper") for r in recs]
    rh = [r["ratio_honest"] for r in recs]
    dec = [r["model_bytes"] / r["orig_bytes"] for r in recs
           if finite(r.get("model_bytes")) and finite(r.get("orig_bytes")) and r["orig_bytes"]]
    first = (f"At latent {sel.latent} ({names}) the latent codes are {span(rp)} times smaller "
             "than the float32 weights (the paper's ratio, which counts the codes alone)")
    if dec and max(dec) > 0:
        first += (f", but the decoder needed to rebuild them is {span(dec)} times "
                  f"{'larger than' if min(dec) >= 1 else 'the size of'} the model itself")
    larger = [r for r in recs if r["ratio_honest"] < 1]
    store = "so what a user must store to get the model back is"
    if len(larger) == len(recs):
        inv = [1 / x for x in rh]
        verdict = (f"{store} {span(inv)} times LARGER than the original model "
                   f"(ratio_honest {span(rh)})")
    elif not larger:
        verdict = (f"{store} {span(rh)} times smaller than the original model "
                   f"(ratio_honest {span(rh)})")
    else:
        verdict = (f"{store} larger than the original for "
                   f"{', '.join(model_name(r['model']) for r in larger)} and smaller for the "
                   f"others (ratio_honest {span(rh)})")
    return first + ", " + verdict + "."


def _sharing(recs: Sequence[Mapping[str, Any]]) -> str:
    """When one decoder shared by many models pays, and the limit of sharing ('' when no
    record says)."""
    pairs = [(r, k) for r in recs if (k := _break_even(r)) is not None]
    if not pairs:
        return ""
    need = [(r, k) for r, k in pairs if math.isfinite(k) and k > 1]
    never = [r for r, k in pairs if not math.isfinite(k)]
    am = {k: [amortized(r, k) for r in recs if finite(amortized(r, k))] for k in AMORTIZE_K}
    amtxt = "; ".join(f"K={k}: {span(v)}" for k, v in am.items() if v)
    clauses = []
    if need:
        each = ", ".join(f"{fmt_int(k)} ({model_name(r['model'])})" for r, k in need)
        clauses.append(f"Only when one decoder serves at least {each} models of the same "
                       "size do they take fewer bytes than the original weights"
                       + (f" (amortized ratio {amtxt})" if amtxt else ""))
    elif amtxt:
        clauses.append(f"Shared by K models, one decoder gives an amortized ratio {amtxt}")
    if never:
        clauses.append(f"for {', '.join(model_name(r['model']) for r in never)} no number of "
                       "models does, since each file without the decoder is already as "
                       "large as the model")
    lim = [x for r, _ in pairs if (x := _limit(r)) is not None]
    extra = [split_shared(r["file_bytes"], r["model_bytes"], r["external_bytes"])[0]
             - r["payload_bytes"] for r, _ in pairs if finite(r.get("payload_bytes"))]
    if lim:
        tail = ("even if one decoder served unboundedly many models the ratio would only "
                f"tend to {span(lim)}")
        if extra:
            tail += (f", below ratio_paper, since each file carries {span(extra, fmt_int)} "
                     "bytes besides the codes (header, layout, normalization, the rebuilt "
                     "weights' checksums)")
        clauses.append(tail)
    if not clauses:
        return ""
    joined = "; ".join(clauses)
    return joined[0].upper() + joined[1:] + "."


def _sweep(sel: Selection, sw: Sequence[Mapping[str, Any]]) -> str:
    """How far down the latent sweep the model keeps its accuracy, and what the ratios do."""
    # The smallest latent from which every larger latent also stays within DROP_OK.
    keep = None
    for r in sorted(sw, key=lambda r: -int(r["latent"])):
        if r["acc_drop"] > DROP_OK:
            break
        keep = r
    smallest = min(sw, key=lambda r: int(r["latent"]))
    name = model_name(sel.sweep_model)
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
    s += (f". Across the sweep ratio_paper spans {span([r.get('ratio_paper') for r in sw])}"
          f" while ratio_honest stays at {span(rh_sw)}: shrinking the latent shrinks the "
          "codes, not the decoder that dominates the file")
    return s + "."
