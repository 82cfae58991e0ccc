"""Codecs: every compression method behind one interface (`base.Codec`) and one registry.

Importing this package registers the built-in codecs, one module each; the import order is the
order of `REGISTRY` and so of the bench's default codec list and tables (lossless reference
first, the paper's codec last). A new codec is one new module imported here.
"""

# isort: off
from vaecompress.codecs import zstd_codec  # noqa: F401  (registers)
from vaecompress.codecs import quant  # noqa: F401  (registers int8, int4)
from vaecompress.codecs import prune  # noqa: F401  (registers)
from vaecompress.codecs import kmeans  # noqa: F401  (registers)
from vaecompress.codecs import deep_compression  # noqa: F401  (registers)
from vaecompress.codecs import nncodec_peer  # noqa: F401  (registers)
from vaecompress.codecs import hqq_peer  # noqa: F401  (registers)
from vaecompress.codecs import zipnn_peer  # noqa: F401  (registers)
from vaecompress.methods.paper import vae_paper  # noqa: F401  (registers)
from vaecompress.methods.rd import vae_rd  # noqa: F401  (registers)
from vaecompress.methods.rd import vae_rd_free  # noqa: F401  (registers)
from vaecompress.codecs import bitdelta  # noqa: F401  (registers; a peer for deltas)
# isort: on
from vaecompress.codecs.base import (
    REGISTRY,
    Codec,
    CodecContext,
    Encoded,
    Finetuner,
    Knob,
    get_codec_class,
    make_codec,
    register,
    unregister,
)

# What `vaecompress compress` uses when no codec is named: the best honest ratio among the
# codecs that need no training data (see the README's bench table), and the lossless fallback
# for a model it would make larger.
DEFAULT_CODEC = "vae-rd-free"
LOSSLESS_CODEC = "zstd"

__all__ = [
    "DEFAULT_CODEC",
    "LOSSLESS_CODEC",
    "REGISTRY",
    "Codec",
    "CodecContext",
    "Encoded",
    "Finetuner",
    "Knob",
    "get_codec_class",
    "make_codec",
    "register",
    "unregister",
]
