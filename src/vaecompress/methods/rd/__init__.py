"""The rate-distortion VAE: the settings both codecs share (`settings.py`), the model and its
prior (`model.py`, `prior.py`), its training from the first step (`train.py`), its closed-form
data-free solution (`allocate.py`) and the task-aware training warm-started from it
(`warm.py`), the stored latent stream (`latents.py`), and the codecs `vae-rd` (`vae_rd.py`) and
`vae-rd-free` (`vae_rd_free.py`)."""
