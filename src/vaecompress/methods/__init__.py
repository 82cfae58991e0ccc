"""The project's own methods, a package each: its settings, model, training (step functions that
`training.Loop` runs), stored form and codec registrations. The baselines and peers stay
together in `codecs/`; a method package imports no other method package.

- `paper/`: the VAE of Cheng et al. 2024 (its network and ELBO, its training on noisy variants,
  the `vae-paper` codec);
- `rd/`: the rate-distortion VAE (one integer latent per weight, a step per tensor, a learned
  prior): its settings, model, prior, training, warm start, closed form and latent stream, and
  its two codecs, `vae-rd` (task-aware) and `vae-rd-free` (data-free, the default).
"""
