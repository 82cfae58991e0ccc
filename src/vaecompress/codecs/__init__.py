"""Codecs: every compression method behind one interface (`base.Codec`) and one registry."""

from vaecompress.codecs import vae_paper  # noqa: F401  (registers)
from vaecompress.codecs import deep_compression  # noqa: F401  (registers)
from vaecompress.codecs import kmeans  # noqa: F401  (registers)
from vaecompress.codecs import nncodec_peer  # noqa: F401
from vaecompress.codecs import prune  # noqa: F401  (registers)
from vaecompress.codecs import quant  # noqa: F401  (registers)
from vaecompress.codecs import zstd_codec  # noqa: F401  (registers)
from vaecompress.codecs.base import (
    REGISTRY, Codec, CodecContext, Encoded, Finetuner, get_codec_class, make_codec, register,
)

__all__ = ["REGISTRY", "Codec", "CodecContext", "Encoded", "Finetuner", "get_codec_class",
           "make_codec", "register"]
