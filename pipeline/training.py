"""Fitting a fresh VAE: the one training loop that the `train` stage and the sweep's trials share."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from pipeline.data import to_model_input
from pipeline.model import VAE, Batches, active_units, batches, build_vae, kl_per_unit
from pipeline.params import Model, PipelineError, Train
from pipeline.stage import STOPPED, interrupt_at_safe_points

LATENT_PROBE = 1000  # validation images on which each epoch's latent use is measured
PASSES_PER_EPOCH = 2  # passes over the training data that Keras' `fit` begins each epoch: see ResumeExactly


class TrainingError(PipelineError):
    """Training produced a model that must not be evaluated."""


class DivergenceGuard(keras.callbacks.Callback):
    """Fail at the first NaN or infinite batch loss (Keras' `TerminateOnNaN` only stops quietly)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(f"the loss became {float(loss)} at batch {batch}; lower train.learning_rate")


class StopOnSignal(keras.callbacks.Callback):
    """Raise the interrupt of SIGTERM or Ctrl-C at the next batch's end, a point outside Keras'
    and TensorFlow's own code, where `fit_vae` defers it (see `stage.interrupt`)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if STOPPED.is_set():
            raise KeyboardInterrupt("signal")

    on_test_batch_end = on_train_batch_end
    on_epoch_end = on_train_batch_end


class LearningRateInLogs(keras.callbacks.Callback):
    """Add the optimizer's learning rate at each epoch's end to the logs, so history and MLflow show it."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class LeverState(keras.callbacks.Callback):
    """Carry Keras' plateau and early-stopping state across a kill, as the checkpoint carries the rest.

    `BackupAndRestore` restores the weights, the optimizer (its step, so a cosine schedule goes on
    where it stopped, and its learning rate, which the plateau callback lowers) and the epoch;
    Keras resets the callbacks' own counters and best weights at every `fit`. After each epoch,
    before the checkpoint, this writes them to `folder`; a resumed fit puts back those of the epoch
    before the one it restarts at.
    """

    FIELDS = ("wait", "best", "best_epoch", "cooldown_counter")

    def __init__(self, folder: Path, levers: Sequence[keras.callbacks.Callback]):
        super().__init__()
        self.folder, self.levers = folder, list(levers)
        self.file = folder / "levers.json"

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.saved = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.first = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self.first:
            return
        self.first = False
        for lever, state in zip(self.levers, self.saved.get(str(epoch - 1), []), strict=False):
            for field, value in state.items():
                setattr(lever, field, value)
            if getattr(lever, "restore_best_weights", False) and lever.best is not None:
                with np.load(self.folder / f"best-{lever.best_epoch}.npz") as weights:
                    lever.best_weights = [weights[f"w{i}"] for i in range(len(weights.files))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        states = [
            {f: _plain(getattr(lever, f)) for f in self.FIELDS if hasattr(lever, f)} for lever in self.levers
        ]
        for lever in self.levers:
            if getattr(lever, "best_weights", None) is not None and lever.best_epoch == epoch:
                arrays = {f"w{i}": w for i, w in enumerate(lever.best_weights)}
                np.savez(self.folder / f"best-{epoch}.npz", **arrays)
        self.saved[str(epoch)] = states
        _write_json(self.file, self.saved)
        # A resume starts after this epoch, or after one of the two before if a checkpoint broke.
        recent = [s for e in range(epoch - 2, epoch + 1) for s in self.saved.get(str(e), [])]
        keep = {f"best-{s['best_epoch']}.npz" for s in recent if "best_epoch" in s}
        for old in self.folder.glob("best-*.npz"):
            if old.name not in keep:
                old.unlink()


class LatentUse(keras.callbacks.Callback):
    """At each epoch's end, how the latent space is used on a fixed validation subset: the active
    units (as `evaluate` counts them) and the KL of each unit, as `val_active_units` and
    `val_kl_unit_NN`, so that `history.csv`, MLflow and the KL-per-unit figure show when units die."""

    def __init__(self, images: np.ndarray, threshold: float):
        super().__init__()
        self.images = to_model_input(images[:LATENT_PROBE])
        self.threshold = threshold

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        mu, logvar = (np.asarray(a) for a in self.model.encoder(self.images, training=False))
        logs = logs if logs is not None else {}
        logs["val_active_units"] = float(active_units(mu, self.threshold))
        for unit, kl in enumerate(np.asarray(kl_per_unit(mu, logvar))):
            logs[f"val_kl_unit_{unit:02d}"] = float(kl)


class ResumeExactly(keras.callbacks.Callback):
    """A resumed fit goes on as an uninterrupted one would have: the same data order and the same
    sampling noise at every epoch, so a killed and resumed training gives the same numbers.

    `Batches` (every backend but TensorFlow) draws each epoch's order from its number, which
    this sets as the epoch begins. TensorFlow's `batches` reshuffles on every pass over the
    data set, from its seed and the number of passes begun so far, and a resumed fit's data set
    is new: before its first epoch, this begins the passes of the epochs already done, which
    reads no data. Keras' `fit` begins two passes an epoch on a data set of known length (one at
    the epoch's start, whose order the epoch uses, and one at its end that the next epoch's
    start replaces), so that is what is made again; the fault test checks that a resumed run's
    numbers equal an uninterrupted one's.

    The sampling layer's `SeedGenerator` state is not among the weights Keras' `BackupAndRestore`
    saves: this writes it to `state_dir/sampling.json` at each epoch's end, before the checkpoint
    (so it comes before `BackupAndRestore` in the callbacks), and puts back the one of the epoch
    resumed after.
    """

    def __init__(self, dataset, state_dir: Path | None):
        super().__init__()
        self.dataset = dataset
        self.path = state_dir / "sampling.json" if state_dir is not None else None
        self.started = False

    def _saved(self) -> dict[str, list[int]]:
        return json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if isinstance(self.dataset, Batches):
            self.dataset.epoch = epoch
        if self.started:
            return
        self.started = True  # `epoch` is the first this fit runs: after a resume, not 0
        if not isinstance(self.dataset, Batches):
            for _ in range(PASSES_PER_EPOCH * epoch):
                iter(self.dataset)
        if epoch and self.path is not None:
            self.model.sampling.seed_generator.state.assign(self._saved()[str(epoch - 1)])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.path is not None:
            state = [int(v) for v in np.asarray(self.model.sampling.seed_generator.state)]
            # A resume starts after this epoch, or after one of the two before if a checkpoint broke.
            saved = {k: v for k, v in self._saved().items() if int(k) >= epoch - 2}
            _write_json(self.path, {**saved, str(epoch): state})


def _write_json(path: Path, data) -> None:
    """Replace a JSON file whole: a kill mid-write leaves the old one."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def _plain(value):
    """A callback's counter as JSON holds it."""
    return None if value is None else value.item() if hasattr(value, "item") else value


def learning_rate(
    train: Train, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: a number, or Keras' cosine decay (with its linear warm-up) over
    the run's steps; a constant rate after a warm-up is a cosine that decays to itself (`alpha` 1)."""
    warmup = round(train.warmup_epochs * steps_per_epoch)
    if train.schedule != "cosine" and not warmup:
        return train.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else train.learning_rate,
        decay_steps=train.epochs * steps_per_epoch - warmup,
        alpha=train.final_lr_fraction if train.schedule == "cosine" else 1.0,
        warmup_target=train.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def levers(train: Train) -> list[keras.callbacks.Callback]:
    """Keras' callbacks for the plateau schedule and for early stopping, as `train` asks."""
    chosen: list[keras.callbacks.Callback] = []
    if train.schedule == "plateau":
        chosen.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=train.plateau_factor, patience=train.plateau_patience
            )
        )
    if train.early_stopping:
        chosen.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=train.early_stopping, restore_best_weights=True
            )
        )
    return chosen


