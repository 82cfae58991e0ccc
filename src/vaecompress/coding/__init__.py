"""Coding tools that codecs compose: the layer beneath `vaecompress.codecs`.

- `entropy`: integer symbol streams to bytes (frequency tables + ANS, bit packing, varints);
- `floats`: raw tensors and float32/float16 arrays as bytes, which manifest entries are coded;
- `sparse`: magnitude masks and the positions of the surviving weights;
- `kmeans`: 1-D k-means and tensors described as indices into a codebook.

Boundary: nothing here knows a codec, a container or a registry; every codec module imports only
from here (and `codecs.base`, `format`, `io`, `params`, `training`, `vae`, `errors`), never from
another codec.
"""
