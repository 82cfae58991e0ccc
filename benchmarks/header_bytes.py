"""What format version 4's header dictionary saves: every codec's file, its stored header as
version 3 writes it and as version 4 does, on the same container.

    PYTHONPATH=src .venv/bin/python benchmarks/header_bytes.py --out results/header-bytes

A file's header (codec settings, manifest, payload entries, the checksums) is a fixed cost that
matters where the payloads are small: a fine-tune coded against its base by `vae-rd` is a few
hundred bytes of latents, and the header was half of its file. Version 4 deflates the same
header JSON with a larger preset dictionary (`format/zdict.py`). Each file here is written once
(version 4, the default) and its container written again as version 3 (`dumps(c, version=3)`:
the same header but for its version field, the same payloads), so the two sizes differ by the
dictionary alone.

Models: the zoo's FNN and CNN (quick preset, as the families bench's base), the FNN's fine-tune
on the digits 0-4 coded against the FNN (`families.fine_tunes`), and, with the `minilm` extra,
all-MiniLM-L6-v2 (104 tensors; the fast codecs only). Every codec at its defaults except where
`SETTINGS` says (vae-rd trains one epoch on the model's task; vae-paper at a small budget: its
header does not depend on it). Writes `OUT/header_bytes.json` and `OUT/header_bytes.md`.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaecompress.api import compress
from vaecompress.codecs import REGISTRY, CodecContext, get_codec_class
from vaecompress.data import load_mnist
from vaecompress.experiments.common import trained_model
from vaecompress.experiments.families import FamiliesConfig, fine_tunes
from vaecompress.files import atomic_write_json, atomic_write_text
from vaecompress.format.container import FORMAT_VERSION, PREAMBLE_SIZE, dumps, loads
from vaecompress.runinfo import environment, seed_everything
from vaecompress.tasks.mnist import make_finetuner
from vaecompress.zoo.train import preset_config

SETTINGS: dict[str, dict[str, Any]] = {
    "vae-rd": {"epochs": 1.0},
    "vae-paper": {"epochs": 5, "n_variants": 10},
}
MINILM_CODECS = ("zstd", "int8", "int4", "vae-rd-free", "bitdelta")


def stored_header(data: bytes) -> int:
    """The bytes of a file's preamble and stored header."""
    return PREAMBLE_SIZE + struct.unpack_from("<I", data, 12)[0]


def measure(model: str, codec: str, state: dict[str, torch.Tensor], *,
            base: dict[str, torch.Tensor] | None = None, task: Any = None,
            seed: int = 0) -> dict[str, Any]:
    settings = SETTINGS.get(codec, {})
    ctx = CodecContext(progress=False, seed=seed)
    r = compress(state, codec, ctx=ctx, base=base, finetune=task, **settings)
    data = r.data
    assert data[8:10] == FORMAT_VERSION.to_bytes(2, "little")
    old = dumps(loads(data), version=3)
    h4, h3 = stored_header(data), stored_header(old)
    assert data[h4:] == old[h3:]  # the same payloads
    return {"model": model, "codec": codec, "settings": settings, "file_v4": len(data),
            "file_v3": len(old), "header_v4": h4, "header_v3": h3}


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Header bytes: format version 3 against version 4",
        "",
        f"git {env['git_revision']}, torch {env['torch']}, {env['time_utc']}. Made by "
        "`benchmarks/header_bytes.py`. The same container written as version 3 and as version "
        "4 (the default since 4 exists): the preamble and stored header of each, and the file. "
        "Codecs at their defaults except: "
        + "; ".join(f"{c} {', '.join(f'{k}={v}' for k, v in s.items())}"
                    for c, s in SETTINGS.items()) + ".",
        "",
        "| model | codec | header v3 | header v4 | saved | file v3 | file v4 | file saved |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        saved = r["header_v3"] - r["header_v4"]
        lines.append(f"| {r['model']} | {r['codec']} | {r['header_v3']:,} | {r['header_v4']:,} | "
                     f"{saved:,} | {r['file_v3']:,} | {r['file_v4']:,} | "
                     f"{100 * saved / r['file_v3']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/header-bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-minilm", action="store_true", help="skip MiniLM")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    t0 = time.perf_counter()
    device = torch.device("cpu")
    train, test = load_mnist()
    codecs = [n for n, cls in REGISTRY.items() if cls.available() is None]
    rows: list[dict[str, Any]] = []
    models = {name: trained_model(name, preset_config("quick", name, args.seed), train, test,
                                  device=device, progress=False).state
              for name in ("fnn", "cnn")}
    member = fine_tunes(FamiliesConfig(tasks=("digits-0-4",), seed=args.seed), models["fnn"],
                        train, test, device, False)[0]
    subjects = [("fnn", models["fnn"], None, train), ("cnn", models["cnn"], None, train),
                ("fnn fine-tune, against fnn", member["state"], models["fnn"], member["train"])]
    for label, state, base, data in subjects:
        arch = "cnn" if label == "cnn" else "fnn"
        for codec in codecs:
            trains = get_codec_class(codec).method(SETTINGS.get(codec, {}))[1]
            task = make_finetuner(arch, data, device=device, seed=args.seed) if trains else None
            rows.append(measure(label, codec, state, base=base, task=task, seed=args.seed))
            print(rows[-1], flush=True)
    if not args.no_minilm:
        from vaecompress.zoo import minilm

        if minilm.missing() is None:
            state = minilm.load_state()
            for codec in MINILM_CODECS:
                rows.append(measure("all-MiniLM-L6-v2", codec, state, seed=args.seed))
                print(rows[-1], flush=True)
    results = {"environment": environment(device, args.seed), "rows": rows,
               "run_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "header_bytes.json", results)
    atomic_write_text(out / "header_bytes.md", render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
