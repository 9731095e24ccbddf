"""The VAE's loss math against NumPy references and a Monte Carlo estimate."""

import numpy as np
from keras import ops

from pipeline.model import kl_divergence, negative_elbo, reconstruction_loss


def numpy_bce(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Textbook -[x log p + (1 - x) log(1 - p)], summed per image, in float64."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    per_pixel = -(x * np.log(p) + (1 - x) * np.log1p(-p))
    return per_pixel.reshape(len(x), -1).sum(axis=1)


def test_reconstruction_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.random((6, 28, 28, 1)).astype(np.float32)  # (batch, 28, 28, 1) in [0, 1]
    logits = rng.normal(0, 3, (6, 28, 28, 1)).astype(np.float32)
    got = ops.convert_to_numpy(reconstruction_loss(x, logits))
    assert got.shape == (6,)
    np.testing.assert_allclose(got, numpy_bce(x, logits), rtol=1e-5)


def test_reconstruction_loss_is_finite_for_extreme_logits():
    x = np.array([[[[1.0]], [[0.0]]]], dtype=np.float32).reshape(1, 2, 1, 1)
    logits = np.array([-200.0, 200.0], dtype=np.float32).reshape(1, 2, 1, 1)
    got = ops.convert_to_numpy(reconstruction_loss(x, logits))
    np.testing.assert_allclose(got, [400.0], rtol=1e-6)  # both pixels maximally wrong: 200 nats each


def test_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    mu = rng.normal(0, 1, (3, 4)).astype(np.float32)
    logvar = rng.normal(0, 0.5, (3, 4)).astype(np.float32)
    got = ops.convert_to_numpy(kl_divergence(mu, logvar))
    closed = 0.5 * np.sum(mu**2 + np.exp(logvar) - logvar - 1, axis=1)
    np.testing.assert_allclose(got, closed, rtol=1e-5)

    # E_q[log q(z) - log p(z)] by sampling: the Gaussian constants cancel.
    sigma = np.exp(0.5 * logvar.astype(np.float64))
    eps = rng.standard_normal((200_000, *mu.shape))
    z = mu + sigma * eps
    log_q = -0.5 * np.sum(eps**2 + logvar, axis=-1)
    log_p = -0.5 * np.sum(z**2, axis=-1)
    monte_carlo = np.mean(log_q - log_p, axis=0)
    np.testing.assert_allclose(got, monte_carlo, rtol=0.02, atol=0.01)


def test_kl_is_zero_at_the_prior():
    np.testing.assert_allclose(ops.convert_to_numpy(kl_divergence(np.zeros((2, 5)), np.zeros((2, 5)))), 0.0)


def test_negative_elbo_is_reconstruction_plus_kl():
    rng = np.random.default_rng(2)
    x = rng.random((4, 28, 28, 1)).astype(np.float32)
    logits = rng.normal(size=(4, 28, 28, 1)).astype(np.float32)
    mu, logvar = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    total = ops.convert_to_numpy(negative_elbo(x, logits, mu, logvar))
    parts = numpy_bce(x, logits) + 0.5 * np.sum(mu**2 + np.exp(logvar) - logvar - 1, axis=1)
    np.testing.assert_allclose(total, parts, rtol=1e-5)
