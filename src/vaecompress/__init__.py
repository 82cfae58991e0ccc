"""vaecompress: compress trained neural networks into the latent space of a VAE, and measure
honestly what that costs against the established codecs.

The public API is loaded on first use (`vaecompress.compress` imports torch then), so that the
command line starts without torch for the commands that do not need it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaecompress.errors import FormatError, UserError, VaecompressError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vaecompress.api import (
        CodecContext,
        CompressResult,
        DistillLoss,
        Finetuner,
        ModuleLoss,
        compress,
        decompress,
        distiller,
        inspect,
        load,
        save,
    )
    from vaecompress.target import compress_within
    from vaecompress.tasks.validation import Validation

_API = ("CodecContext", "CompressResult", "DistillLoss", "Finetuner", "ModuleLoss", "compress",
        "decompress", "distiller", "inspect", "load", "save")
# `--max-drop` from Python: the search, and what a task gives it to judge a rebuilt model on
_ELSEWHERE = {"compress_within": "vaecompress.target",
              "Validation": "vaecompress.tasks.validation"}

__all__ = [
    "CodecContext",
    "CompressResult",
    "DistillLoss",
    "Finetuner",
    "FormatError",
    "ModuleLoss",
    "UserError",
    "VaecompressError",
    "Validation",
    "__version__",
    "compress",
    "compress_within",
    "decompress",
    "distiller",
    "inspect",
    "load",
    "save",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        from vaecompress import api

        return getattr(api, name)
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'vaecompress' has no attribute {name!r}")
