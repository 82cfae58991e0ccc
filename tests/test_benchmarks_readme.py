"""benchmarks/README.md's numbers are those of the committed results files (benchmarks/render.py),
and every result committed there was measured on a committed, clean tree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _render() -> ModuleType:
    return load_script("benchmarks/render.py", "bench_render")


def test_generated_blocks_match_the_results() -> None:
    render = _render()
    text = render.README.read_text()
    for name in render.BLOCKS:
        block = re.search(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", text,
                          re.S)
        assert block is not None and block.group(1).strip(), f"block {name} missing or empty"
    assert render.render(text) == text, "run: python benchmarks/render.py"


def test_results_come_from_a_clean_tree() -> None:
    render = _render()
    for file, _ in render.BLOCKS.values():
        rev = json.loads((render.RESULTS / file).read_text())["git_revision"]
        assert re.fullmatch(r"[0-9a-f]{40}", rev or ""), f"{file}: revision {rev!r}"
