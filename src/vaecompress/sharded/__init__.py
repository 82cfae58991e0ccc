"""A model folder too large to hold whole, coded one shard at a time (`sharded.stream`).

Spec of the file: docs/format.md ("Sharded files"); when it is used: docs/own-model.md.
"""

# The codec name of a sharded file's container (read by `sharded.stream`, not a registered
# codec); here, where importing it costs no torch, so that `inspection` can tell one apart.
SHARDS_CODEC = "shards"
SHARDS_VERSION = 1
MEMBER_KIND = "vaecompress"


def member_name(k: int) -> str:
    return f"s{k}"
