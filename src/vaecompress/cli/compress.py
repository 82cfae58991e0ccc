"""`compress`: a weights file (or a model folder, or a run's checkpoints) into a compressed file,
in steps: the codec and its outputs checked before any work (`_plan`), the model's task
(`cli.tasks`), the library's `compress`, then the file written and the result printed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vaecompress.cli.common import fmt_ratio, pairs, print_json, read_base
from vaecompress.cli.tasks import Task, compress_task, sentences_of
from vaecompress.errors import UserError


def codec_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `--set KEY=VALUE` overrides (values parsed as JSON when they are JSON); `--latent N`
    is `--set latent=N`. The codec itself rejects a setting it does not have."""
    out: dict[str, Any] = {}
    for key, value in pairs(args.set, "--set").items():
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    if args.latent is not None:
        out["latent"] = args.latent
    if getattr(args, "snr", None) is not None:
        out["snr"] = args.snr
    if getattr(args, "size", None) is not None:
        out["size"] = parse_size(args.size)
    return out


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes from '200KB', '1.5MiB', '50000' (KB = 1000 B, KiB = 1024 B)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise UserError(f"--size expects a number of bytes such as 200KB, 1.5MiB or 50000, "
                        f"got '{text}'")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"--size must be more than 0 bytes, got '{text}'")
    return value


def _external_outs(args: argparse.Namespace, codec: str,
                   settings: dict[str, Any]) -> dict[str, str]:
    """`--external-out NAME=FILE` (and its alias `--decoder-out FILE`), checked against the
    externals the codec declares. A codec that keeps an external in the file unless told
    otherwise has a boolean setting `external_<NAME>`: asking for the file turns it on."""
    from vaecompress.codecs import get_codec_class

    outs = pairs(args.external_out, "--external-out")
    if args.decoder_out:
        if "decoder" in outs:
            raise UserError("give the decoder's file once: --decoder-out or --external-out")
        outs["decoder"] = args.decoder_out
    cls = get_codec_class(codec)
    for name in outs:
        if name not in cls.externals:
            declared = ", ".join(cls.externals) or "none"
            raise UserError(f"codec '{codec}' writes no external '{name}' "
                            f"(its externals: {declared})")
        flag = f"external_{name}"
        if flag in {f.name for f in fields(cls.Settings)}:
            settings.setdefault(flag, True)
    return outs


def _read_input(args: argparse.Namespace) -> tuple[Any, dict[str, str], dict | None]:
    """(state_dict, metadata, folder layout as JSON or None): a weights file, or a Hugging Face
    model folder (docs/own-model.md)."""
    from vaecompress.folders import is_model_folder, read_folder
    from vaecompress.io import load_weights_file

    if is_model_folder(args.input):
        if args.key is not None:
            raise UserError("--key selects inside a weights file; give the folder without it")
        state, layout = read_folder(args.input)
        return state, {}, layout.to_json()
    state, meta = load_weights_file(args.input, key=args.key)
    return state, meta, None


@dataclass(frozen=True)
class _Plan:
    """The codec a compress runs and where its outputs go, checked before any work."""

    codec: Any  # the codec, made once from its settings (`codecs.make_codec`)
    auto: bool  # no --codec: the library's default, with its lossless fallback
    outs: dict[str, str]  # external name -> the file --external-out names


def cmd_compress(args: argparse.Namespace) -> int:
    from vaecompress.codecs import DEFAULT_CODEC
    from vaecompress.family.commands import compress_series_command, series_inputs
    from vaecompress.folders import is_model_folder

    one_model = len(args.input) == 1 and is_model_folder(args.input[0])  # a Hugging Face folder
    files = None if one_model else series_inputs(args.input)
    if files is not None and args.max_drop is not None:
        raise UserError("--max-drop searches the file of one model; a checkpoint series "
                        "takes --snr or --set")
    if files is not None and args.score is not None:
        raise UserError("--score measures one model; compress a checkpoint of the series "
                        "alone to score it")
    if files is not None:  # a run's checkpoints: one series file
        return compress_series_command(args, files, read_base(args), args.codec or DEFAULT_CODEC,
                                       codec_settings(args))
    args.input = args.input[0]
    return _compress_one(args)


