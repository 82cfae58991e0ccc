"""vaecompress: compress trained neural networks into the latent space of a VAE, and measure
honestly what that costs against the established codecs."""

__version__ = "0.1.0"

from vaecompress.api import CompressResult, compress, decompress, inspect, load, save
from vaecompress.errors import FormatError, UserError, VaecompressError

__all__ = [
    "CompressResult",
    "FormatError",
    "UserError",
    "VaecompressError",
    "__version__",
    "compress",
    "decompress",
    "inspect",
    "load",
    "save",
]
