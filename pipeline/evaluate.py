"""Stage `evaluate`: test-set ELBO, importance-weighted NLL, latent quality; a DVC metrics file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from sklearn.neighbors import KNeighborsClassifier

from pipeline import data, registry, runs, store
from pipeline.model import kl_divergence, load_vae, reconstruction_loss
from pipeline.params import flatten, load_params
from pipeline.prepare import PREPARED
from pipeline.stage import run_stage
from pipeline.train import MODEL, batches

METRICS = Path("metrics/evaluate.json")
BY_CLASS = Path("plots/reconstruction_by_class.json")  # a DVC bar chart, not `dvc exp show` columns
LOG_2PI = math.log(2 * math.pi)


def encode(encoder: keras.Model, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latent means and log-variances of uint8 images, `(n, latent_dim)` each."""
    mu, logvar = encoder.predict(batches(images, batch_size), verbose=0)
    return mu, logvar


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

    @tf.function(reduce_retracing=True)
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


def active_units(mu: np.ndarray, threshold: float) -> int:
    """Latent dims whose posterior mean varies across images: Var_x(E[z_u | x]) > threshold."""
    return int(np.sum(np.var(mu, axis=0) > threshold))


def knn_accuracy(
    train_mu: np.ndarray, train_labels: np.ndarray, test_mu: np.ndarray, test_labels: np.ndarray, *, k: int
) -> float:
    """Accuracy of a k-NN classifier of class labels from latent means."""
    classifier = KNeighborsClassifier(n_neighbors=k).fit(train_mu, train_labels)
    return float(classifier.score(test_mu, test_labels))


def class_key(name: str) -> str:
    """`"T-shirt/top"` -> `"t_shirt_top"`: a metric key without path separators."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def rank_in_registry(test_loss: float) -> str:
    """Tag the trained model's registered version with its test_loss; the champion follows the best."""
    model = runs.read_run_file()
    if "model_version" not in model:  # trained before models were registered
        return ""
    name, version = model["registered_model"], model["model_version"]
    if registry.record_test_loss(name, version, test_loss):
        return f"; {name} version {version} is the {registry.CHAMPION}"
    return f"; the {registry.CHAMPION} stays ahead of {name} version {version}"


def main() -> None:
    params = load_params()
    config = params.evaluate
    rng = np.random.default_rng(params.base.seed)

    with runs.resumed_run(params, "evaluate") as run:  # an error ends the run FAILED, an interrupt KILLED
        runs.log_stage_params({k: v for k, v in flatten(params).items() if k.startswith("evaluate.")})
        splits = data.load_prepared(PREPARED)
        runs.check_model_hash(MODEL)
        vae = load_vae(MODEL)
        x_test, y_test = data.to_model_input(splits["test"].images), splits["test"].labels
        mu, logvar = encode(vae.encoder, splits["test"].images, config.batch_size)
        reconstruction, kl = elbo_parts(
            vae.decoder, x_test, mu, logvar, rng=rng, batch_size=config.batch_size
        )
        iw_nll = importance_weighted_nll(
            vae.decoder, x_test, mu, logvar, k=config.iw_samples, rng=rng, batch_size=config.batch_size
        )
        train_mu, _ = encode(vae.encoder, splits["train"].images, config.batch_size)
        metrics = {
            "test_loss": float(np.mean(reconstruction + kl)),
            "test_reconstruction": float(np.mean(reconstruction)),
            "test_kl": float(np.mean(kl)),
            "test_iw_nll": float(np.mean(iw_nll)),
            "active_units": active_units(mu, config.active_threshold),
            "knn_accuracy": knn_accuracy(
                train_mu, splits["train"].labels, mu, y_test, k=config.knn_neighbors
            ),
        }
        by_class = [
            {"class": name, "reconstruction": float(np.mean(reconstruction[y_test == label]))}
            for label, name in enumerate(data.CLASS_NAMES)
            if np.any(y_test == label)
        ]
        for path in (METRICS, BY_CLASS):
            path.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
        BY_CLASS.write_text(json.dumps(by_class, indent=2) + "\n")
        per_class = {
            f"reconstruction_by_class/{class_key(row['class'])}": row["reconstruction"] for row in by_class
        }
        runs.log_metrics({**metrics, **per_class})
        standing = rank_in_registry(metrics["test_loss"])
    print(
        f"evaluate: test_loss {metrics['test_loss']:.3f} nats, "
        f"IW NLL {metrics['test_iw_nll']:.3f}{standing}\n"
        f"evaluate: run {store.run_link(run)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main)
