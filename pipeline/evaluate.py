"""Stage `evaluate`: test-set ELBO, importance-weighted NLL, latent quality; a DVC metrics file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from scipy.stats import sem

from pipeline import data
from pipeline.configuration import protocol
from pipeline.params import Tracking, flatten, load_params
from pipeline.paths import MODEL, PREPARED
from pipeline.stage import run_stage
from pipeline.tracking import registry, runs, store

METRICS = Path("metrics/evaluate.json")
BY_CLASS = Path("plots/reconstruction_by_class.json")  # a DVC bar chart, not `dvc exp show` columns


def class_key(name: str) -> str:
    """`"T-shirt/top"` -> `"t_shirt_top"`: a metric key without path separators."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def rank_in_registry(test_loss: float, protocol: str, tracking: Tracking, experiment_id: str) -> str:
    """Tag the trained model's registered version with its test_loss and protocol; say where the
    champion alias is now."""
    model = runs.read_run_file()
    if "model_version" not in model:  # trained before models were registered
        return ""
    name, version = model["registered_model"], model["model_version"]
    holder, why = registry.record_evaluation(
        name,
        version,
        test_loss=test_loss,
        protocol=protocol,
        sd=tracking.champion_sd,
        level=tracking.champion_level,
        experiment_id=experiment_id,
    )
    if holder == version:
        return f"; {name} version {version} is the {registry.CHAMPION} ({why})"
    if not holder:
        return f"; {name} has no {registry.CHAMPION}: {why}"
    return f"; the {registry.CHAMPION} is {name} version {holder}, not version {version}: {why}"


def main() -> None:
    # TensorFlow's modules, once `run_stage` has started it quietly
    from pipeline.measures import elbo_parts, importance_weighted_nll, knn_accuracy
    from pipeline.model import active_units, encode, load_vae

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
        # After the test set's draws, so that those stay as they were before this was measured.
        val_mu, val_logvar = encode(vae.encoder, splits["val"].images, config.batch_size)
        val_reconstruction, val_kl = elbo_parts(
            vae.decoder,
            data.to_model_input(splits["val"].images),
            val_mu,
            val_logvar,
            rng=rng,
            batch_size=config.batch_size,
        )
        metrics = {
            "test_loss": float(np.mean(reconstruction + kl)),
            # The mean's standard error over these images: the noise of the split itself,
            # which no number of training seeds removes.
            "test_loss_se": float(sem(reconstruction + kl)),
            "val_loss_se": float(sem(val_reconstruction + val_kl)),
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
        runs.log_metrics(metrics, model_id=runs.read_run_file().get("model_id"))
        runs.log_metrics(per_class)
        evaluated_as = protocol(params, data.digest(splits))
        standing = rank_in_registry(
            metrics["test_loss"], evaluated_as, params.base.tracking, run.info.experiment_id
        )
    print(
        f"evaluate: test_loss {metrics['test_loss']:.3f} nats, "
        f"IW NLL {metrics['test_iw_nll']:.3f}{standing}\n"
        f"evaluate: run {store.run_link(run)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main, keras=True)
