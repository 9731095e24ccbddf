"""Stage `train`: fit the VAE, save it, and open the MLflow run that later stages extend."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import callbacks, data, logged_model, registry, runs, store
from pipeline.model import VAE, build_vae, inference_model
from pipeline.params import Model, Params, PipelineError, Train, flatten, load_params
from pipeline.prepare import PREPARED, SUMMARY
from pipeline.stage import run_stage

MODEL = Path("models/vae.keras")
# Checkpoints of an unfinished training; not a DVC output, so `dvc repro` does not wipe them.
BACKUP = Path("checkpoints/train")
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


def batches(images: np.ndarray, batch_size: int, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """uint8 images `(n, 28, 28)` -> float32 batches `(b, 28, 28, 1)` in [0, 1].

    The data set stays uint8, a quarter of its float size; each batch is gathered and scaled
    when it is needed. With `shuffle_seed`, every pass draws a new seeded order.
    """
    stored = tf.constant(images)
    indices = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        indices = indices.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)

    def gather(rows):
        return tf.cast(tf.gather(stored, rows), tf.float32)[..., None] / 255.0  # as data.to_model_input

    return indices.batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


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
        callbacks=[DivergenceGuard(), *callbacks],
        verbose=verbose,
    )
    return vae, history.history


def save_model(vae: VAE, path: Path) -> None:
    """Save atomically: a reader never sees a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.keras")
    try:
        vae.save(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def training_key(params: Params, data_digest: str) -> str:
    """What a checkpoint belongs to: the settings that shape training, and the data."""
    sections = {
        k: v for k, v in flatten(params).items() if k.split(".")[0] in ("base", "data", "model", "train")
    }
    return hashlib.sha256(json.dumps([sections, data_digest], sort_keys=True).encode()).hexdigest()


def run_to_resume(key: str) -> str | None:
    """The MLflow run of an interrupted training with the same key, if its checkpoint is here."""
    state = BACKUP / "run.json"
    saved = json.loads(state.read_text()) if state.is_file() else {}
    if saved.get("key") == key:
        return saved["run_id"]
    shutil.rmtree(BACKUP, ignore_errors=True)  # another configuration's leftovers
    return None


def read_history(path: Path) -> dict[str, list[float]]:
    """Keras CSVLogger's file as columns, one row per epoch (a re-run epoch's last row wins)."""
    with open(path, newline="") as handle:
        rows = {int(row["epoch"]): row for row in csv.DictReader(handle)}
    ordered = [rows[epoch] for epoch in sorted(rows)]
    return {key: [float(row[key]) for row in ordered] for key in ordered[0]}


def write_history(history: dict[str, list[float]], path: Path) -> None:
    """Columns back to CSV, with `epoch` first as `dvc plots` reads it."""
    keys = ["epoch", *sorted(k for k in history if k != "epoch")]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for i in range(len(history["epoch"])):
            writer.writerow([int(history["epoch"][i]), *(history[k][i] for k in keys[1:])])


def log_and_register(vae: VAE, registered_model: str) -> dict[str, str]:
    """Log the model into the active run as a new version of `registered_model`; what was made."""
    info = logged_model.log_model(inference_model(vae), registered_model_name=registered_model)
    version = str(info.registered_model_version)
    git = runs.git_state(Path.cwd())
    tags = {"run_id": info.run_id, **{k: git[k] for k in ("git.commit", "git.dirty") if k in git}}
    registry.tag_version(registered_model, version, tags)
    return {"model_id": info.model_id, "registered_model": registered_model, "model_version": version}


def main() -> None:
    params = load_params()
    splits = data.load_prepared(PREPARED)
    summary = json.loads(SUMMARY.read_text())
    train_images, val_images = splits["train"].images, splits["val"].images  # uint8 (n, 28, 28)
    key = training_key(params, summary["digest"])
    resume_run_id = run_to_resume(key)

    with runs.training_run(params, resume_run_id=resume_run_id) as run:
        BACKUP.mkdir(parents=True, exist_ok=True)
        (BACKUP / "run.json").write_text(json.dumps({"key": key, "run_id": run.info.run_id}) + "\n")
        if resume_run_id is None:
            runs.log_dataset(train_images, digest=summary["digest"], source=str(PREPARED))
            already_logged = frozenset()
        else:
            already_logged = runs.logged_steps(resume_run_id)
            print(f"train: resuming run {resume_run_id} from its last checkpoint")
        # Order matters at each epoch's end: history and metrics first, then the checkpoint.
        vae, _ = fit_vae(
            train_images,
            val_images,
            model=params.model,
            train=params.train,
            seed=params.base.seed,
            callbacks=[
                keras.callbacks.CSVLogger(str(BACKUP / "history.csv"), append=True),
                callbacks.EpochMetrics(skip_steps=already_logged),
                # Two checkpoints: a kill while one is being written leaves the other to resume from.
                keras.callbacks.BackupAndRestore(str(BACKUP / "state"), double_checkpoint=True),
            ],
        )
        history = read_history(BACKUP / "history.csv")
        final = {name: values[-1] for name, values in history.items() if name != "epoch"}
        if not all(math.isfinite(v) for v in final.values()):
            raise TrainingError(f"training diverged: final metrics {final}; lower train.learning_rate")
        final = {"loss": final["loss"], "val_loss": final["val_loss"]}  # the rest is in history.csv
        save_model(vae, MODEL)
        runs.record_model_hash(MODEL)
        for path in (HISTORY, METRICS):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_history(history, HISTORY)
        METRICS.write_text(json.dumps(final, indent=2) + "\n")
        model = log_and_register(vae, params.base.tracking.registered_model)
        runs.write_run_file(run, model)
    shutil.rmtree(BACKUP)
    print(
        f"train: val_loss {final['val_loss']:.3f} nats; model {model['registered_model']} "
        f"version {model['model_version']} (models:/{model['model_id']})\n"
        f"train: run {store.run_link(run)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main)
