"""Codecs: every compression method behind one interface (`base.Codec`) and one registry."""

from vaecompress.codecs import (
    deep_compression,  # noqa: F401  (registers)
    kmeans,  # noqa: F401  (registers)
    nncodec_peer,  # noqa: F401
    prune,  # noqa: F401  (registers)
    quant,  # noqa: F401  (registers)
    vae_paper,  # noqa: F401  (registers)
    zstd_codec,  # noqa: F401  (registers)
)
from vaecompress.codecs.base import (
    REGISTRY,
    Codec,
    CodecContext,
    Encoded,
    Finetuner,
    get_codec_class,
    make_codec,
    register,
)

__all__ = ["REGISTRY", "Codec", "CodecContext", "Encoded", "Finetuner", "get_codec_class",
           "make_codec", "register"]
