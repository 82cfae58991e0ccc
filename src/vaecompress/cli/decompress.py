"""Reading a compressed file: `decompress` (the weights rebuilt, written as .safetensors or as
the model folder they came from) and `inspect` (the header, sizes and ratios, without torch).
"""

from __future__ import annotations

import argparse
import time

from vaecompress.cli.common import fmt_ratio, pairs, print_json, read_base
from vaecompress.errors import UserError


def _external_ins(args: argparse.Namespace) -> dict[str, str]:
    """`--external NAME=FILE` (and its alias `--decoder FILE`)."""
    ins = pairs(args.external, "--external")
    if args.decoder:
        if "decoder" in ins:
            raise UserError("give the decoder's file once: --decoder or --external decoder=FILE")
        ins["decoder"] = args.decoder
    return ins


def cmd_decompress(args: argparse.Namespace) -> int:
    from vaecompress.api import decompress_file, external_path
    from vaecompress.family.commands import decompress_member_command
    from vaecompress.family.series import is_series
    from vaecompress.files import check_outputs
    from vaecompress.folders import FOLDER_KEY, FolderLayout, check_folder_output, write_folder
    from vaecompress.format import load as load_container
    from vaecompress.format import load_payloads
    from vaecompress.io import save_weights_file
    from vaecompress.sharded.stream import decompress_folder, is_sharded

    head = load_payloads(args.input, [])  # the header alone
    if args.member is not None or is_series(head):
        return decompress_member_command(args, read_base(args))
    t0 = time.perf_counter()
    if is_sharded(head):  # a model folder coded one shard at a time: written back so
        if args.base or args.external or args.decoder:
            raise UserError("a sharded file is decoded alone: no --base, --external or "
                            "--decoder")
        check_folder_output(args.output)
        layout = decompress_folder(args.input, args.output)
        n = sum(len(s.tensors) for s in layout.shards)
        print(f"{args.output}: {n} tensors in {len(layout.shards)} shards (rebuilt one at a "
              f"time) and {len(layout.files)} files in {time.perf_counter() - t0:.2f} s")
        return 0
    ins = _external_ins(args)
    c = load_container(args.input)
    beside = [str(external_path(args.input, e.name)) for e in c.externals if e.name not in ins]
    folder = c.meta.get(FOLDER_KEY)
    if folder is not None:  # made from a model folder: written back as one, to a new path
        layout = FolderLayout.from_json(folder)
        check_folder_output(args.output)
        state = decompress_file(args.input, externals=ins, base=read_base(args))
        write_folder(args.output, state, layout)
        print(f"{args.output}: {len(state)} tensors in {len(layout.shards)} shards and "
              f"{len(layout.files)} files rebuilt in {time.perf_counter() - t0:.2f} s")
        return 0
    check_outputs([args.output], inputs=[args.input, *ins.values(), *beside,
                                         *([args.base] if args.base else [])])
    state = decompress_file(args.input, externals=ins, base=read_base(args))
    meta = {k: str(v) for k, v in c.meta.items() if k == "vaecompress.model"}
    save_weights_file(args.output, state, meta, keep_order=True)  # the input's order
    print(f"{args.output}: {len(state)} tensors rebuilt in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from vaecompress.inspection import inspect_file  # no torch: the headers, in place

    info = inspect_file(args.file)
    if args.json:
        print_json(info)
        return 0
    a = info["accounting"]
    print(
        f"codec {info['codec']['name']} v{info['codec']['version']}, {info['tensors']} tensors, "
        f"{a['params']:,} params ({a['orig_bytes']:,} B)"
    )
    for pl in info["payloads"]:
        print(f"  payload {pl['name']:12s} {pl['kind']:12s} {pl['role']:6s} {pl['bytes']:>10,d} B")
    for e in info["externals"]:
        print(
            f"  external {e['name']:11s} {e['kind']:12s} {e['role']:6s} {e['bytes']:>10,d} B "
            f"sha256 {e['sha256'][:16]}..."
        )
    ext = sum(e["bytes"] for e in info["externals"])
    total = f"{a['file_bytes']:,} B"
    if info["externals"]:
        total += f" + externals {ext:,} B = {a['file_bytes'] + ext:,} B to decode"
    print(f"file {total} (format {info['format_version']})")
    if "series" in info:
        se = info["series"]
        print(f"checkpoint series of {se['members']} members: {se['orig_bytes']:,} B -> "
              f"{a['file_bytes']:,} B, ratio {fmt_ratio(se['ratio'])} over all of them "
              "(the ratios below are of one member's size)")
    if "shards" in info:
        sh = info["shards"]
        print(f"a model folder coded one shard at a time: {sh['members']} shards, each its own "
              f"file ({', '.join(sh['codecs'])})")
    print(
        f"ratio_paper {fmt_ratio(a['ratio_paper'])}   ratio_honest {fmt_ratio(a['ratio_honest'])}"
    )
    state = _state_line(info.get("codec_state"))
    if state:
        print(f"codec state: {state}")
    target = info["meta"].get("vaecompress.target")  # target.TARGET_KEY (target imports torch)
    if isinstance(target, dict):  # informational: shown, never trusted
        t = {k: _shown(target.get(k)) for k in
             ("max_drop", "knob", "value", "drop", "unit", "validation", "tries")}
        unit = "" if t["unit"] == "score" else f" {t['unit']}"  # a score names itself
        print(f"chosen by --max-drop {t['max_drop']}: {t['knob']} {t['value']} ({t['drop']}"
              f"{unit} lost on {t['validation']}, {t['tries']} files tried)")
    return 0


STATE_SHOWN = 8  # codec-state entries `inspect` prints (all of them are in --json)


def _state_line(state: object) -> str:
    """The codec's stored state for a person: its scalar entries (numbers to 4 digits, text
    cut short), at most STATE_SHOWN of them, in the header's order; '' when there are none."""
    if not isinstance(state, dict):
        return ""
    items = [(str(k)[:40], v) for k, v in state.items()
             if isinstance(v, str | int | float | bool) or v is None]
    shown = ", ".join(f"{k} {_shown(v)}" for k, v in items[:STATE_SHOWN])
    return shown + (f", ... ({len(items) - STATE_SHOWN} more)" if len(items) > STATE_SHOWN
                    else "")


def _shown(x: object) -> str:
    """A header field for a person: a number to 4 digits, anything else cut to 80 chars."""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return f"{x:.4g}"
    return str(x)[:80]
