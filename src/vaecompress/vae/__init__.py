"""The VAE: network, ELBO, and its training on noisy parameter variants."""
