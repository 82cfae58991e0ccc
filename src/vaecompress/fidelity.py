"""What the rebuilt weights lost, measured from the weights alone, for any codec.

Without the task nothing can say what a model's outputs lost, but the weights can say how far
they moved. Each floating tensor's relative squared error `|w_hat - w|^2 / |w|^2`, in dB as a
signal-to-noise ratio; the model's SNR is that of their relative
errors summed over tensors (the data-free codec's own measure with its `relative` weighting,
`methods.rd.allocate`: the errors of the layers add up along the network), and the worst tensor is
named, so that one destroyed layer is never hidden by many exact ones. The tensors rebuilt with
an error as large as themselves (as zeros, or worse) are counted apart too, with their share of
the weights' energy and the SNR of the others: a sum over tensors counts a tiny tensor dropped
(MiniLM's attention key biases, which the softmax cancels) as much as a large one, and the
reader should see which it is.

A model coded against a base (`--base`) is also measured against its change from the base
(`change_fidelity`): a codec may keep the weights within its SNR and still lose the change,
when the change is smaller than the error the weights may take, and then the rebuilt model is
the base, not the fine-tune.

Boundary: tensors in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def snr_db(nsr: float) -> float:
    """-10 log10 of a noise-to-signal ratio (inf for an exact result)."""
    return math.inf if nsr <= 0 else -10.0 * math.log10(nsr)


def nsr_of_db(snr: float) -> float:
    """The noise-to-signal ratio of a fidelity in dB."""
    return 10.0 ** (-snr / 10.0)


def weights_fidelity(orig: Mapping[str, torch.Tensor],
                     rebuilt: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """{"snr_db", "worst_tensor", "worst_snr_db", "exact", "lost_tensors", "lost_energy",
    "others_snr_db", "energy"} over the floating tensors of `orig` (SNRs are inf where nothing
    was lost; a tensor of zeros counts by its absolute error): `lost_tensors` rebuilt with a
    relative error of 1 or more, holding `lost_energy` of the weights' `energy` (a share), and
    the summed SNR of the others."""
    rel: dict[str, float] = {}
    energies: dict[str, float] = {}
    exact = True
    for k, w in orig.items():
        if not w.is_floating_point() or not w.numel():
            exact = exact and torch.equal(w, rebuilt[k])
            continue
        noise, energy = _noise_and_energy(w, rebuilt[k])
        exact = exact and noise == 0.0
        rel[k] = noise / energy if energy > 0 else (0.0 if noise == 0 else math.inf)
        energies[k] = energy
    if not rel:
        return {"snr_db": math.inf, "worst_tensor": None, "worst_snr_db": math.inf,
                "exact": exact, **_lost({}, {})}
    worst = max(rel, key=lambda k: rel[k])
    return {"snr_db": snr_db(sum(rel.values())), "worst_tensor": worst,
            "worst_snr_db": snr_db(rel[worst]), "exact": exact, **_lost(rel, energies)}


def _lost(rel: Mapping[str, float], energies: Mapping[str, float]) -> dict[str, Any]:
    lost = [k for k, r in rel.items() if r >= 1.0]
    total = sum(energies.values())
    return {"lost_tensors": len(lost),
            "lost_energy": sum(energies[k] for k in lost) / total if total > 0 else 0.0,
            "others_snr_db": snr_db(sum(r for k, r in rel.items() if r < 1.0)),
            "energy": total}


# Under this SNR of the change from the base, most of the change's energy is lost (at 3 dB the
# error holds half of it; a change coded as zeros is 0 dB): `describe` warns.
CHANGE_WARN_DB = 3.0


def change_fidelity(orig: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                    rebuilt: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, Any]:
    """{"change_snr_db"}: `|w - b|^2 / |w_hat - w|^2` pooled over the tensors `names` (those
    coded as a change from the base `b`), in dB; inf where nothing was lost, -inf (no
    change at all, something lost) as the worst case."""
    noise = change = 0.0
    for k in names:
        n, _ = _noise_and_energy(orig[k], rebuilt[k])
        d, _ = _noise_and_energy(orig[k], base[k])
        noise += n
        change += d
    if noise == 0.0:
        return {"change_snr_db": math.inf}
    return {"change_snr_db": (10.0 * math.log10(change / noise)) if change > 0 else -math.inf}


def combined(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `weights_fidelity` of a model from those of its disjoint parts (the shards of a
    folder, coded one at a time): the relative errors add up over tensors, so the parts'
    NSRs do; the worst tensor is the worst part's."""
    if not parts:
        return {"snr_db": math.inf, "worst_tensor": None, "worst_snr_db": math.inf,
                "exact": True, **_lost({}, {})}
    worst = min(parts, key=lambda p: p["worst_snr_db"])
    total = sum(p["energy"] for p in parts)
    return {"snr_db": snr_db(sum(nsr_of_db(p["snr_db"]) for p in parts)),
            "worst_tensor": worst["worst_tensor"], "worst_snr_db": worst["worst_snr_db"],
            "exact": all(bool(p["exact"]) for p in parts),
            "lost_tensors": sum(p["lost_tensors"] for p in parts),
            "lost_energy": (sum(p["lost_energy"] * p["energy"] for p in parts) / total
                            if total > 0 else 0.0),
            "others_snr_db": snr_db(sum(nsr_of_db(p["others_snr_db"]) for p in parts)),
            "energy": total}


