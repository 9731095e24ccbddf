"""How good a trained VAE is: test-set ELBO terms, importance-weighted NLL, latent use."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from sklearn.neighbors import KNeighborsClassifier

from pipeline.backend import compiled
from pipeline.model import kl_divergence, reconstruction_loss

LOG_2PI = math.log(2 * math.pi)


def elbo_parts(
    decoder: keras.Model,
    x: np.ndarray,
    mu: np.ndarray,
    logvar: np.ndarray,
    *,
    rng: np.random.Generator,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image reconstruction loss (one sampled z) and analytic KL, in nats."""
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)
    logits = decoder.predict(z, batch_size=batch_size, verbose=0)
    return ops.convert_to_numpy(reconstruction_loss(x, logits)), ops.convert_to_numpy(
        kl_divergence(mu, logvar)
    )


def importance_weighted_nll(
    decoder: keras.Model,
    x: np.ndarray,
    mu: np.ndarray,
    logvar: np.ndarray,
    *,
    k: int,
    rng: np.random.Generator,
    batch_size: int,
) -> np.ndarray:
    """Per-image -log (1/k) sum_i p(x, z_i) / q(z_i | x): an upper bound on -log p(x) (Burda et al.).

    Vectorised over the k samples: one compiled call decodes about `batch_size` latents,
    the k samples of `batch_size // k` images (of one image when k is larger).
    """

    @compiled
    def bound(x, mu, logvar, eps):  # eps: (k, b, latent)
        z = mu + ops.exp(0.5 * logvar) * eps
        logits = decoder(ops.reshape(z, (-1, ops.shape(z)[-1])), training=False)
        log_px_z = -ops.reshape(reconstruction_loss(ops.tile(x, (k, 1, 1, 1)), logits), (k, -1))
        log_pz = -0.5 * ops.sum(z**2 + LOG_2PI, axis=-1)
        log_qz = -0.5 * ops.sum(eps**2 + logvar + LOG_2PI, axis=-1)
        return -(ops.logsumexp(log_px_z + log_pz - log_qz, axis=0) - math.log(k))

    per_call = max(1, batch_size // k)
    bounds = []
    for start in range(0, len(x), per_call):
        rows = slice(start, start + per_call)
        eps = rng.standard_normal((k, *mu[rows].shape), dtype=np.float32)
        bounds.append(ops.convert_to_numpy(bound(x[rows], mu[rows], logvar[rows], eps)))
    return np.concatenate(bounds)


def knn_accuracy(
    train_mu: np.ndarray, train_labels: np.ndarray, test_mu: np.ndarray, test_labels: np.ndarray, *, k: int
) -> float:
    """Accuracy of a k-NN classifier of class labels from latent means."""
    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_mu, train_labels)
    return float(classifier.score(test_mu, test_labels))