def _compress_one(args: argparse.Namespace) -> int:
    from vaecompress.api import compress, save
    from vaecompress.runinfo import resolve_device
    from vaecompress.training.distributed import is_main

    plan = _plan(args)
    distill = args.distill or args.sentences is not None
    sentences = sentences_of(args)  # checked before any work
    if _streams(args, plan, distill):
        return _compress_sharded(args, plan)
    # whether these settings retrain on the task (kmeans and bitdelta only with finetune_epochs)
    trains = type(plan.codec).method(plan.codec.settings_json())[1]
    if trains and not (args.finetune or distill) and not args.quiet:
        print(
            f"vaecompress: warning: {plan.codec.name} retrains on the task to keep accuracy; "
            "without --finetune (or --distill) it runs without retraining and the rebuilt model "
            "can lose many points",
            file=sys.stderr,
        )
    state, meta, folder = _read_input(args)
    base = read_base(args)
    device = resolve_device(args.device)
    task = compress_task(args, state, meta, sentences, device, distill=distill)
    if task.finetune_desc and not args.quiet:
        print(f"vaecompress: {task.finetune_desc}", file=sys.stderr)
    ctx = _context(args, device, task)
    evaluate = task.evaluate if is_main() else None  # rank 0 reports
    if args.max_drop is not None:
        from vaecompress.target import check_max_drop, compress_within

        check_max_drop(args.max_drop, task.validation.unit)
        res = compress_within(state, None if plan.auto else plan.codec.name,
                              max_drop=args.max_drop, validation=task.validation, ctx=ctx,
                              meta=_kept_meta(meta, folder), base=base, evaluate=evaluate,
                              identity=_flags(args), **codec_settings(args))
    else:
        res = compress(state, plan.codec, fallback=plan.auto, ctx=ctx,
                       meta=_kept_meta(meta, folder), base=base, evaluate=evaluate)
    if res.fallback:
        print(f"vaecompress: {res.fallback}", file=sys.stderr)
    if not is_main():  # one of several processes under torchrun: rank 0 writes and reports
        return 0
    save(res, args.output, externals=plan.outs)
    _report(args, res, task)
    return 0


def _streams(args: argparse.Namespace, plan: _Plan, distill: bool) -> bool:
    """Whether the input is a model folder of several shards to code one at a time: the
    codec can (`Codec.streams`) and nothing needs the whole model (a task, a probe, a base, the
    search of --max-drop, --score)."""
    from vaecompress.folders import is_model_folder, shard_files

    if not is_model_folder(args.input) or args.base or args.finetune or distill \
            or args.model or args.arch or args.max_drop is not None or args.score is not None \
            or not plan.codec.streams():
        return False
    return len(shard_files(Path(args.input))) > 1


def _compress_sharded(args: argparse.Namespace, plan: _Plan) -> int:
    """A model folder coded one shard at a time (`sharded.stream`): memory follows the largest
    shard, not the model."""
    from vaecompress.codecs import CodecContext
    from vaecompress.runinfo import resolve_device
    from vaecompress.sharded.stream import compress_folder
    from vaecompress.training.distributed import is_main

    if args.key is not None:
        raise UserError("--key selects inside a weights file; give the folder without it")
    if not is_main():  # nothing to share between processes without a task: rank 0 does it
        return 0
    ctx = CodecContext(device=resolve_device(args.device), seed=args.seed,
                       progress=not args.quiet, label=Path(args.input).name)
    res = compress_folder(args.input, args.output, plan.codec, fallback=plan.auto, ctx=ctx)
    if res.fallback:
        print(f"vaecompress: {res.fallback}", file=sys.stderr)
    if not args.quiet and not args.json:
        print(f"vaecompress: {len(res.members)} shards coded one at a time", file=sys.stderr)
    _report(args, res, Task())
    return 0


def _plan(args: argparse.Namespace) -> _Plan:
    """The codec, its settings and every output, checked before any work."""
    from vaecompress.api import external_path
    from vaecompress.codecs import DEFAULT_CODEC, make_codec
    from vaecompress.files import check_outputs

    auto_codec = args.codec is None
    name = DEFAULT_CODEC if auto_codec else args.codec
    settings = codec_settings(args)
    outs = _external_outs(args, name, settings)
    codec = make_codec(name, **settings)  # bad settings fail here, before any work
    if args.max_drop is not None:
        from vaecompress.target import check_max_drop, knob_of

        knob_of(name, settings, delta=args.base is not None)  # a knob, not fixed by settings
        check_max_drop(args.max_drop, "points")
    # Every output is checked before the work: never the input, never a non-file, a folder
    # that exists and is writable. Externals not named go beside the output.
    targets = [args.output, *outs.values()]
    targets += [str(external_path(args.output, n)) for n in type(codec).externals if n not in outs]
    check_outputs(targets, inputs=[args.input, *([args.base] if args.base else [])])
    return _Plan(codec, auto_codec, outs)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line was given that decides the work (the task's data, the flags of
    the task, the device), for the fingerprint of a resumable search: its plain values, not
    how it reports."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {k: v for k, v in sorted(vars(args).items())
            if k not in ("quiet", "json") and isinstance(v, plain)}


