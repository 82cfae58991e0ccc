"""How much of a family member's file a prior shared by the family could save, and saves
(issue 20): the bytes of the entropy coder's frequency tables, the only part of a
`vae-rd`/`vae-rd-free` file a prior learned once over the family replaces, and what the family
costs with the prior of `family.shared` (learned over the members, stored once, each member
re-coded under it where that is smaller; every member checked to decode as its own file did).

    python benchmarks/family_tables.py   # -> benchmarks/results/family_tables.json

The fine-tune family of `experiments.families` (the FNN fine-tuned on three shifted MNIST tasks),
each member coded against the base and alone, and its checkpoint family (six checkpoints of one
training run) as a series (each member coded against the previous rebuilt one), as in that
bench. A series' members are re-coded under the prior as files of their own (each decoded, given
the prior, against the previous member as rebuilt): what a series file holding the prior would
save, less its framing. Every symbol stream the codec
writes is parsed back as it is written: its table (the distinct symbols and their quantized
counts, varints) against the whole stream. A prior shared by K members stores one table instead
of K, so it saves at most (K - 1) / K of the tables' bytes, and that only if the members' tables
were the same.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from benchlib import finish_run, start_run, write_json

POINTS = [  # (family, how, codec, settings): the smallest passing codings of the families bench
    ("fine-tunes", "base", "vae-rd-free", {"snr": 22.0}),
    ("fine-tunes", "alone", "vae-rd-free", {"snr": 6.0}),
    ("fine-tunes", "base", "vae-rd", {"lam": 2.0, "epochs": 1.0}),
    ("fine-tunes", "alone", "vae-rd", {"lam": 5.5, "epochs": 1.0}),
    ("checkpoints", "series", "vae-rd-free", {"snr": 9.0}),
    ("checkpoints", "series", "vae-rd", {"lam": 2.0, "epochs": 1.0}),
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
    from vaecompress.family.series import compress_series
    from vaecompress.family.shared import share
    from vaecompress.tasks.mnist import make_finetuner
    from vaecompress.zoo.train import preset_config

    torch.set_num_threads(1)
    cfg = fam.FamiliesConfig()
    cpu = torch.device("cpu")
    train, test = load_mnist(None)
    base = trained_model(cfg.model, preset_config(cfg.preset, cfg.model, cfg.seed), train, test,
                         device=cpu, progress=False).state
    families = {"fine-tunes": fam.fine_tunes(cfg, base, train, test, cpu, progress=False),
                "checkpoints": fam.checkpoints(cfg, train, test, cpu, progress=False)}
    counter = _Tables()
    rows = []
    for family, how, codec, settings in POINTS:
        members = families[family]
        table0, streams0 = counter.table, counter.streams
        ctx = CodecContext(progress=False, seed=cfg.seed)
        if how == "series":  # one run: the task of its first member, as the families bench
            if codec == "vae-rd":
                ctx = replace(ctx, finetune=make_finetuner(cfg.model, members[0]["train"],
                                                           device=cpu, seed=cfg.seed))
            res = compress_series([m["state"] for m in members], codec, ctx=ctx, **settings)
            files = [m.data for m in res.members]
            rebuilt = [m.rebuilt for m in res.members]
            bases = [None, *rebuilt[:-1]]
            framing = len(res.data) - sum(len(f) for f in files)
        else:
            against = base if how == "base" else None
            results = []
            for m in members:
                task = (make_finetuner(cfg.model, m["train"], device=cpu, seed=cfg.seed)
                        if codec == "vae-rd" else None)
                results.append(compress(m["state"], codec, ctx=ctx, finetune=task,
                                        base=against, **settings))
            files = [r.data for r in results]
            rebuilt = [r.rebuilt for r in results]
            bases = [against] * len(members)
            framing = 0
        total = sum(len(f) for f in files)
        table = counter.table - table0
        k = len(members)
        fam_ = share(files)  # the prior, learned and counted once
        for r, member, b in zip(rebuilt, fam_.members, bases, strict=True):  # rebuilt exactly
            out = decompress(member, {"prior": fam_.prior} if fam_.prior else {}, base=b)
            if any(not torch.equal(out[n], r[n]) for n in out):
                raise RuntimeError("a member decodes otherwise under the shared prior")
        rows.append({"family": family, "how": how, "codec": codec, "settings": settings,
                     "members": k, "file_bytes": total, "series_framing_bytes": framing,
                     "stream_bytes": counter.streams - streams0,
                     "table_bytes": table, "table_share": table / total,
                     "shared_prior_saves_at_most": (k - 1) / k * table / total,
                     "shared": {"prior_bytes": len(fam_.prior),
                                "member_bytes": [len(x) for x in fam_.members],
                                "total_bytes": fam_.total_bytes, "saving": fam_.saving}})
        print(f"{family} {how} {codec} {settings}: tables {table:,} of {total:,} B "
              f"({100 * table / total:.1f}%); shared prior {len(fam_.prior):,} B, family "
              f"{fam_.total_bytes:,} B ({100 * fam_.saving:+.1f}%)", file=sys.stderr)
    write_json(args.out, {**finish_run(run), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
