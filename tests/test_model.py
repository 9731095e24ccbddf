"""The VAE on small real data: shapes, `.keras` round-trip under safe_mode, determinism, the IW bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import data
from pipeline.model import batches, load_vae, save_vae
from pipeline.params import Model, Train, parse_params
from pipeline.tracking.store import repo_root
from pipeline.training import fit_vae


@pytest.fixture(scope="module")
def small_data(official_dir):
    splits = data.split_data(
        data.load_official(official_dir), val_size=200, train_size=600, test_size=50, seed=0
    )
    return {name: split.images for name, split in splits.items()}  # uint8, as the stages pass them


def train_small(small_data, latent_dim=2, seed=3, steps_per_execution=50):
    return fit_vae(
        small_data["train"],
        small_data["val"],
        model=Model(latent_dim=latent_dim),
        train=Train(epochs=2, batch_size=100, steps_per_execution=steps_per_execution),
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


def test_steps_per_execution_changes_no_numbers(small_data):
    # 6 batches an epoch: one call of 6 (a partial execution of 50), or 6 calls of 1.
    _, batched = train_small(small_data, steps_per_execution=50)
    _, single = train_small(small_data, steps_per_execution=1)
    for key in batched:
        np.testing.assert_allclose(batched[key], single[key], rtol=1e-5, err_msg=key)


def test_batches_scale_uint8_as_the_model_input_and_reshuffle_each_pass():
    images = np.arange(10 * 28 * 28, dtype=np.uint32).reshape(10, 28, 28).astype(np.uint8)
    in_order = np.concatenate(list(batches(images, 4).as_numpy_iterator()))
    np.testing.assert_array_equal(in_order, data.to_model_input(images))

    shuffled = batches(images, 4, shuffle_seed=1)
    first, second = (np.concatenate(list(shuffled.as_numpy_iterator())) for _ in range(2))
    rows = [sorted(x[:, 0, 0, 0].tolist()) for x in (first, second)]
    assert rows[0] == rows[1] == sorted(in_order[:, 0, 0, 0].tolist())  # each pass: every image once
    assert not np.array_equal(first, second)  # a new order each pass


def test_importance_weighted_bound_matches_a_per_sample_loop(small_data):
    import math

    from scipy.special import logsumexp

    from pipeline.measures import importance_weighted_nll
    from pipeline.model import reconstruction_loss

    vae, _ = train_small(small_data, latent_dim=3)
    x = data.to_model_input(small_data["test"][:5])
    mu, logvar = vae.encoder.predict(x, verbose=0)
    k = 7
    # batch_size 14: two images per compiled call, three calls, the last one partial.
    fast = importance_weighted_nll(
        vae.decoder, x, mu, logvar, k=k, rng=np.random.default_rng(0), batch_size=14
    )

    rng = np.random.default_rng(0)  # the same draws, (k, images in the call, latent) per call
    expected = []
    for start in range(0, 5, 2):
        eps = rng.standard_normal((k, *mu[start : start + 2].shape), dtype=np.float32)
        for j in range(eps.shape[1]):
            i = start + j
            terms = []
            for s in range(k):
                z = mu[i] + np.exp(0.5 * logvar[i]) * eps[s, j]
                logits = vae.decoder.predict(z[None], verbose=0)
                log_px_z = -float(reconstruction_loss(x[i : i + 1], logits)[0])
                log_pz = -0.5 * np.sum(z**2 + math.log(2 * math.pi))
                log_qz = -0.5 * np.sum(eps[s, j] ** 2 + logvar[i] + math.log(2 * math.pi))
                terms.append(log_px_z + log_pz - log_qz)
            expected.append(-(logsumexp(terms) - math.log(k)))
    np.testing.assert_allclose(fast, expected, rtol=1e-5)


def test_keras_round_trip_with_safe_mode(small_data, tmp_path):
    vae, _ = train_small(small_data, latent_dim=3)
    path = tmp_path / "vae.keras"
    save_vae(vae, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.keras"]  # no partial file left

    loaded = load_vae(path)  # safe_mode=True
    x = data.to_model_input(small_data["test"][:8])
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