def _context(args: argparse.Namespace, device: Any, task: Task) -> Any:
    from vaecompress.checkpoint import hidden_beside
    from vaecompress.codecs import CodecContext

    return CodecContext(
        device=device,
        seed=args.seed,
        progress=not args.quiet,
        label=Path(args.input).stem,
        finetune=task.finetune,
        checkpoint=hidden_beside(args.output),  # a killed run, restarted, resumes
        probe=task.probe,
    )


def _kept_meta(meta: dict[str, str], folder: dict | None) -> dict[str, Any]:
    """What of the input's metadata the compressed file keeps."""
    from vaecompress.folders import FOLDER_KEY

    keep: dict[str, Any] = {k: v for k, v in meta.items()
                            if k in ("vaecompress.model", "test_accuracy")}
    if folder is not None:
        keep[FOLDER_KEY] = folder  # decompress -o FOLDER writes the same layout back
    return keep


def _report(args: argparse.Namespace, res: Any, task: Task) -> None:
    """The sizes, both ratios, the weights' fidelity and the rebuilt model's, as lines or
    JSON."""
    from vaecompress.fidelity import describe

    evals: dict[str, Any] = res.evaluation or {}
    line = task.describe(evals) if evals and task.describe is not None else ""
    a = res.accounting
    if args.json:
        extra = {"finetune": task.finetune_desc} if task.finetune_desc else {}
        target = {"target": res.report["target"]} if res.report.get("target") else {}
        made = ({"synthetic": {k: res.report[k] for k in ("synthetic_batches", "synthesize_s")}}
                if "synthesize_s" in res.report else {})
        print_json(a.to_json() | {"compress_s": res.compress_s, "codec": res.codec}
                   | _fidelity_json(res) | evals | extra | target | made)
        return
    print(
        f"{args.output}: {a.params:,} params, {a.orig_bytes:,} B -> file {a.file_bytes:,} B"
        f" + external {a.external_bytes:,} B (code {a.payload_bytes:,} B)"
    )
    print(
        f"ratio_paper {fmt_ratio(a.ratio_paper)} (code only)   "
        f"ratio_honest {fmt_ratio(a.ratio_honest)} (all bytes needed to decode)"
        f"   [{res.compress_s:.1f} s]"
    )
    target = res.report.get("target")
    # Under --max-drop the change's fidelity was the searched knob: --set change_snr would
    # replace the search's knob, not help it (`Codec.fidelity_knob`).
    if target:
        fidelity = describe(res.fidelity, remedy="the task lost at most --max-drop on the "
                            "validation data; a smaller --max-drop keeps more of the change",
                            measured=True)
    else:
        fidelity = describe(res.fidelity)
    print(f"{res.codec}{_chosen(res)}: {fidelity}")
    if "synthesize_s" in res.report:
        print(f"{res.codec}: distilled without data, on {res.report['synthetic_batches']} "
              f"batches of inputs made from the model by inversion "
              f"({res.report['synthesize_s']:.1f} s to make them)")
    if target:
        print(_searched(target))
    if line:
        print(line)


def _searched(t: dict[str, Any]) -> str:
    """What the search of --max-drop chose, and on what."""
    lost = {"points": f"{t['drop']:.2f} points of accuracy",
            "cosine": f"{t['drop']:.5f} of mean cosine"}.get(t["unit"], f"{t['drop']:.4g}")
    return (f"--max-drop {t['max_drop']:g}: chose {t['knob']} {t['value']:g}, the smallest of "
            f"{t['tries']} files tried that keeps it ({lost} lost on {t['validation']})")


def _chosen(res: Any) -> str:
    """What a codec that searched for its operating point chose, e.g. ' at snr 40.0 dB'."""
    state = res.report
    if "snr_db" not in state:
        return ""
    # infinite: no tensor had anything to step (a zero change, zeros, only subnormal values)
    reached = (f"reached {state['snr_db']:.1f} dB" if math.isfinite(state["snr_db"])
               else "nothing to quantize")
    return f" (weighting {state['weighting']}, {reached})"


def _fidelity_json(res: Any) -> dict[str, Any]:
    """The weights' fidelity for --json (an exact tensor's infinite SNR is null)."""
    f = res.fidelity

    def finite(x: Any) -> Any:
        return None if isinstance(x, float) and math.isinf(x) else x

    change = {"change_snr_db": finite(f["change_snr_db"])} if "change_snr_db" in f else {}
    return {"weights_snr_db": finite(f.get("snr_db")), "worst_tensor": f.get("worst_tensor"),
            "worst_snr_db": finite(f.get("worst_snr_db")), "exact": f.get("exact"), **change,
            "lost_tensors": f.get("lost_tensors"), "lost_energy": f.get("lost_energy"),
            "others_snr_db": finite(f.get("others_snr_db")),
            "fallback": res.fallback}
