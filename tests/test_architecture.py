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
               "data", "usercode"}),  # core
    frozenset({"coding"}),  # bytes from numbers and back
    frozenset({"training"}),  # the training loop, its hooks, torch.distributed, fine-tuning
    frozenset({"zoo", "tasks", "fidelity"}),  # networks, tasks, what the weights lost
    frozenset({"codecs", "methods"}),  # the codecs: baselines and peers, the project's methods
    frozenset({"api", "family", "sharded", "inspection", "target", "__init__"}),  # the surface
    frozenset({"experiments", "cli"}),  # applications
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# The core's modules import each other freely; above it, the edges inside one layer that the
# contract allows (docs/architecture.md says which are a design and which are to be cut).
SAME_LAYER_OK = {("tasks", "zoo"), ("api", "family"), ("family", "api"),
                 ("inspection", "family"), ("api", "inspection"),
                 ("api", "sharded"), ("sharded", "api"), ("inspection", "sharded"),
                 ("codecs", "methods"), ("methods", "codecs"),
                 ("__init__", "api"), ("__init__", "target"), ("target", "api"),
                 ("cli", "experiments")}


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


def _codec_modules() -> dict[str, Path]:
    """Every module that registers a codec, by dotted name under the package."""
    out = {}
    for path in sorted([*(PACKAGE / "codecs").glob("*.py"), *(PACKAGE / "methods").rglob("*.py")]):
        if "@register" in path.read_text(encoding="utf-8"):
            out[".".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return out


def test_a_codec_module_imports_no_other_codec() -> None:
    modules = _codec_modules()
    assert {"codecs.zstd_codec", "methods.rd.vae_rd", "methods.paper.vae_paper"} <= set(modules)
    bad = []
    for name, path in modules.items():
        for imported in _imports(path):
            other = imported.removeprefix("vaecompress.")
            hit = next((m for m in modules if other == m or other.startswith(m + ".")), None)
            if hit is not None and hit != name:
                bad.append(f"{name} imports {imported}")
    assert not bad, "\n".join(bad)


def test_a_method_package_imports_no_other_method() -> None:
    bad = []
    for path in sorted((PACKAGE / "methods").rglob("*.py")):
        rel = path.relative_to(PACKAGE / "methods").parts
        if len(rel) < 2:
            continue
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[1] == "methods" and len(parts) > 2 and parts[2] != rel[0]:
                bad.append(f"methods/{'/'.join(rel)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_the_contract_catches_a_violation(tmp_path: Path) -> None:
    """The reader sees a function-level import of a higher layer."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from vaecompress.api import compress\n    return compress\n")
    names = _imports(src)
    assert "vaecompress.api" in names
    assert LAYER["api"] > LAYER["coding"]
