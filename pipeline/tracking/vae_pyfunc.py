"""The logged model's `python_function` loader: reconstruct, encode or generate, on request.

MLflow copies this file into every logged model (`code/vae_pyfunc.py`) and imports it as
`vae_pyfunc` wherever the model is loaded or served, so it must stand alone: it imports
Keras, NumPy and MLflow, never the `pipeline` package. The Keras model it loads holds
only built-in layers and is read with `safe_mode=True`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

MODES = ("reconstruct", "encode", "generate")
IMAGE_SHAPE = (28, 28, 1)
KERAS_FILE = "model.keras"  # where mlflow.keras.save_model puts it, under the model's data/


def _bad_input(message: str) -> Exception:
    # An MlflowException with this code is answered 400 by `mlflow models serve`, not 500.
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def as_float_array(data: Any, what: str) -> np.ndarray:
    """Numbers as float32, or a 400-class error naming what was expected."""
    if hasattr(data, "to_numpy"):  # a pandas DataFrame, as some clients send
        data = data.to_numpy()
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        got = getattr(data, "dtype", type(data).__name__)
        raise _bad_input(f"expected {what} as numbers, got {got}") from None
    if not np.all(np.isfinite(array)):
        raise _bad_input(f"expected {what} as finite numbers")
    return array


def as_images(data: Any) -> np.ndarray:
    """`(n, 28, 28)` or `(n, 28, 28, 1)` pixels in [0, 1] -> float32 `(n, 28, 28, 1)`."""
    what = "images of shape (n, 28, 28, 1) or (n, 28, 28) with pixels in [0, 1]"
    images = as_float_array(data, what)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or len(images) == 0:
        raise _bad_input(f"expected {what}, got shape {images.shape}")
    if images.min() < 0 or images.max() > 1:
        raise _bad_input(f"expected {what}, got values from {images.min():g} to {images.max():g}")
    return images


def as_latents(data: Any, latent_dim: int) -> np.ndarray:
    """Latent points `(n, latent_dim)` as float32."""
    what = f"latent points of shape (n, {latent_dim})"
    z = as_float_array(data, what)
    if z.ndim == 1 and latent_dim > 1 and len(z) == latent_dim:
        z = z[None, :]  # one point
    if z.ndim != 2 or z.shape[1] != latent_dim or len(z) == 0:
        raise _bad_input(f"expected {what}, got shape {z.shape}")
    return z


class VAEModel:
    """The pyfunc model: `predict(data, params={"mode": ...})`, reconstruct by default."""

    def __init__(self, keras_model):
        self.keras_model = keras_model  # image -> sigmoid(decode(mean))
        self.encoder = keras_model.get_layer("encoder")
        self.decoder = keras_model.get_layer("decoder")
        self.latent_dim = int(self.decoder.input_shape[-1])

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Reconstructions `(n, 28, 28, 1)`; or, by `params["mode"]`, the latent mean and
        log-variance of each image (`encode`) or images decoded from latent points (`generate`)."""
        mode = (params or {}).get("mode") or "reconstruct"
        if mode not in MODES:
            raise _bad_input(f"params.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if mode == "generate":
            logits = self.decoder.predict(as_latents(data, self.latent_dim), verbose=0)
            return keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
        images = as_images(data)
        if mode == "encode":
            mean, log_variance = self.encoder.predict(images, verbose=0)
            return {"mean": mean, "log_variance": log_variance}
        return self.keras_model.predict(images, verbose=0)


def _load_pyfunc(path: str) -> VAEModel:
    """MLflow's entry point: `path` is the model's `data/` folder."""
    model = keras.saving.load_model(os.path.join(path, KERAS_FILE), safe_mode=True, compile=False)
    return VAEModel(model)
