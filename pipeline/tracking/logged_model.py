"""The trained VAE as an MLflow model: a Keras flavor and a pyfunc that reconstructs, encodes or generates.

`Model.log` takes this module as the "flavor" whose `save_model` writes the model folder:
MLflow's own Keras flavor (so `mlflow.keras.load_model` works), then a `python_function`
flavor whose loader is the standalone `vae_pyfunc.py` shipped in the model's `code/`,
so `mlflow.pyfunc.load_model` and `mlflow models serve` need nothing of this package.
"""

from __future__ import annotations

import logging
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from pipeline.environment import git_state
from pipeline.params import Params
from pipeline.tracking import registry, vae_pyfunc

# The model needs no more than these; `fashion-vae-pipeline` is not on PyPI and not needed.
REQUIREMENTS = ("keras", "tensorflow")


def signature() -> ModelSignature:
    """Reconstructions out; the `mode` parameter picks encode or generate instead.

    No input schema: MLflow would enforce one shape for every mode, and `generate` takes
    latent points, not images. `vae_pyfunc` checks the input of each mode and names the
    shape it expects.
    """
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *vae_pyfunc.IMAGE_SHAPE), "reconstruction")]),
        params=ParamSchema([ParamSpec("mode", "string", vae_pyfunc.MODES[0])]),
    )


def save_model(path: str, mlflow_model: Model, *, keras_model, pip_requirements: list[str]) -> None:
    """Write the model folder: MLflow's Keras flavor, then our pyfunc loader beside it."""
    flavor_logger = logging.getLogger("mlflow.keras.save")
    level = flavor_logger.level
    flavor_logger.setLevel(logging.ERROR)  # it warns of no signature; ours is set below
    try:
        mlflow.keras.save_model(
            keras_model, path, mlflow_model=mlflow_model, pip_requirements=pip_requirements, signature=None
        )
    finally:
        flavor_logger.setLevel(level)
    code = Path(path) / "code"
    code.mkdir()
    shutil.copy(vae_pyfunc.__file__, code / "vae_pyfunc.py")
    mlflow_model.signature = signature()
    mlflow_model.metadata = {
        "modes": {
            "reconstruct": "images (n, 28, 28, 1) or (n, 28, 28) in [0, 1] -> reconstructions (n, 28, 28, 1)",
            "encode": "images -> {mean, log_variance}, each (n, latent_dim)",
            "generate": "latent points (n, latent_dim) -> images (n, 28, 28, 1)",
        },
        "latent_dim": int(keras_model.get_layer("decoder").input_shape[-1]),
    }
    # Replaces the Keras flavor's own python_function entry, which would ignore `mode`.
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="vae_pyfunc",
        data="data",
        code="code",
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(str(Path(path) / "MLmodel"))


def model_name(params: Params, config: str) -> str:
    """The LoggedModel's name, which tells models apart in the experiment's Models tab:
    latent dim, training seed and configuration id (MLflow allows no `.` in it, so no learning rate)."""
    return f"vae-latent{params.model.latent_dim}-seed{params.train.seed}-{config}"


def log_model(keras_model, name: str, registered_model_name: str | None = None) -> ModelInfo:
    """Log into the active run, registering a new version of `registered_model_name` if given."""
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        keras_model=keras_model,
        pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
        registered_model_name=registered_model_name,
    )


def log_and_register(keras_model, params: Params, config: str, val_loss: float) -> dict[str, str]:
    """Log into the active run (MLflow copies the run's params to the logged model) as a new version
    of the registered model; tag the version with its run, commit and configuration; return what
    was made."""
    registered_model = params.base.tracking.registered_model
    info = log_model(keras_model, model_name(params, config), registered_model_name=registered_model)
    version = str(info.registered_model_version)
    git = git_state(Path.cwd())
    tags = {
        "run_id": info.run_id,
        registry.CONFIG: config,
        registry.SEED: str(params.train.seed),
        registry.VAL_LOSS: repr(val_loss),
        **{k: git[k] for k in ("git.commit", "git.dirty") if k in git},
    }
    registry.tag_version(registered_model, version, tags)
    return {"model_id": info.model_id, "registered_model": registered_model, "model_version": version}
