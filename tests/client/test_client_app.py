"""The site's engine settings come from the server's request, key by key, with defaults for the rest."""

from fedsynth.client.client_app import distill_config, site_seed
from fedsynth.client.config import app_defaults

REQUEST = {"ipc": 10, "epsilon": 1.0, "delta": 1e-5, "steps": 20}


def test_request_keys_reach_the_engine():
    config = distill_config({**REQUEST, "inner-steps": 3, "batch-per-class": 32.0, "width": 16, "lr-images": 0.5,
                             "replay-epochs": 6, "replay-lr-end": 0.1, "release-layers": 2, "seed": 4}, "site-1")
    assert (config.inner_steps, config.batch_per_class, config.width, config.lr_images) == (3, 32.0, 16, 0.5)
    assert (config.replay_epochs, config.replay_lr_end, config.release_layers) == (6, 0.1, 2)
    assert (config.ipc, config.epsilon, config.iterations) == (10, 1.0, 20)
    assert config.seed == site_seed(4, "site-1") and not config.every_class_populated


def test_missing_keys_take_the_apps_defaults():
    config = distill_config(REQUEST, "site-1")
    defaults = app_defaults()
    assert (config.replay_epochs, config.inner_steps, config.release_layers) == (
        defaults["replay-epochs"], defaults["inner-steps"], defaults["release-layers"])
