"""The Keras callback that logs each epoch's metrics into the active MLflow run."""

from __future__ import annotations

import keras
import mlflow


def grouped(name: str) -> str:
    """Keras' `loss` and `val_loss` -> `loss/train` and `loss/val`.

    MLflow's UI puts metrics that share a prefix before `/` in one section, so each
    quantity's train and validation curves sit side by side.
    """
    if name == "learning_rate":  # the schedule's, one per epoch: neither split's
        return name
    return f"{name[4:]}/val" if name.startswith("val_") else f"{name}/train"


class EpochMetrics(keras.callbacks.Callback):
    """Log each epoch's metrics to the active run, with the epoch as step, as `grouped` names.

    A plain Keras callback, not MLflow's `MlflowCallback`: that one runs under MLflow's
    autologging guard, which turns a failed write (the tracking server gone) into a
    warning and lets training go on with its epochs unrecorded. Here the error stops
    training, so the checkpoint and the run stay in step. Epochs are logged synchronously,
    so a killed process loses none, and `skip_steps` (epochs an interrupted attempt
    already logged) are not logged twice. The model summary is logged as a text artifact.
    """

    def __init__(self, skip_steps: frozenset[int] = frozenset()):
        super().__init__()
        self.skip_steps = skip_steps

    def on_train_begin(self, logs: dict | None = None) -> None:
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        mlflow.log_text("\n".join(lines), "model_summary.txt")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs and epoch not in self.skip_steps:
            mlflow.log_metrics({grouped(k): v for k, v in logs.items()}, step=epoch, synchronous=True)
