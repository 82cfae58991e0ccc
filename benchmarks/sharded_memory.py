"""A model folder too large to hold three times, coded one shard at a time (issue 21): the peak
memory of `vaecompress compress FOLDER` and `decompress -o FOLDER` on a synthetic sharded model
of over a billion parameters, against the largest shard.

    python benchmarks/sharded_memory.py          # -> benchmarks/results/sharded_memory.json
    python benchmarks/sharded_memory.py --layers 2 4 --out runs/sharded.json   # a quick look

The model is a transformer's shapes (hidden 2048, MLP 8192, a 32,000-token embedding; the
weights N(0, 0.02), norms near 1), made by a seeded generator and written shard by shard as
`save_pretrained` writes a folder (shards of at most `--shard-mib`, the index, a config): it
never exists whole in memory. Each command runs in a fresh process (`benchlib.run_process`:
peak resident memory from the kernel, `os.wait4`), and so does the base, a process that imports
torch and the package and does nothing; memory is reported above that base, in bytes and in
largest shards. Every codec is measured at each size (`--layers`) through the streaming path;
the whole-model path (every tensor read, then `api.compress`, as the package did before) is
measured at the smallest size for contrast. Each decoded folder is checked here: zstd's byte
for byte against the input, a lossy codec's weights SNR recomputed shard by shard and compared
with what `compress` reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from benchlib import console_script, finish_run, run_process, start_run, write_json
from safetensors.torch import load_file, save_file

HIDDEN, MLP, VOCAB = 2048, 8192, 32000
BASE_CODE = ("import torch, safetensors.torch, vaecompress.api, vaecompress.cli.compress, "
             "vaecompress.sharded.stream, vaecompress.runinfo; "
             "vaecompress.runinfo.release_large_frees("
             "vaecompress.runinfo.COMPRESS_MMAP_THRESHOLD)")
WHOLE_CODE = """\
import json, sys
from vaecompress import api
from vaecompress.folders import FOLDER_KEY, read_folder
from vaecompress.runinfo import COMPRESS_MMAP_THRESHOLD, release_large_frees
release_large_frees(COMPRESS_MMAP_THRESHOLD)  # as the command line's compress does
state, layout = read_folder(sys.argv[1])
res = api.compress(state, sys.argv[3], ctx=api.CodecContext(progress=False),
                   meta={FOLDER_KEY: layout.to_json()}, **json.loads(sys.argv[4]))
