"""What counts as one configuration: which settings share an id and which do not."""

from __future__ import annotations

import pytest

from pipeline.configuration import NO_EFFECT, PLATEAU_ONLY, code_digest, config_id, settings
from pipeline.params import Params, flatten, parse_params, with_overrides
from pipeline.tracking.runs import run_name

DATA = "a" * 64  # a prepared data set's digest
OTHER_DATA = "b" * 64

# (overrides of the first run, overrides of the second, whether they must share an id)
PAIRS = [
    ({}, {"train.seed": 7}, True),  # replicates
    ({}, {"train.threads": 1}, True),
    ({}, {"base.backend": "jax"}, True),  # how the numbers are computed, as the thread count
    ({}, {"train.steps_per_execution": 7}, True),
    ({}, {"data.source": "/usr/share/datasets/fashion-mnist"}, True),  # the digest says what it holds
    ({}, {"data.url": "http://example.org/"}, True),
    ({}, {"base.tracking.experiment": "other"}, True),
    ({}, {"base.tracking.champion_sd": 5.0}, True),
    ({}, {"plot.dpi": 300}, True),
    ({}, {"tune.n_trials": 3, "tune.space": {}}, True),
    ({}, {"train.plateau_patience": 5}, True),  # inert under the constant schedule
    ({"train.schedule": "cosine"}, {"train.schedule": "cosine", "train.plateau_factor": 0.3}, True),
    ({}, {"train.epochs": 30, "train.learning_rate": 0.001}, True),  # written at their defaults
    ({"train.warmup_epochs": 1, "train.epochs": 9}, {"train.warmup_epochs": 1.0, "train.epochs": 9}, True),
    ({}, {"train.learning_rate": 0.002}, False),
    ({}, {"train.epochs": 9}, False),
    ({}, {"model.latent_dim": 16}, False),
    ({}, {"base.seed": 1}, False),  # another validation split and other evaluation draws
    ({}, {"train.schedule": "cosine"}, False),
    ({"train.schedule": "plateau"}, {"train.schedule": "plateau", "train.plateau_patience": 5}, False),
    ({}, {"train.optimizer": "adam"}, False),
    ({}, {"evaluate.iw_samples": 10}, False),
    ({}, {"data.val_size": 4000}, False),
]


def params(overrides):
    return parse_params(with_overrides({}, overrides))


@pytest.mark.parametrize(("first", "second", "shared"), PAIRS)
def test_which_settings_share_a_configuration(first, second, shared):
    assert (config_id(params(first), DATA) == config_id(params(second), DATA)) == shared


def test_the_data_is_part_of_the_configuration():
    assert config_id(params({}), DATA) != config_id(params({}), OTHER_DATA)


def test_the_defaults_are_no_settings_so_a_new_key_at_its_default_keeps_every_id():
    assert settings(params({})) == {}
    assert settings(params({"train.epochs": 9, "train.seed": 3})) == {"train.epochs": 9}
    # Fixed: changing it changes the id of every run already recorded (re-tag them: docs/experiments.md).
    assert config_id(params({}), DATA) == "3dd8cedf0827"


def test_the_code_digest_is_stable_and_short():
    assert code_digest() == code_digest() and len(code_digest()) == 12


def test_the_defaults_that_numbers_rest_on_are_pinned():
    """A run's id leaves out every key at its default. So a default that changes would give new
    runs the old runs' id with other numbers: change one only together with this table, and
    re-tag the store (`python -m pipeline.retag`) with params that state the old value."""
    shaping = {
        k: v for k, v in flatten(Params()).items() if not k.startswith(NO_EFFECT) and k not in PLATEAU_ONLY
    }
    assert shaping == {
        "base.seed": 42,
        "data.val_size": 5000, "data.train_size": None, "data.test_size": None,
        "model.latent_dim": 2, "model.encoder_filters": [32, 64], "model.decoder_filters": [16, 8],
        "model.decoder_channels": 32, "model.kernel_size": 3, "model.dense_units": 32,
        "train.epochs": 30, "train.batch_size": 100, "train.learning_rate": 1e-3, "train.optimizer": "nadam",
        "train.schedule": "constant", "train.warmup_epochs": 0.0, "train.final_lr_fraction": 0.0,
        "train.early_stopping": 0, "train.kl_warmup_epochs": 0.0, "train.free_bits": 0.0,
        "train.kl_weight": 1.0,
        "evaluate.iw_samples": 50, "evaluate.knn_neighbors": 5, "evaluate.active_threshold": 0.01,
        "evaluate.batch_size": 500,
    }  # fmt: skip


def test_a_run_name_names_every_setting_that_differs_from_the_defaults():
    assert run_name(Params()) == "latent 2, lr 0.001, seed 42"
    preset = parse_params(
        with_overrides({}, {"train.epochs": 6, "train.schedule": "cosine", "train.warmup_epochs": 1,
                            "train.learning_rate": 0.018, "train.threads": 1, "plot.dpi": 50})
    )  # fmt: skip
    # Threads and plotting change no number, so they are not named; the seed always is.
    assert run_name(preset, "quick") == "latent 2, lr 0.018, 6 epochs, cosine, warm-up 1, seed 42 · quick"
    beta = parse_params(with_overrides({}, {"train.kl_weight": 0.5, "model.encoder_filters": [16, 32]}))
    assert run_name(beta) == "latent 2, lr 0.001, encoder filters [16, 32], beta 0.5, seed 42"


def test_a_sampler_seed_draws_another_study_and_null_keeps_the_base_seeds():
    """`tune.sampler_seed` is the study's seed where it is set; null keeps `base.seed`, so that the
    studies drawn before the key keep their settings and so their names."""
    from pipeline.search.study import sampler_seed, study_settings

    defaults = Params()
    assert defaults.tune.sampler_seed is None
    assert sampler_seed(defaults) == study_settings(defaults)["seed"] == defaults.base.seed == 42
    raw = defaults.model_dump()
    drawn = parse_params(with_overrides(raw, {"tune.sampler_seed": 7}))
    assert sampler_seed(drawn) == study_settings(drawn)["seed"] == 7
    assert study_settings(drawn) != study_settings(defaults)
    with pytest.raises(Exception, match=r"tune\.sampler_seed"):
        parse_params(with_overrides(raw, {"tune.sampler_seed": -1}))


def test_a_confirming_budget_draws_another_study_and_none_keeps_the_old_ones():
    """`tune.confirm_overrides` is part of the confirming, so of the study's settings, only where set:
    the studies drawn before the key keep their names. A searched key or a seed is refused."""
    from pipeline.search.study import settings_digest, study_settings

    defaults = Params()
    assert study_settings(defaults)["confirm"] == [3, 2]
    raw = defaults.model_dump()
    longer = parse_params(with_overrides(raw, {"tune.confirm_overrides": {"train.epochs": 20}}))
    assert study_settings(longer)["confirm"] == [3, 2, {"train.epochs": 20}]
    assert settings_digest(study_settings(longer)) != settings_digest(study_settings(defaults))
    for key in ("train.seed", "base.seed"):  # a searched key: tests/test_tune.py
        with pytest.raises(Exception, match=rf"tune\.confirm_overrides: '{key}' is searched or a seed"):
            parse_params(with_overrides(raw, {"tune.confirm_overrides": {key: 3}}))
