"""How much of a family member's file a prior shared by the family could save, and saves
(issue 20): the bytes of the entropy coder's frequency tables, the only part of a
`vae-rd`/`vae-rd-free` file a prior learned once over the family replaces, and what the family
costs with the prior of `family.shared` (learned over the members, stored once, each member
re-coded under it where that is smaller; every member checked to decode as its own file did).

    python benchmarks/family_tables.py   # -> benchmarks/results/family_tables.json

The fine-tune family of `experiments.families` (the FNN fine-tuned on three shifted MNIST tasks),
each member coded against the base and alone, as in that bench. Every symbol stream the codec
writes is parsed back as it is written: its table (the distinct symbols and their quantized
counts, varints) against the whole stream. A prior shared by K members stores one table instead
of K, so it saves at most (K - 1) / K of the tables' bytes, and that only if the members' tables
were the same.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchlib import finish_run, start_run, write_json

POINTS = [  # (how, codec, settings): the smallest passing codings of the families bench
    ("base", "vae-rd-free", {"snr": 22.0}),
    ("alone", "vae-rd-free", {"snr": 6.0}),
    ("base", "vae-rd", {"lam": 2.0, "epochs": 1.0}),
    ("alone", "vae-rd", {"lam": 5.5, "epochs": 1.0}),
]


class _Tables:
    """Counts the table bytes of every ANS stream `coding.entropy.encode_symbols` writes."""

    def __init__(self) -> None:
        from vaecompress.coding import entropy

        self.table = self.streams = 0
        orig = entropy.encode_symbols

        def counted(*a: Any, **k: Any) -> bytes:
            out = orig(*a, **k)
            if out and out[0] == entropy.MODE_ANS:
                _, pos = entropy.read_varint(out, 1)  # the count of symbols
                start = pos
                distinct, pos = entropy.read_varint(out, pos)
                for _ in range(2 * distinct):  # the symbols (as gaps), then their counts
                    _, pos = entropy.read_varint(out, pos)
                self.table += pos - start
            self.streams += len(out)
            return out

        entropy.encode_symbols = counted
        import vaecompress.methods.rd.latents as latents

        latents.encode_symbols = counted  # where it was imported by name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/family_tables.json")
    args = p.parse_args(argv)
    run = start_run("family_tables", argv if argv is not None else sys.argv[1:])
    import torch

    from vaecompress.api import compress, decompress
    from vaecompress.codecs import CodecContext
    from vaecompress.data import load_mnist
    from vaecompress.experiments import families as fam
    from vaecompress.experiments.common import trained_model
    from vaecompress.family.shared import share
    from vaecompress.tasks.mnist import make_finetuner
    from vaecompress.zoo.train import preset_config

    torch.set_num_threads(1)
    cfg = fam.FamiliesConfig()
    cpu = torch.device("cpu")
    train, test = load_mnist(None)
    base = trained_model(cfg.model, preset_config(cfg.preset, cfg.model, cfg.seed), train, test,
                         device=cpu, progress=False).state
    members = fam.fine_tunes(cfg, base, train, test, cpu, progress=False)
    counter = _Tables()
    rows = []
    for how, codec, settings in POINTS:
        table0, streams0 = counter.table, counter.streams
        against = base if how == "base" else None
        results = []
        for m in members:
            task = (make_finetuner(cfg.model, m["train"], device=cpu, seed=cfg.seed)
                    if codec == "vae-rd" else None)
            results.append(compress(m["state"], codec,
                                    ctx=CodecContext(progress=False, seed=cfg.seed),
                                    finetune=task, base=against, **settings))
        files = sum(len(r.data) for r in results)
        table = counter.table - table0
        k = len(members)
        fam = share([r.data for r in results])  # the prior, learned and counted once
        for r, member in zip(results, fam.members, strict=True):  # rebuilt exactly as before
            out = decompress(member, {"prior": fam.prior} if fam.prior else {}, base=against)
            if any(not torch.equal(out[n], r.rebuilt[n]) for n in out):
                raise RuntimeError("a member decodes otherwise under the shared prior")
        rows.append({"how": how, "codec": codec, "settings": settings, "members": k,
                     "file_bytes": files, "stream_bytes": counter.streams - streams0,
                     "table_bytes": table, "table_share": table / files,
                     "shared_prior_saves_at_most": (k - 1) / k * table / files,
                     "shared": {"prior_bytes": len(fam.prior),
                                "member_bytes": [len(x) for x in fam.members],
                                "total_bytes": fam.total_bytes, "saving": fam.saving}})
        print(f"{how} {codec} {settings}: tables {table:,} of {files:,} B "
              f"({100 * table / files:.1f}%); shared prior {len(fam.prior):,} B, family "
              f"{fam.total_bytes:,} B ({100 * fam.saving:+.1f}%)", file=sys.stderr)
    write_json(args.out, {**finish_run(run), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
