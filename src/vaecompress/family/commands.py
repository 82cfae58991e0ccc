"""The command line of checkpoint series: `vaecompress compress A B C -o run.vaec` (or a folder)
and `vaecompress decompress run.vaec --member K -o ck.safetensors`. `cli` dispatches here; the
flags are the ones `compress` and `decompress` declare."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from vaecompress.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _natural(path: Path) -> list[Any]:
    """epoch-10 after epoch-9."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


def series_inputs(inputs: list[str]) -> list[Path] | None:
    """The checkpoint files of a series (a list of two or more files, or a folder of weights
    files in natural name order), or None for one model."""
    if len(inputs) == 1:
        folder = Path(inputs[0])
        if not folder.is_dir():
            return None
        files = sorted((p for p in folder.iterdir()
                        if p.is_file() and p.suffix in WEIGHT_SUFFIXES), key=_natural)
        if not files:
            raise UserError(f"{folder} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
        return files
    return [Path(p) for p in inputs]


def _rel_error(original: dict[str, torch.Tensor], rebuilt: dict[str, torch.Tensor]) -> float:
    num = den = 0.0
    for k, v in original.items():
        if v.is_floating_point():
            num += float((rebuilt[k].double() - v.double()).pow(2).sum())
            den += float(v.double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


def compress_series_command(args: argparse.Namespace, files: list[Path],
                            base: dict[str, torch.Tensor] | None, codec: str,
                            settings: dict[str, Any]) -> int:
    from vaecompress.codecs import CodecContext, make_codec
    from vaecompress.family.series import compress_series
    from vaecompress.fidelity import CHANGE_WARN_DB
    from vaecompress.files import atomic_write_bytes, check_outputs
    from vaecompress.io import load_weights_file
    from vaecompress.runinfo import resolve_device

    for flag in ("finetune", "distill", "sentences", "external_out", "decoder_out"):
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} does not apply to a checkpoint series")
    make_codec(codec, **settings)  # bad settings fail here, before any work
    check_outputs([args.output], inputs=[*files, *([args.base] if args.base else [])])
    states = [load_weights_file(f, key=args.key)[0] for f in files]
    ctx = CodecContext(device=resolve_device(args.device), seed=args.seed,
                       progress=not args.quiet, label=Path(args.output).stem)
    res = compress_series(states, codec, labels=[f.stem for f in files], base=base,
                          keyframe_every=args.keyframe_every, ctx=ctx, **settings)
    atomic_write_bytes(args.output, res.data)
    errors = [_rel_error(s, m.rebuilt or {}) for s, m in zip(states, res.members, strict=True)]
    if args.json:
        import json

        print(json.dumps({"codec": codec, "file_bytes": len(res.data),
                          "orig_bytes": res.orig_bytes, "ratio": res.ratio,
                          "members": [{"label": lab, "bytes": len(m.data), "rel_error": e}
                                      for lab, m, e in zip(res.labels, res.members, errors,
                                                           strict=True)]}))
        return 0
    print(f"{args.output}: {len(files)} checkpoints, {res.orig_bytes:,} B -> {len(res.data):,} B"
          f" (ratio {res.ratio:.1f}x, {codec}, each against the previous rebuilt one)"
          f"   [{res.compress_s:.1f} s]")
    lost = []
    for lab, m, e in zip(res.labels, res.members, errors, strict=True):
        change = m.fidelity.get("change_snr_db")
        kept = "" if change is None else f", the change from its base kept at SNR {change:.1f} dB"
        print(f"  {lab}: {len(m.data):,} B, relative RMS error {e:.2e}{kept}")
        if change is not None and change < CHANGE_WARN_DB:
            lost.append(lab)
    if lost:
        print(f"warning: most of the change from the checkpoint before is lost in {len(lost)} "
              f"of {len(files)} checkpoints ({', '.join(lost[:5])}"
              f"{', ...' if len(lost) > 5 else ''}): they are rebuilt close to the checkpoint "
              "before them, not to themselves; a fidelity of the change's own keeps it "
              "(--set change_snr=DB, with the default codec)")
    return 0


def decompress_member_command(args: argparse.Namespace,
                              base: dict[str, torch.Tensor] | None) -> int:
    import time

    from vaecompress.family.series import decompress_member, read_index
    from vaecompress.files import check_outputs
    from vaecompress.format import load_payloads
    from vaecompress.io import save_weights_file

    t0 = time.perf_counter()
    index = read_index(load_payloads(args.input, []))  # one model and --member: one line
    if args.member is None:
        raise UserError(f"{args.input} is a checkpoint series of {len(index.labels)} members: "
                        "choose one with --member K (a position or a label)")
    check_outputs([args.output], inputs=[args.input, *([args.base] if args.base else [])])
    k = index.index(args.member)
    state = decompress_member(args.input, k, base=base)
    save_weights_file(args.output, state, {}, keep_order=True)
    print(f"{args.output}: member {k} ({index.labels[k]}) of {len(index.labels)}, "
          f"{len(state)} tensors rebuilt in {time.perf_counter() - t0:.2f} s")
    return 0


PRIOR_FILE = "family.prior"


def share_command(args: argparse.Namespace) -> int:
    """`vaecompress share A.vaec B.vaec ... -o DIR`: the members (files of vae-rd or
    vae-rd-free with one manifest) re-coded under a prior learned over them, written with the
    prior (`family.prior`) into a new folder, all or nothing."""
    import json
    import os
    import secrets
    import shutil

    from vaecompress.family.shared import share
    from vaecompress.files import read_file
    from vaecompress.folders import check_folder_output

    names = [Path(p).name for p in args.input]
    if len(set(names)) != len(names) or PRIOR_FILE in names:
        raise UserError(f"the members' file names must differ from each other and from "
                        f"{PRIOR_FILE}: they are written side by side")
    target = check_folder_output(args.output)
    blobs = [read_file(p) for p in args.input]
    fam = share(blobs)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        for name, data in zip(names, fam.members, strict=True):
            (tmp / name).write_bytes(data)
        if fam.prior:
            (tmp / PRIOR_FILE).write_bytes(fam.prior)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if args.json:
        print(json.dumps({"prior_bytes": len(fam.prior), "members": dict(zip(
            names, ([a, len(m)] for a, m in zip(fam.alone, fam.members, strict=True)),
            strict=True)), "total_bytes": fam.total_bytes, "alone_bytes": sum(fam.alone),
            "saving": fam.saving}, indent=2))
        return 0
    for name, a, m, own in zip(names, fam.alone, fam.members, blobs, strict=True):
        how = "its own file" if m == own else "under the prior"
        print(f"  {name}: {a:,} B -> {len(m):,} B ({how})")
    if not fam.prior:
        print(f"{target}: no member is smaller under a shared prior; every file kept as it was")
        return 0
    print(f"{target}: prior {len(fam.prior):,} B + members {fam.total_bytes - len(fam.prior):,} "
          f"B = {fam.total_bytes:,} B, against {sum(fam.alone):,} B alone "
          f"({100 * fam.saving:+.1f}%); decode a member under the prior with --external prior="
          f"{target / PRIOR_FILE}")
    return 0
