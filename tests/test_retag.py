"""`python -m pipeline.retag` gives runs recorded under an older configuration id today's id."""

from __future__ import annotations

import sys

import mlflow
import numpy as np

from pipeline.configuration import config_id
from pipeline.params import Params, flatten
from tests.helpers import ROOT, run

EXPERIMENT = "fashion-mnist-vae"
MODEL = "fashion-mnist-vae"
OLDER_KEYS = ("train.schedule", "train.warmup_epochs", "train.early_stopping")  # added since


def test_retag_groups_old_runs_with_new_ones_from_their_logged_params(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    logged = {k: v for k, v in flatten(Params()).items() if k not in OLDER_KEYS and not k.startswith("tune.")}
    logged["train.seed"] = 7
    with mlflow.start_run(
        experiment_id=experiment, tags={"pipeline.stage": "train", "pipeline.config_id": "old"}
    ):
        mlflow.log_params(logged)
        images = np.zeros((3, 28, 28), np.uint8)
        mlflow.log_input(
            mlflow.data.from_numpy(images, name="fashion-mnist", digest="c" * 16), context="training"
        )
        trained = mlflow.active_run().info.run_id
    with mlflow.start_run(
        experiment_id=experiment, tags={"pipeline.stage": "trial", "pipeline.config_id": "old"}
    ):
        mlflow.log_params(logged)  # no data digest recorded: it cannot be re-tagged
    client.create_registered_model(MODEL)
    (tmp_path / "model").mkdir()
    client.create_model_version(
        MODEL, (tmp_path / "model").as_uri(), run_id=trained, tags={"config_id": "old", "run_id": trained}
    )

    printed = run([sys.executable, "-m", "pipeline.retag"], ROOT, env={"MLFLOW_TRACKING_URI": uri}).stdout
    expected = config_id(Params(), "c" * 16)  # the seed aside, the defaults
    assert client.get_run(trained).data.tags["pipeline.config_id"] == expected
    assert client.get_model_version(MODEL, "1").tags["config_id"] == expected
    assert "1 runs re-tagged" in printed and "1 model versions re-tagged" in printed
    assert "1 runs without a data digest, left as they were" in printed

    again = run([sys.executable, "-m", "pipeline.retag"], ROOT, env={"MLFLOW_TRACKING_URI": uri}).stdout
    assert "1 runs already current" in again and "re-tagged" not in again
