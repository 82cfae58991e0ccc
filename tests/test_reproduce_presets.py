"""The reproduce presets: the paper keeps the paper's settings, quick is the documented cut."""

from vaecompress.experiments import reproduce as reproduce_module
from vaecompress.experiments.reproduce import QUICK_SWEEP, ReproduceConfig


def test_paper_preset_keeps_the_papers_settings():
    cfg = ReproduceConfig.for_preset("paper")
    assert cfg.vae.n_variants == 100 and cfg.vae.epochs == 500 and cfg.vae.latent == 64
    assert cfg.sweep_latents == (128, 96, 64, 32, 16, 8, 4)


def test_quick_preset_is_the_documented_cut():
    cfg = ReproduceConfig.for_preset("quick")
    assert cfg.sweep_latents == QUICK_SWEEP == (128, 64, 16, 8, 4)
    assert (cfg.vae.epochs, cfg.vae.batch_size, cfg.vae.lr) == (15, 512, 1e-3)
    assert cfg.vae.n_variants == 100  # the data stay the paper's; only the budget is cut
    doc = reproduce_module
    assert "15 epochs at batch 512" in doc.__doc__ and "128, 64, 16, 8 and 4" in doc.__doc__
