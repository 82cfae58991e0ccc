"""The presets of `vaecompress bench`: the bench task each one runs, at which of its own presets.

The zoo's `ablation` measures what each ingredient of a codec contributes (run it with
`--codecs` naming codecs that have variants); the `datafree` presets sweep densely every method
that needs the weights alone (issue 18); `minilm` is every method on all-MiniLM-L6-v2 with the
data-using ones at one distillation budget (issue 19), `minilm-ablation` what each ingredient
of vae-rd's warm start buys there. Imports nothing, so the command line
lists them without loading torch.
"""

from __future__ import annotations

# preset -> (bench task, the task's own preset)
PRESETS: dict[str, tuple[str, str]] = {
    "quick": ("zoo", "quick"),
    "full": ("zoo", "full"),
    "ablation": ("zoo", "ablation"),
    "datafree": ("zoo", "datafree"),
    "minilm": ("minilm", "minilm"),
    "minilm-datafree": ("minilm", "datafree"),
    "minilm-ablation": ("minilm", "ablation"),
}
