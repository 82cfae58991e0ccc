"""Families of models: a model coded as its difference from a base the receiver already has
(`delta`), and a training run's checkpoints in one file, each coded against the previous
rebuilt one (`series`). Spec: docs/families.md; the file fields: docs/format.md.
"""

# The codec name of a series file's container (read by `family.series`, not a registered codec);
# here, where importing it costs no torch, so that `inspection` can tell a series apart.
SERIES_CODEC = "series"
