"""The Keras callbacks that log each epoch's metrics, and pictures every few epochs, into the
active MLflow run."""

from __future__ import annotations

import io
import re

import keras
import mlflow
import numpy as np
from PIL import Image

from pipeline import charts
from pipeline.data import to_model_input
from pipeline.training import LATENT_PROBE  # the scatter shows the images whose latent use is measured

ZOOM = 3  # each pixel of an image sheet as ZOOM x ZOOM: MLflow shows images at their own size


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


class EpochImages(keras.callbacks.Callback):
    """Pictures of the model as it learns, logged to the active run with MLflow's `log_image` by
    key and step (the epoch, counted as the metrics count it), so that the run's charts show each
    with a step slider and MLflow's compare view shows them across runs:

    - `reconstructions`: fixed validation images (top row) above their reconstructions from the
      latent mean;
    - `prior_samples`: fixed draws from the prior N(0, I), decoded;
    - `latent_scatter`, for a 2-D latent: the means of validation images, by class.

    Logged at the first epoch, every `every`-th, and the last (of `epochs`, or the one early
    stopping ended at); a picture an interrupted
    attempt logged (`logged_images`: key and step) is not logged again. Images are logged
    synchronously, before the checkpoint, as the metrics are.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        every: int,
        epochs: int,
        originals: int,
        prior_grid: int,
        seed: int,
        logged: frozenset[tuple[str, int]] = frozenset(),
    ):
        super().__init__()
        self.originals = to_model_input(images[:originals])
        self.probe, self.labels = to_model_input(images[:LATENT_PROBE]), labels[:LATENT_PROBE]
        self.every, self.epochs, self.prior_grid, self.seed = every, epochs, prior_grid, seed
        self.logged = logged

    def on_train_begin(self, logs: dict | None = None) -> None:
        latent_dim = self.model.encoder.output_shape[0][-1]
        rng = np.random.default_rng(self.seed)
        self.z = rng.standard_normal((self.prior_grid**2, latent_dim)).astype(np.float32)

    def due(self, epoch: int) -> bool:
        """Whether pictures are logged at the end of this epoch (0-based)."""
        return epoch == 0 or (epoch + 1) % self.every == 0 or epoch == self.epochs - 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.last = epoch
        if self.due(epoch):
            self.log(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Early stopping ends a run before its last planned epoch: its last epoch's pictures
        (of the model kept, whose weights are back by now) are logged all the same."""
        if getattr(self, "last", None) is not None and not self.due(self.last):
            self.log(self.last)

    def log(self, epoch: int) -> None:
        for key, draw in (
            ("reconstructions", self.reconstructions),
            ("prior_samples", self.prior_samples),
            ("latent_scatter", self.latent_scatter),
        ):
            if (key, epoch) not in self.logged and (image := draw(epoch)) is not None:
                mlflow.log_image(image, key=key, step=epoch, synchronous=True)

    def decoded(self, z) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.ops.sigmoid(self.model.decoder(z, training=False)))

    def reconstructions(self, epoch: int) -> np.ndarray:
        mu, _ = self.model.encoder(self.originals, training=False)
        pairs = np.concatenate([self.originals, self.decoded(mu)])
        return sheet(charts.tile(pairs, 2, len(self.originals)))

    def prior_samples(self, epoch: int) -> np.ndarray:
        return sheet(charts.tile(self.decoded(self.z), self.prior_grid, self.prior_grid))

    def latent_scatter(self, epoch: int) -> Image.Image | None:
        if self.z.shape[1] != 2:
            return None
        mu = keras.ops.convert_to_numpy(self.model.encoder(self.probe, training=False)[0])
        title = f"Validation latent means after epoch {epoch + 1} (step {epoch})"
        figure = charts.latent_scatter(mu, self.labels, title=title, size=(6, 4.5))
        return Image.open(io.BytesIO(charts.figure_png(figure, dpi=72)))


def sheet(pixels: np.ndarray) -> np.ndarray:
    """Bernoulli means in [0, 1] as an 8-bit grayscale image, each pixel ZOOM x ZOOM."""
    grey = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(np.repeat(grey, ZOOM, axis=0), ZOOM, axis=1)


IMAGE_FILE = re.compile(r"^images/(?P<key>[^+]+)\+step\+(?P<step>\d+)\+")


def logged_images(run_id: str) -> frozenset[tuple[str, int]]:
    """The pictures a run has logged (`EpochImages`), as (key, step), from the files MLflow's
    `log_image` writes: `images/<key>+step+<step>+timestamp+...`."""
    files = mlflow.MlflowClient().list_artifacts(run_id, "images")
    return frozenset((found["key"], int(found["step"])) for f in files if (found := IMAGE_FILE.match(f.path)))