api.save(res, sys.argv[2])
"""


def _tensors(layers: int) -> list[tuple[str, list[int], str]]:
    """(name, shape, kind) in the order a checkpoint stores them."""
    out: list[tuple[str, list[int], str]] = [("embed.weight", [VOCAB, HIDDEN], "w")]
    for i in range(layers):
        p = f"layers.{i}."
        for m in ("q", "k", "v", "o"):
            out += [(p + f"attn.{m}.weight", [HIDDEN, HIDDEN], "w"),
                    (p + f"attn.{m}.bias", [HIDDEN], "b")]
        out += [(p + "mlp.up.weight", [MLP, HIDDEN], "w"), (p + "mlp.up.bias", [MLP], "b"),
                (p + "mlp.down.weight", [HIDDEN, MLP], "w"), (p + "mlp.down.bias", [HIDDEN], "b")]
        for n in ("ln1", "ln2"):
            out += [(p + f"{n}.weight", [HIDDEN], "g"), (p + f"{n}.bias", [HIDDEN], "b")]
    return [*out, ("norm.weight", [HIDDEN], "g"), ("norm.bias", [HIDDEN], "b")]


def _plan(layers: int, shard_bytes: int) -> list[list[tuple[str, list[int], str]]]:
    """The tensors of each shard: in order, a new shard when the next would overflow it."""
    shards: list[list[tuple[str, list[int], str]]] = [[]]
    size = 0
    for spec in _tensors(layers):
        n = 4 * math.prod(spec[1])
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    return shards


def make_model(root: Path, layers: int, shard_bytes: int, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic model folder one shard at a time (the whole model never exists in
    memory); returns its size and its largest shard's."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True)
    plan = _plan(layers, shard_bytes)
    weight_map: dict[str, str] = {}
    params = 0
    for k, specs in enumerate(plan):
        file = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        part = {}
        for name, shape, kind in specs:
            t = torch.randn(shape, generator=g)
            part[name] = {"w": 0.02 * t, "b": 0.002 * t, "g": 1 + 0.05 * t}[kind]
        save_file(part, root / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
        params += sum(t.numel() for t in part.values())
        del part
    index = {"metadata": {"total_size": 4 * params}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (root / "config.json").write_text(json.dumps({"model_type": "synthetic", "layers": layers,
                                                  "hidden_size": HIDDEN}) + "\n")
    files = sorted(root.glob("*.safetensors"))
    return {"layers": layers, "params": params, "shards": len(files),
            "model_bytes": sum(f.stat().st_size for f in files),
            "largest_shard_bytes": max(f.stat().st_size for f in files)}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**24):
            h.update(chunk)
    return h.hexdigest()


def check_folder(src: Path, out: Path, lossless: bool) -> dict[str, Any]:
    """zstd: every file byte for byte; lossy: the weights SNR (relative errors summed over
    tensors) recomputed one shard at a time."""
    names = sorted(p.name for p in src.iterdir())
    if names != sorted(p.name for p in out.iterdir()):
        raise RuntimeError(f"{out} holds other files than {src}")
    if lossless:
        same = all(_digest(src / n) == _digest(out / n) for n in names)
        return {"byte_for_byte": same}
    rel = 0.0
    for n in names:
        if not n.endswith(".safetensors"):
            if (src / n).read_bytes() != (out / n).read_bytes():
                raise RuntimeError(f"{n} was not copied through")
            continue
        a, b = load_file(src / n), load_file(out / n)
        for k, t in a.items():
            e = float((b[k].double() - t.double()).square().sum())
            rel += e / float(t.double().square().sum())
    return {"byte_for_byte": False, "weights_snr_db": -10 * math.log10(rel) if rel else None}


def _mem(proc: Any, base: int, shard: int) -> dict[str, Any]:
    return {"wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "peak_rss_bytes": proc.maxrss_bytes,
            "above_base_bytes": proc.maxrss_bytes - base,
            "above_base_shards": (proc.maxrss_bytes - base) / shard}


def measure(model: dict[str, Any], src: Path, work: Path, codec: str,
            settings: dict[str, Any], base: int, whole: bool) -> dict[str, Any]:
    """One compress and one decompress of `src` with `codec`, each in a fresh process."""
    cli = console_script()
    packed, out = work / f"{codec}.vrd", work / f"{codec}-out"
    if whole:
        comp = run_process([sys.executable, "-c", WHOLE_CODE, str(src), str(packed), codec,
                            json.dumps(settings)], timeout_s=7200)
        report: dict[str, Any] = {}
    else:
        sets = [x for k, v in settings.items() for x in ("--set", f"{k}={json.dumps(v)}")]
        comp = run_process([*cli, "compress", str(src), "-o", str(packed), "--codec", codec,
                            *sets, "--quiet", "--json"], timeout_s=7200)
        report = json.loads(comp.stdout)
    dec = run_process([*cli, "decompress", str(packed), "-o", str(out)], timeout_s=7200)
    file_bytes = packed.stat().st_size
    lossless = codec == "zstd"
    check = check_folder(src, out, lossless)
    if not lossless and not whole:
        got, said = check["weights_snr_db"], report["weights_snr_db"]
        if abs(got - said) > 1e-3:
            raise RuntimeError(f"{codec}: compress said {said} dB, the folder holds {got} dB")
    packed.unlink()
    shutil.rmtree(out)
    shard = model["largest_shard_bytes"]
    ratio = model["model_bytes"] / file_bytes
    print(f"{codec} ({'whole' if whole else 'shards'}, {model['params'] / 1e9:.2f}B): compress "
          f"peak {(comp.maxrss_bytes - base) / shard:.2f} shards above base, decompress "
          f"{(dec.maxrss_bytes - base) / shard:.2f}; ratio {ratio:.2f}x", file=sys.stderr)
    return {"codec": codec, "settings": settings, "path": "whole" if whole else "shards", **model,
            "file_bytes": file_bytes, "ratio_honest": model["model_bytes"] / file_bytes,
            "compress": _mem(comp, base, shard), "decompress": _mem(dec, base, shard),
            "check": check, "reported_snr_db": report.get("weights_snr_db")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 20],
                   help="model sizes, in transformer layers (20: 1.07 billion parameters)")
    p.add_argument("--shard-mib", type=int, default=512)
    p.add_argument("--codecs", nargs="+", default=["zstd", "int8", "vae-rd-free"])
    p.add_argument("--zstd-level", type=int, default=3,
                   help="zstd's level here (its default, 19, takes 20 minutes on 4 GB)")
    p.add_argument("--work", default="runs/sharded-model", help="scratch folder (emptied)")
    p.add_argument("--out", default="benchmarks/results/sharded_memory.json")
    args = p.parse_args(argv)
    run = start_run("sharded_memory", argv if argv is not None else sys.argv[1:])
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base = run_process([sys.executable, "-c", BASE_CODE]).maxrss_bytes
    rows = []
    for i, layers in enumerate(sorted(args.layers)):
        src = work / f"model-{layers}"
        model = make_model(src, layers, args.shard_mib * 2**20)
        for codec in args.codecs:
            settings = {"level": args.zstd_level} if codec == "zstd" else {}
            rows.append(measure(model, src, work, codec, settings, base, whole=False))
            if i == 0:  # the whole-model path, for contrast, at the smallest size
                rows.append(measure(model, src, work, codec, settings, base, whole=True))
        shutil.rmtree(src)
    write_json(args.out, {**finish_run(run), "base_rss_bytes": base, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
