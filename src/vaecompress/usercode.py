"""The user's own code, named on the command line as `module.path:Name` (`--arch`, `--score`)
and imported from the working directory or PYTHONPATH, as `python -c "import module.path"`
would: only a name the user typed is ever imported, never one read from a file.

Boundary: finding the object; what it must be is its caller's.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from vaecompress.errors import UserError


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def import_named(spec: str, kind: str, example: str) -> Any:
    """The object `module.path:Name` (a dotted attribute path after the colon) of the user's
    code; a UserError in one line if the spec is malformed, the module cannot be imported or
    fails while importing, or the name is missing. `kind` and `example` say, in the error, what
    is named (`ClassName`) and how (`my_mlp:MyMLP`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"name it as module.path:{kind} (e.g. {example}), got '{spec}'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise UserError(f"cannot import '{spec}': no module named '{e.name}' in the working "
                            "directory or on PYTHONPATH") from None
        raise UserError(f"cannot import '{spec}': {first_line(e)}") from None
    except Exception as e:  # the user's module failed while being imported
        raise UserError(f"importing {module_name} for '{spec}' failed: {type(e).__name__}: "
                        f"{first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"cannot import '{spec}': {module_name} has no '{attr}'")
        obj = getattr(obj, part)
    return obj
