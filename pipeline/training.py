"""Fitting a fresh VAE: the one training loop that the `train` stage and the sweep's trials share."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline.model import VAE, batches, build_vae
from pipeline.params import Model, PipelineError, Train
from pipeline.stage import STOPPED


class TrainingError(PipelineError):
    """Training produced a model that must not be evaluated."""


class DivergenceGuard(keras.callbacks.Callback):
    """Fail at the first NaN or infinite batch loss (Keras' `TerminateOnNaN` only stops quietly)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(f"the loss became {float(loss)} at batch {batch}; lower train.learning_rate")


class StopOnSignal(keras.callbacks.Callback):
    """Raise SIGTERM's interrupt again at the next batch if Python lost it (see `stage.interrupt`)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if STOPPED.is_set():
            raise KeyboardInterrupt("SIGTERM")

    on_test_batch_end = on_train_batch_end


def set_threads(threads: int) -> dict[str, str]:
    """Size TensorFlow's thread pools (0: its default) before its first op; return the sizes as tags."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return {
        "tensorflow.intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
        "tensorflow.inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
    }


def fit_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    model: Model,
    train: Train,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> tuple[VAE, dict[str, list[float]]]:
    """Train a fresh VAE on uint8 images; return it and its per-epoch history (train and `val_` metrics)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same machine: same numbers
    vae = build_vae(model, train, seed)
    history = vae.fit(
        batches(train_images, train.batch_size, shuffle_seed=seed),
        epochs=train.epochs,
        validation_data=batches(val_images, train.batch_size),
        shuffle=False,  # `batches` shuffles, seeded
        callbacks=[DivergenceGuard(), StopOnSignal(), *callbacks],
        verbose=verbose,
    )
    return vae, history.history
