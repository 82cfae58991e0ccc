"""The paper's VAE (Cheng et al. 2024): the network and its ELBO (`model.py`), its training on
noisy parameter variants (`train.py`), and the `vae-paper` codec (`vae_paper.py`)."""
