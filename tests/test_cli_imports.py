"""The command line starts without torch where it needs none (issue 13): its help and the zoo
listing import no heavy package. How long a start takes is measured by benchmarks/cli_start.py,
never here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the CLI in a fresh interpreter and writes the names of every imported module to argv[1].
PROBE = """\
import json, sys
from vaecompress.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    main(argv)
except SystemExit:
    pass
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
"""
HEAVY = ("torch", "numpy", "safetensors", "zstandard", "constriction", "matplotlib", "tqdm")


@pytest.mark.parametrize("argv", [["--help"], ["compress", "--help"], ["decompress", "--help"],
                                  ["zoo"], ["zoo", "--json"]])
def test_light_commands_import_no_heavy_package(argv: list[str], tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    assert out.is_file(), proc.stderr
    top = {name.split(".")[0] for name in json.loads(out.read_text())}
    assert "vaecompress" in top
    assert [h for h in HEAVY if h in top] == []


def test_inspect_reads_the_header_without_torch(tmp_path: Path) -> None:
    import torch

    import vaecompress

    path = tmp_path / "m.vaec"
    path.write_bytes(vaecompress.compress({"w": torch.ones(4, 4)}, "zstd").data)
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), "inspect", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert out.is_file(), proc.stderr
    assert "ratio_honest" in proc.stdout
    top = {name.split(".")[0] for name in json.loads(out.read_text())}
    assert [h for h in HEAVY if h in top and h != "numpy"] == []
