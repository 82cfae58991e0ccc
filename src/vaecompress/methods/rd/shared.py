"""A prior shared by a family of files of the rate-distortion codecs (issue 20): one frequency
table per tensor, learned over the family's members, stored once, each member's latents coded
under it where that is smaller than under the member's own table.

A member's file is its own file with its latent records rewritten (`latents.recode_shared`: the
records coded under the shared table carry flag 16 and no table) and an external reference
`prior` (kind `rd-prior`, role `model`: the prior is the shared part of the decoder, counted
once for the family and divided over its members), with the codec's version 2. What it
decodes to is unchanged, so the checksum it carries still holds. The prior is
`coding.entropy.tables_to_bytes` of one table per coded tensor of the manifest (None where
no member has latents there).

Boundary: containers and bytes in, containers and bytes out; which members form a family,
and how they are stored together, is `family.shared`'s business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from vaecompress.codecs.base import read_passthrough
from vaecompress.coding.entropy import Table, pooled_table, tables_from_bytes, tables_to_bytes
from vaecompress.coding.floats import float_specs
from vaecompress.errors import FormatError, UserError
from vaecompress.format import ROLE_MODEL, Container, External, Payload
from vaecompress.methods.rd.latents import latents_of, recode_shared

PRIOR = "prior"  # the external's name in a member's header
PRIOR_KIND = "rd-prior"
PAYLOAD = "latents"
CODECS = ("vae-rd", "vae-rd-free")
SHARED_VERSION = 2  # the codecs' version of a member coded under a shared prior


def latent_specs(c: Container) -> list[dict]:
    """The manifest entries the latent records code, in order: the floating tensors not kept
    exactly in the passthrough payload (vae-rd's `frozen`)."""
    raw = read_passthrough(c)
    return [t for t in float_specs(c.tensors) if t["name"] not in raw]


def _coded(specs: list[dict]) -> int:
    return sum(1 for t in specs if all(int(d) for d in t["shape"]))


def tables_of(c: Container, externals: Mapping[str, bytes]) -> list[Table | None] | None:
    """The shared prior a member's records need (None for a file coded alone), read from its
    external bytes; a member without them is refused in one line."""
    if not any(e.name == PRIOR for e in c.externals):
        return None
    blob = externals.get(PRIOR)
    if blob is None:
        raise UserError("this file is a member of a family coded under a shared prior: give "
                        "the family's prior file (--external prior=FILE)")
    specs = latent_specs(c)
    tables = tables_from_bytes(blob, max_tables=_coded(specs))
    if len(tables) != _coded(specs):
        raise FormatError(f"the prior holds {len(tables)} tables for {_coded(specs)} tensors")
    return tables


def learn(members: Sequence[Container]) -> list[Table | None]:
    """One table per coded tensor: the latents of every member together."""
    if not members:
        raise UserError("a family needs at least one member")
    first = members[0]
    for c in members:
        if c.codec.get("name") not in CODECS:
            raise UserError(f"a shared prior is for {' and '.join(CODECS)} files, not "
                            f"{c.codec.get('name')}")
        if c.tensors != first.tensors:
            raise UserError("the members of a family hold the same tensors (names, shapes, "
                            "dtypes)")
        if any(e.name == PRIOR for e in c.externals):
            raise UserError("a member is already coded under a shared prior")
    per_member = [latents_of(c.payload(PAYLOAD).data, latent_specs(c)) for c in members]
    return [pooled_table([lat[t] for lat in per_member])
            for t in range(len(per_member[0]))]


def prior_bytes(tables: list[Table | None]) -> bytes:
    return tables_to_bytes(tables)


def recode(c: Container, tables: list[Table | None], prior: bytes) -> Container | None:
    """The member `c` with its records coded under `tables` where that is smaller, referencing
    the prior (the bytes of `prior_bytes(tables)`) as an external; None when no record is
    smaller under the prior (the member keeps its own file)."""
    own = c.payload(PAYLOAD).data
    data = recode_shared(own, latent_specs(c), tables)
    if data == own:
        return None
    payloads = [Payload(p.name, p.kind, p.role, data) if p.name == PAYLOAD else p
                for p in c.payloads]
    ext = External(PRIOR, PRIOR_KIND, ROLE_MODEL, hashlib.sha256(prior).hexdigest(), len(prior))
    version = max(int(c.codec.get("version", 1)), SHARED_VERSION)  # TCQ's 3 stays 3
    return replace(c, codec={**c.codec, "version": version}, payloads=payloads,
                   externals=[*c.externals, ext], meta=dict(c.meta))
