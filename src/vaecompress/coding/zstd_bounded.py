"""zstd payloads decompressed to exactly the size their codec state and manifest allow.

Boundary: bytes in, bytes out; the caller knows how many bytes the payload must give (from the
manifest, checked before). python-zstandard allocates a frame's own declared content size and
ignores `max_output_size` when the frame states one, so a 20-byte frame may claim a terabyte:
the declared size is read from the frame header and compared first, and only then is anything
decompressed (issue 21).
"""

from __future__ import annotations

import zstandard

from vaecompress.errors import FormatError


def decompress_exactly(data: bytes, size: int, what: str) -> bytes:
    """The `size` bytes a zstd frame holds; FormatError when its header declares another size,
    when it is corrupt, or when it holds more or fewer bytes."""
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what} is corrupt: {e}") from None
    if declared not in (-1, size):  # -1: the frame does not say
        raise FormatError(f"{what}: its zstd frame declares {declared:,} bytes, the "
                          f"manifest {size:,}")
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(size, 1))
    except zstandard.ZstdError as e:
        raise FormatError(f"{what} is corrupt: {e}") from None
    if len(out) != size:
        raise FormatError(f"{what} holds {len(out):,} bytes, the manifest {size:,}")
    return out