def fit_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    model: Model,
    train: Train,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    state_dir: Path | None = None,
    active_threshold: float | None = None,
    verbose: int = 2,
) -> tuple[VAE, dict[str, list[float]]]:
    """Train a fresh VAE on uint8 images; return it and its per-epoch history (train and `val_` metrics).

    `train`'s schedule and early stopping act here, before `callbacks` see each epoch (so the
    learning rate reaches their logs); with `state_dir`, their state survives a kill there.
    With `active_threshold`, each epoch also records the latent space's use (`LatentUse`).
    """
    with interrupt_at_safe_points():  # the stop's interrupt is raised at a batch's end, not mid-trace
        keras.utils.set_random_seed(seed)
        tensorflow = keras.backend.backend() == "tensorflow"
        if tensorflow:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()  # same seed, same machine: same numbers
        steps_per_epoch = math.ceil(len(train_images) / train.batch_size)
        vae = build_vae(
            model,
            train,
            seed,
            learning_rate=learning_rate(train, steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
        )
        chosen = levers(train)
        if chosen and state_dir is not None:
            chosen.append(LeverState(state_dir, chosen))
        if train.schedule != "constant" or train.warmup_epochs:  # the defaults' history keeps its columns
            chosen.insert(0, LearningRateInLogs())
        if active_threshold is not None:  # before `callbacks`, so that their logs hold its figures
            chosen.insert(0, LatentUse(val_images, active_threshold))
        shuffled = batches(train_images, train.batch_size, shuffle_seed=seed)
        if tensorflow:
            # Distributed here, as Keras would do it inside `fit`, so that `ResumeExactly`
            # advances the very data set that `fit` iterates.
            shuffled = tf.distribute.get_strategy().experimental_distribute_dataset(shuffled)
        history = vae.fit(
            shuffled,
            epochs=train.epochs,
            validation_data=batches(val_images, train.batch_size),
            shuffle=False,  # `batches` shuffles, seeded
            callbacks=[
                DivergenceGuard(),
                StopOnSignal(),
                *chosen,
                ResumeExactly(shuffled, state_dir),
                *callbacks,
            ],
            verbose=verbose,
        )
    return vae, history.history
