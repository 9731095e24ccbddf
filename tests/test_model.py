"""The VAE on small real data: shapes, `.keras` round-trip under safe_mode, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import data
from pipeline.model import load_vae
from pipeline.params import Model, Train, parse_params
from pipeline.tracking import repo_root
from pipeline.train import fit_vae, save_model


@pytest.fixture(scope="module")
def small_data(official_dir):
    splits = data.split_data(
        data.load_official(official_dir), val_size=200, train_size=600, test_size=50, seed=0
    )
    return {name: data.to_model_input(split.images) for name, split in splits.items()}


def train_small(small_data, latent_dim=2, seed=3):
    return fit_vae(
        small_data["train"],
        small_data["val"],
        model=Model(latent_dim=latent_dim),
        train=Train(epochs=2, batch_size=100),
        seed=seed,
        verbose=0,
    )


def test_history_has_train_and_validation_parts(small_data):
    _, history = train_small(small_data)
    assert set(history) == {"loss", "reconstruction", "kl", "val_loss", "val_reconstruction", "val_kl"}
    assert all(len(values) == 2 for values in history.values())
    for prefix in ("", "val_"):
        np.testing.assert_allclose(
            history[f"{prefix}loss"],
            np.add(history[f"{prefix}reconstruction"], history[f"{prefix}kl"]),
            rtol=1e-4,
        )
    assert history["loss"][1] < history["loss"][0]


def test_same_seed_same_numbers(small_data):
    _, first = train_small(small_data, seed=5)
    _, second = train_small(small_data, seed=5)
    _, other = train_small(small_data, seed=6)
    assert first == second
    assert first != other


def test_keras_round_trip_with_safe_mode(small_data, tmp_path):
    vae, _ = train_small(small_data, latent_dim=3)
    path = tmp_path / "vae.keras"
    save_model(vae, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.keras"]  # no partial file left

    loaded = load_vae(path)  # safe_mode=True
    x = small_data["test"][:8]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), vae.predict(x, verbose=0), atol=1e-6)
    mu, logvar = loaded.encoder.predict(x, verbose=0)  # the encoder on its own
    assert mu.shape == logvar.shape == (8, 3)
    logits = loaded.decoder.predict(mu, verbose=0)  # the decoder on its own
    assert logits.shape == (8, 28, 28, 1)
    assert loaded.get_layer("sampling").seed == 3


def test_model_knobs_change_the_architecture():
    from pipeline.model import build_vae

    params = parse_params(
        {"model": {"latent_dim": 5, "encoder_filters": [8], "decoder_filters": [4], "dense_units": 16}}
    )
    vae = build_vae(params.model, params.train, seed=0)
    assert vae.encoder.output_shape == [(None, 5), (None, 5)]
    assert [layer.filters for layer in vae.encoder.layers if hasattr(layer, "filters")] == [8]
    assert vae.decoder.output_shape == (None, 28, 28, 1)


def test_store_is_anchored_to_the_original_repository():
    assert repo_root(Path("/home/u/repo")) == Path("/home/u/repo")
    assert repo_root(Path("/home/u/repo/.dvc/tmp/exps/tmpab12cd")) == Path("/home/u/repo")
