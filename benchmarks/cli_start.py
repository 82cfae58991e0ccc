"""Start-up time of the `vaecompress` command, side by side with Python's and torch's, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/cli_start.py --out /tmp/cli_start.json

Every command runs in a fresh process: `python -c pass` (the floor), `python -c "import torch"`
(what any command that computes must pay), `vaecompress --help`, `vaecompress compress --help`,
`vaecompress zoo`, `vaecompress inspect FILE` and `vaecompress decompress FILE -o OUT` on a small
file made in the run (int8 of the FNN's initial weights). The commands run in interleaved rounds
(one warm-up round discarded) and the median wall time of each is reported, with the peak RSS of
its process. It also records which modules each command imports and the slowest of them
(`python -X importtime`): is torch among them?
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import (
    Proc,
    check_same_source,
    console_script,
    finish_run,
    interleave,
    run_process,
    start_run,
    summary,
    write_json,
)

HEAVY = ("torch", "numpy", "safetensors", "zstandard", "constriction", "matplotlib", "tqdm")


def make_file(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A small compressed file: int8 of the FNN's initial weights (seeded)."""
    import torch

    from vaecompress.api import compress, save
    from vaecompress.zoo import build_model

    torch.manual_seed(0)
    res = compress(build_model("fnn").state_dict(), "int8")
    path = folder / "fnn-int8.vaec"
    save(res, path)
    return path, {"codec": "int8", "model": "fnn (initial weights)",
                  "file_bytes": res.accounting.file_bytes, "orig_bytes": res.accounting.orig_bytes}


def commands(folder: Path, file: Path) -> dict[str, Callable[[], list[str]]]:
    """Each command's argv, made afresh per call (decompress writes a new file each time)."""
    cli = console_script()
    py = sys.executable
    outputs = itertools.count()
    return {
        "python -c pass": lambda: [py, "-c", "pass"],
        "python -c 'import torch'": lambda: [py, "-c", "import torch"],
        "vaecompress --help": lambda: [*cli, "--help"],
        "vaecompress compress --help": lambda: [*cli, "compress", "--help"],
        "vaecompress zoo": lambda: [*cli, "zoo"],
        "vaecompress inspect FILE": lambda: [*cli, "inspect", str(file)],
        "vaecompress decompress FILE": lambda: [
            *cli, "decompress", str(file), "-o", str(folder / f"out{next(outputs)}.safetensors")],
    }


def import_profile(argv: list[str], slowest: int = 8) -> dict[str, Any]:
    """What running the CLI with `argv` imports, from `python -X importtime` (every module
    imported, with its time): third-party top-level packages, whether torch is among them, and
    the top-level imports that took longest (cumulative)."""
    proc = run_process([sys.executable, "-X", "importtime", "-c",
                        "import sys; from vaecompress.cli import main; main(sys.argv[1:])",
                        *argv], check=False)
    names, rows = [], []
    for line in proc.stderr.splitlines():
        # "import time:   self |  cumulative | <2 spaces per nesting level>name"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.removeprefix("import time:").split("|")
        names.append(name.strip())
        if name.startswith(" ") and not name.startswith("  "):  # top level: one space
            rows.append({"module": name.strip(), "cumulative_ms": int(cum_us) / 1000,
                         "self_ms": int(self_us) / 1000})
    # importtime lists failed attempts too (optional imports): keep what can be imported.
    top = sorted(n for n in {n.split(".")[0] for n in names} if importlib.util.find_spec(n))
    return {
        "argv": argv,
        "importtime_entries": len(names),
        "third_party": [n for n in top if n not in sys.stdlib_module_names
                        and not n.startswith("_") and n != "vaecompress"],
        "imports_torch": "torch" in top,
        "heavy": [n for n in HEAVY if n in top],
        "vaecompress_modules": sorted(n for n in names if n.startswith("vaecompress")),
        "slowest_top_level": sorted(rows, key=lambda r: -r["cumulative_ms"])[:slowest],
    }


def _shown(argv: list[str], tmp: str) -> list[str]:
    """argv as recorded: files of the run's temporary folder by their names alone."""
    return [Path(a).name if a.startswith(tmp) else a for a in argv]


def run(args: argparse.Namespace) -> dict[str, Any]:
    res = start_run("cli_start", args.argv)
    res["source_checked"] = check_same_source()
    res["command_prefix"] = console_script()
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        folder = Path(tmp)
        file, res["file"] = make_file(folder)
        cmds = commands(folder, file)
        tasks: dict[str, Callable[[], Proc]] = {
            name: (lambda make=make: run_process(make())) for name, make in cmds.items()}
        samples = interleave(tasks, args.reps, warmup=1)
        res["reps"] = args.reps
        res["commands"] = {
            name: {"argv": _shown(cmds[name](), tmp),
                   "wall_s": summary([p.wall_s for p in ps]),
                   "maxrss_bytes": summary([p.maxrss_bytes for p in ps])}
            for name, ps in samples.items()}
        res["imports"] = {
            name: import_profile(argv) | {"argv": _shown(argv, tmp)}
            for name, argv in (("vaecompress --help", ["--help"]),
                               ("vaecompress compress --help", ["compress", "--help"]),
                               ("vaecompress zoo", ["zoo"]),
                               ("vaecompress inspect FILE", ["inspect", str(file)]))}
    floor = res["commands"]["python -c pass"]["wall_s"]["median"]
    torch_s = res["commands"]["python -c 'import torch'"]["wall_s"]["median"]
    for c in res["commands"].values():
        med = c["wall_s"]["median"]
        c["over_python_s"] = med - floor
        c["over_import_torch_s"] = med - torch_s
    return finish_run(res)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9, help="timed rounds (default 9)")
    p.add_argument("--out", help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    res = run(args)
    print(f"{res['machine']['cpu']}, load {res['load_average_start']} -> "
          f"{res['load_average_end']}; median of {args.reps} fresh processes:")
    for name, c in res["commands"].items():
        print(f"  {name:30s} {c['wall_s']['median']:7.3f} s  (+{c['over_python_s']:6.3f} s over "
              f"python)  peak RSS {c['maxrss_bytes']['median'] / 2**20:6.0f} MiB")
    for name, imp in res["imports"].items():
        print(f"  {name:30s} imports torch: {imp['imports_torch']}; third-party: "
              f"{', '.join(imp['third_party']) or 'none'}")
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