CHUNK = 2**20  # elements summed in float64 at a time: a large tensor costs no float64 copy


def _noise_and_energy(w: torch.Tensor, rebuilt: torch.Tensor) -> tuple[float, float]:
    """(|rebuilt - w|^2, |w|^2) in float64, a slice at a time."""
    a_all = w.detach().to("cpu").reshape(-1)
    b_all = rebuilt.detach().to("cpu").reshape(-1)
    noise = energy = 0.0
    for i in range(0, a_all.numel(), CHUNK):
        a = a_all[i : i + CHUNK].to(torch.float64)
        noise += float((b_all[i : i + CHUNK].to(torch.float64) - a).square().sum())
        energy += float(a.square().sum())
    return noise, energy


# Over this share of the weights' energy in tensors rebuilt as zeros or worse, `describe` warns
# that the model may not work (a few tensors of negligible energy, such as attention key biases
# a model ignores, are only reported).
LOST_WARN = 0.01
# What keeps more of a change from the base, said when most of it is lost (`describe`).
CHANGE_REMEDY = ("a fidelity of the change's own keeps it (--set change_snr=DB, with the default "
                 "codec)")


def describe(fid: Mapping[str, Any], *, remedy: str = CHANGE_REMEDY,
             measured: bool = False) -> str:
    """For a person: the model's SNR and its worst tensor's; against a base, the SNR of the
    change from it. A warning line follows when tensors holding more than LOST_WARN of the
    weights' energy are rebuilt as zeros or worse (not when the damage was `measured` on the
    task and accepted, as `--max-drop` does), and one when most of the change is lost, ending
    with `remedy` (what keeps more of it: a caller whose knob was chosen for it, as
    `--max-drop`'s search chose `change_snr`, says its own)."""
    if fid.get("exact"):
        return "weights rebuilt exactly"
    line = (f"weights SNR {_db(fid['snr_db'])} (relative errors summed over tensors), worst "
            f"tensor '{fid['worst_tensor']}' {_db(fid['worst_snr_db'])}")
    lost = fid.get("lost_tensors", 0)
    if lost:
        line += (f"; {lost} tensor{'s' if lost > 1 else ''} holding "
                 f"{_share(fid['lost_energy'])} of the weights' energy rebuilt as zeros or "
                 f"worse, the others at {_db(fid['others_snr_db'])}")
    if lost and fid["lost_energy"] > LOST_WARN and not measured:
        line += (f"\nwarning: tensors holding {_share(fid['lost_energy'])} of the weights' "
                 "energy are rebuilt as zeros or worse, and the rebuilt model may not work: a "
                 "finer fidelity keeps them (--snr, a larger --size)")
    change = fid.get("change_snr_db")
    if change is None:
        return line
    line += f"; the change from the base kept at SNR {_db(change)}"
    if change < CHANGE_WARN_DB:
        line += ("\nwarning: most of the change from the base is lost (the rebuilt model is "
                 f"close to the base, not to the model given): {remedy}")
    return line


def _share(x: float) -> str:
    """A share in per cent to two digits ("0.012%", "78%", "100%"), never in exponent form."""
    if x < 1e-6:
        return "under 0.0001%"
    return f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.2g}%"


def _db(x: float) -> str:
    return "inf dB" if math.isinf(x) else f"{x:.1f} dB"
