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

_API = ("CodecContext", "CompressResult", "DistillLoss", "Finetuner", "ModuleLoss", "compress",
        "decompress", "distiller", "inspect", "load", "save")

__all__ = [
    "CodecContext",
    "CompressResult",
    "DistillLoss",
    "Finetuner",
    "FormatError",
    "ModuleLoss",
    "UserError",
    "VaecompressError",
    "__version__",
    "compress",
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
    raise AttributeError(f"module 'vaecompress' has no attribute {name!r}")
