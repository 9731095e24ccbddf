"""Stage `train`: fit the VAE, save it, and open the MLflow run that later stages extend."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import data, tracking
from pipeline.model import VAE, build_vae
from pipeline.params import Model, PipelineError, Train, load_params, run_stage
from pipeline.prepare import PREPARED, SUMMARY

MODEL = Path("models/vae.keras")
HISTORY = Path("plots/history.csv")
METRICS = Path("metrics/train.json")


class TrainingError(PipelineError):
    """Training produced a model that must not be evaluated."""


class DivergenceGuard(keras.callbacks.Callback):
    """Fail at the first NaN or infinite batch loss (Keras' `TerminateOnNaN` only stops quietly)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(f"the loss became {float(loss)} at batch {batch}; lower train.learning_rate")


def fit_vae(
    x_train: np.ndarray,
    x_val: np.ndarray,
    *,
    model: Model,
    train: Train,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> tuple[VAE, dict[str, list[float]]]:
    """Train a fresh VAE; return it and its per-epoch history (train and `val_` metrics)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same machine: same numbers
    vae = build_vae(model, train, seed)
    history = vae.fit(
        x_train,
        batch_size=train.batch_size,
        epochs=train.epochs,
        validation_data=(x_val,),
        shuffle=True,
        callbacks=[DivergenceGuard(), *callbacks],
        verbose=verbose,
    )
    return vae, history.history


def save_model(vae: VAE, path: Path) -> None:
    """Save atomically: a reader never sees a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.keras")
    vae.save(partial)
    os.replace(partial, path)


def main() -> None:
    params = load_params()
    splits = data.load_prepared(PREPARED)
    summary = json.loads(SUMMARY.read_text())
    x_train = data.to_model_input(splits["train"].images)  # (n, 28, 28, 1) in [0, 1]
    x_val = data.to_model_input(splits["val"].images)
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    METRICS.parent.mkdir(parents=True, exist_ok=True)

    with tracking.training_run(params) as run:
        tracking.log_dataset(x_train, digest=summary["digest"], source=str(PREPARED))
        vae, history = fit_vae(
            x_train,
            x_val,
            model=params.model,
            train=params.train,
            seed=params.base.seed,
            callbacks=[keras.callbacks.CSVLogger(str(HISTORY)), tracking.EpochMetrics()],
        )
        final = {name: float(values[-1]) for name, values in history.items()}
        if not all(math.isfinite(v) for v in final.values()):
            raise TrainingError(f"training diverged: final metrics {final}; lower train.learning_rate")
        save_model(vae, MODEL)
        METRICS.write_text(json.dumps(final, indent=2) + "\n")
        tracking.log_model(vae, x_val[:8])
        tracking.write_run_file(run)
    print(f"train: val_loss {final['val_loss']:.3f} nats, run {run.info.run_id}")


if __name__ == "__main__":
    run_stage(main)
