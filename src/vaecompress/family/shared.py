"""A prior shared by a family of models (issue 20): the members' files of a rate-distortion
codec (`vae-rd`, `vae-rd-free`), each coded alone or against a base as usual, then re-coded
under one frequency table per tensor learned over all of them (`methods.rd.shared`).

`share(files)` gives the prior (stored once: the family's `prior` file) and every member's new
file, which references the prior by its sha256 and decodes, given it, to exactly what its own
file did (checked here, record by record, before anything is returned). A record keeps its own
table where that is smaller, and a member that nothing makes smaller keeps its own file, so a
member never grows by more than its reference to the prior; the family pays the prior once.
Whether the family is then smaller than its members alone is what
`benchmarks/family_tables.py` measures (docs/families.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vaecompress.errors import UserError
from vaecompress.format import dumps, loads
from vaecompress.methods.rd import shared
from vaecompress.methods.rd.latents import decode_model

PRIOR = shared.PRIOR


@dataclass
class SharedFamily:
    prior: bytes  # the family's prior, stored once (each member's external `prior`); empty
    # when no member is smaller under it (every member keeps its own file)
    members: list[bytes]  # each member's file, coded under the prior where that is smaller
    alone: list[int]  # each member's bytes before sharing

    @property
    def total_bytes(self) -> int:
        """What the family costs: every member's file and the prior once."""
        return len(self.prior) + sum(len(m) for m in self.members)

    @property
    def saving(self) -> float:
        """The share of the members' own bytes that sharing saves (negative: it costs)."""
        return 1 - self.total_bytes / sum(self.alone)


def share(files: Sequence[bytes]) -> SharedFamily:
    """Learn one table per tensor over the members' latents and re-code every member under it
    (the members: files of `vae-rd` or `vae-rd-free` with the same manifest)."""
    if len(files) < 2:
        raise UserError("a shared prior is for a family of two members or more")
    containers = [loads(f) for f in files]
    tables = shared.learn(containers)
    prior = shared.prior_bytes(tables)
    out, used = [], False
    for f, c in zip(files, containers, strict=True):
        member = shared.recode(c, tables, prior)
        if member is None:  # nothing smaller under the prior: the member keeps its own file
            out.append(bytes(f))
            continue
        used = True
        specs = shared.latent_specs(c)
        before = decode_model(c.payload(shared.PAYLOAD).data, specs)
        after = decode_model(member.payload(shared.PAYLOAD).data, specs, tables)
        if any(not np.array_equal(before[k], after[k]) for k in before):
            raise RuntimeError("a member re-coded under the shared prior decodes otherwise")
        out.append(dumps(member))
    return SharedFamily(prior if used else b"", out, [len(f) for f in files])
