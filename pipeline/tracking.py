"""MLflow, and nothing else in the package calls it: store location, runs, logging."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException

from pipeline.params import PACKAGE_ROOT, Params, flatten

STORE_DIR = "mlruns"
RUN_FILE = Path("outputs/mlflow_run.json")


def repo_root(package_root: Path = PACKAGE_ROOT) -> Path:
    """The repository whose `mlruns/` holds the store.

    `dvc exp run --temp` and `--queue` run in a copy under `<repo>/.dvc/tmp/exps/`;
    their runs belong in the original repository's store, not the copy's.
    """
    parts = package_root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return package_root


def default_store_uri(root: Path) -> str:
    """SQLite inside `<root>/mlruns/`: the URI `mlflow ui --backend-store-uri` takes."""
    return f"sqlite:///{root / STORE_DIR / 'mlflow.db'}"


def configure(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI` or the local store; return the experiment id."""
    root = root or repo_root()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = None
    if not uri:
        (root / STORE_DIR).mkdir(exist_ok=True)
        uri = default_store_uri(root)
        artifact_location = (root / STORE_DIR / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:  # another process created it first
        return mlflow.get_experiment_by_name(experiment).experiment_id


def git_state(root: Path) -> dict[str, str]:
    """The commit checked out and whether the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}


@contextlib.contextmanager
def training_run(params: Params) -> Iterator[mlflow.ActiveRun]:
    """A new run for one trained model: params, git state and data set logged up front.

    An exception inside the block ends the run FAILED; success ends it FINISHED.
    """
    experiment_id = configure(params.base.tracking.experiment)
    tags = {**git_state(Path.cwd()), "pipeline.stage": "train"}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params(flatten(params))
        yield run


def log_dataset(x_train: np.ndarray, *, digest: str, source: str) -> None:
    """The training images as the run's input, named by the prepared data's digest."""
    dataset = mlflow.data.from_numpy(x_train, source=source, name="fashion-mnist", digest=digest[:16])
    mlflow.log_input(dataset, context="training")


def write_run_file(run: mlflow.ActiveRun, path: Path = RUN_FILE) -> None:
    """Record the run id as a DVC output, so later stages and people find the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    path.write_text(json.dumps(info, indent=2) + "\n")


@contextlib.contextmanager
def resumed_run(params: Params, stage: str, path: Path = RUN_FILE) -> Iterator[mlflow.ActiveRun]:
    """Re-open the training run named in `path` for a later stage.

    Ends FINISHED on success and FAILED if the stage raises.
    """
    run_id = json.loads(path.read_text())["run_id"]
    configure(params.base.tracking.experiment)
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag(f"pipeline.{stage}", "done")
        yield run


def log_stage_params(params: dict[str, Any]) -> None:
    """Log a later stage's settings; one changed since the run began is kept as a tag.

    MLflow params are immutable, and re-plotting the same model with new settings must not fail.
    """
    recorded = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in recorded}
    changed = {f"changed.{k}": str(v) for k, v in params.items() if k in recorded and recorded[k] != str(v)}
    if fresh:
        mlflow.log_params(fresh)
    if changed:
        mlflow.set_tags(changed)


class EpochMetrics(mlflow.keras.MlflowCallback):
    """MLflow's Keras callback, logging only per epoch with the epoch as step.

    Its `on_test_end` would re-log the validation metrics at step 0 after every
    epoch; Keras already hands them to `on_epoch_end` as `val_*`.
    """

    def on_test_end(self, logs=None) -> None:
        pass


def log_model(vae, example: np.ndarray) -> None:
    """The VAE in MLflow's Keras flavour with an input/output signature."""
    signature = mlflow.models.infer_signature(example, vae.predict(example, verbose=0))
    # Inference of requirements reloads the model without this package and fails; name them.
    requirements = [f"{name}=={version(name)}" for name in ("keras", "tensorflow", "fashion-vae-pipeline")]
    mlflow.keras.log_model(vae, name="model", signature=signature, pip_requirements=requirements)


def log_metrics(metrics: dict[str, float]) -> None:
    """Scalar metrics into the active run."""
    mlflow.log_metrics(metrics)


def log_figure(figure, name: str) -> None:
    """A matplotlib figure as a run artifact under `figures/`."""
    mlflow.log_figure(figure, f"figures/{name}")


# Optuna trial states as MLflow run statuses: a pruned trial was stopped on purpose.
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def study_run(params: Params, *, study_name: str, storage: str, run_id: str | None) -> str:
    """Create (or re-open, given `run_id`) the study's parent run; return its id, left RUNNING."""
    experiment_id = configure(params.base.tracking.experiment)
    client = mlflow.MlflowClient()
    if run_id is None:
        tags = {**git_state(Path.cwd()), "pipeline.stage": "tune", "optuna.study_name": study_name}
        run = client.create_run(experiment_id, run_name=f"study {study_name}", tags=tags)
        run_id = run.info.run_id
        values = [
            mlflow.entities.Param(k, str(v))
            for k, v in {"optuna.storage": storage, **flatten(params)}.items()
        ]
        for start in range(0, len(values), 100):  # the most log_batch takes at once
            client.log_batch(run_id, params=values[start : start + 100])
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


def end_study_run(run_id: str, *, summary: dict[str, Any], figures: dict[str, Any], status: str) -> None:
    """Record the study's outcome, and Optuna's figures, on its parent run."""
    client = mlflow.MlflowClient()
    numbers = {
        k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in numbers.items()])
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"figures/{name}")
    client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def trial_run(params: Params, *, parent_run_id: str, trial_number: int) -> Iterator[dict[str, Any]]:
    """A child run for one Optuna trial with the full effective params.

    The block sets `outcome["value"]`; the run's status and `optuna.state` tag follow
    how the block ends: normally (COMPLETE), by `optuna.TrialPruned` (PRUNED), or otherwise (FAIL).
    """
    experiment_id = configure(params.base.tracking.experiment)
    tags = {"mlflow.parentRunId": parent_run_id, "optuna.trial_number": str(trial_number)}
    outcome: dict[str, Any] = {}
    state = "FAIL"
    mlflow.start_run(
        experiment_id=experiment_id, run_name=f"trial {trial_number}", parent_run_id=parent_run_id, tags=tags
    )
    try:
        mlflow.log_params(flatten(params))
        yield outcome
        state = "COMPLETE"
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    finally:
        mlflow.set_tag("optuna.state", state)
        if "value" in outcome:
            mlflow.log_metric("objective_val_loss", outcome["value"])
        mlflow.end_run(status=TRIAL_STATUS[state])
