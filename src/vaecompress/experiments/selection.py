"""Which records of a `vaecompress reproduce` run the report shows: the record of each model at
the main latent, and the latent sweep on one model, from the `results` dict alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Record = Mapping[str, Any]


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
