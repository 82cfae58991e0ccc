"""The import contract of docs/architecture.md: each part of the package imports only the parts
of its own layer or below, and a codec module imports no other codec. Every import is read
from the source (function-level ones included), so a late import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaecompress"

# Bottom to top; the units are the package's subpackages and top-level modules.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "__version__", "progress", "runinfo", "checksum", "format", "files",
               "io", "torchfile", "params", "checkpoint", "accounting", "folders",
               "data"}),  # core
    frozenset({"coding"}),  # bytes from numbers and back
    frozenset({"training"}),  # the training loop, its hooks, torch.distributed, fine-tuning
    frozenset({"vae", "zoo", "tasks", "fidelity"}),  # methods' models, networks, tasks
    frozenset({"codecs"}),  # one registered codec per module
    frozenset({"api", "family", "inspection", "__init__"}),  # the library's surface
    frozenset({"experiments", "cli"}),  # applications
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# The core's modules import each other freely; above it, the edges inside one layer that the
# contract allows (docs/architecture.md says which are a design and which are to be cut).
SAME_LAYER_OK = {("tasks", "zoo"), ("api", "family"), ("family", "api"),
                 ("inspection", "family"), ("api", "inspection"), ("fidelity", "vae"),
                 ("__init__", "api"), ("cli", "experiments")}
CODEC_SHARED = {"base", "__init__"}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    """The `vaecompress.*` modules `path` imports, as dotted names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vaecompress":
                out += [f"vaecompress.{a.name}" for a in node.names]
            elif node.module.startswith("vaecompress."):
                out.append(node.module)
                out += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("vaecompress.")]
    return out


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in _sources()}
    assert units - set(LAYER) == set(), "add the new module or package to a layer"


def test_no_part_imports_a_higher_layer() -> None:
    bad = []
    for path in _sources():
        here = _unit(path)
        for name in _imports(path):
            there = name.split(".")[1]
            if there == here or there not in LAYER:
                continue
            if LAYER[there] > LAYER[here] or (LAYER[there] == LAYER[here] > 0
                                               and (here, there) not in SAME_LAYER_OK):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_a_codec_module_imports_no_other_codec() -> None:
    bad = []
    for path in sorted((PACKAGE / "codecs").glob("*.py")):
        if path.stem in CODEC_SHARED:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[1] == "codecs" and len(parts) > 2 and parts[2] not in CODEC_SHARED \
                    and parts[2] != path.stem and (PACKAGE / "codecs" / f"{parts[2]}.py").exists():
                bad.append(f"codecs/{path.name} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_contract_catches_a_violation(tmp_path: Path) -> None:
    """The reader sees a function-level import of a higher layer."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from vaecompress.api import compress\n    return compress\n")
    names = _imports(src)
    assert "vaecompress.api" in names
    assert LAYER["api"] > LAYER["coding"]
