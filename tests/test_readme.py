"""The README's promises: its two commands, its usage lines, and its results block."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import load_script
from vaecompress.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text()


readme = load_script("scripts/readme.py")


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", TEXT, re.S)


def _commands() -> tuple[str, str]:
    """The two set-up commands: the first lines of the first two bash blocks."""
    blocks = _bash_blocks()
    lines = [next(ln for ln in b.splitlines() if ln and not ln.startswith("#")) for b in blocks[:2]]
    return lines[0], lines[1]


def test_ci_runs_the_readme_test_command() -> None:
    main_cmd, test_cmd = _commands()
    assert "reproduce --preset quick" in main_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci


def test_usage_lines_parse() -> None:
    usage = next(b for b in _bash_blocks() if "vaecompress data" in b)
    parser = build_parser()
    checked = 0
    for line in usage.splitlines():
        cmd = line.split("#")[0].strip()
        if not cmd.startswith("vaecompress ") or "|" in cmd:
            continue
        parser.parse_args(shlex.split(cmd)[1:])
        checked += 1
    assert checked >= 8


def test_results_block_matches_the_committed_results() -> None:
    assert readme.updated(TEXT, readme.render(ROOT)) == TEXT, (
        "README results are stale: run python scripts/readme.py")


@pytest.mark.slow
def test_main_command_in_a_fresh_clone(tmp_path: Path) -> None:
    """The README's main command, verbatim, in a fresh clone with an empty cache (~10 min)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = os.environ | {"VAECOMPRESS_CACHE": str(tmp_path / "cache")}
    main_cmd, _ = _commands()
    subprocess.run(["bash", "-c", main_cmd], cwd=clone, env=env, check=True)
    assert (clone / "runs" / "quick" / "report.md").is_file()
