"""The life of an MLflow run: start or resume, log params and files, end with an honest status."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.configuration import code_digest, config_id, from_logged, settings
from pipeline.environment import LOCK, environment_tags, file_sha256, git_state
from pipeline.params import Params, flatten
from pipeline.paths import RUN_FILE
from pipeline.redact import redact_text, redact_values
from pipeline.tracking.store import TrackingError, configure, owner_tags, server_gone, store_uri


@contextlib.contextmanager
def honest_status() -> Iterator[None]:
    """End the active run KILLED on an interrupt, FAILED on an error, FINISHED otherwise.

    If the error is the tracking server going away, the run cannot be ended there: it stays
    RUNNING, to be resumed (or marked FAILED by the next stage on this host), and the error
    becomes one line that names the server.
    """
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except (MlflowException, OSError) as exc:  # OSError: requests' errors, from artifact uploads
        if not server_gone():
            mlflow.end_run("FAILED")
            raise
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # not minutes of retries on the way out
        with contextlib.suppress(MlflowException):
            mlflow.end_run("FAILED")  # leaves the run, whether or not the server took it
        raise TrackingError(
            f"the tracking server {store_uri()} stopped answering "
            f"({redact_text(str(exc).splitlines()[0])[:200]}); "
            "run the stage again once it is back: training resumes from its checkpoint"
        ) from None
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


CONFIG_TAG = "pipeline.config_id"  # shared by replicates: the UI's runs list groups by it
DATA_TAG = "pipeline.data_digest"  # the prepared data's digest, which the configuration id holds
DIVERGED_TAG = "pipeline.diverged"  # a training run whose loss became NaN or infinite
CODE_TAG = "pipeline.code_digest"  # the code that shapes the numbers: `configuration.code_digest`


def configuration_tags(config: str, data_digest: str) -> dict[str, str]:
    """What groups a run with its replicates, and what it was computed from."""
    return {CONFIG_TAG: config, DATA_TAG: data_digest[:16], CODE_TAG: code_digest()}


# How a run's name writes a setting that differs from the defaults; any other key by its last part.
SHORT = {
    "model.latent_dim": "latent {}",
    "train.learning_rate": "lr {:.2g}",
    "train.epochs": "{} epochs",
    "train.schedule": "{}",
    "train.warmup_epochs": "warm-up {:g}",
    "train.final_lr_fraction": "to {:g} of lr",
    "train.kl_warmup_epochs": "KL warm-up {:g}",
    "train.free_bits": "free bits {:g}",
    "train.kl_weight": "beta {:g}",
    "train.early_stopping": "early stopping {}",
    "model.dense_units": "dense {}",
    "data.train_size": "{} train images",
    "data.val_size": "{} val images",
    "data.test_size": "{} test images",
    "base.seed": "split seed {}",
}
NAME_ORDER = ("model.", "train.", "data.", "evaluate.", "base.")


def run_name(params: Params, exp_name: str | None = None) -> str:
    """What tells runs apart in the UI's list: latent dim and learning rate, every other setting
    that differs from the defaults (`settings`, shortened), the seed, and the DVC
    experiment: `latent 2, lr 0.018, 6 epochs, cosine, warm-up 1, seed 42`."""
    differ = sorted(
        settings(params).items(),
        key=lambda item: next(i for i, prefix in enumerate(NAME_ORDER) if item[0].startswith(prefix)),
    )
    parts = [SHORT["model.latent_dim"].format(params.model.latent_dim)]
    parts.append(SHORT["train.learning_rate"].format(params.train.learning_rate))
    for key, value in differ:
        if key not in ("model.latent_dim", "train.learning_rate"):
            parts.append(SHORT.get(key, key.rsplit(".", 1)[-1].replace("_", " ") + " {}").format(value))
    name = ", ".join([*parts, f"seed {params.train.seed}"])
    return f"{name} · {exp_name}" if exp_name else name


def run_description(params: Params, how: str, git: dict[str, str], config: str) -> str:
    """The run's description (MLflow's `mlflow.note.content`), in Markdown."""
    commit = git.get("git.commit", "")[:10]
    where = f" at commit `{commit}`" + (
        ", with uncommitted changes" if git.get("git.dirty") == "true" else ""
    )
    model, train, data = params.model, params.train, params.data
    images = f"{data.train_size:,}" if data.train_size else f"all but {data.val_size:,} of the 60,000"
    return (
        f"{how}{where if commit else ''}.\n\n"
        f"Latent dim {model.latent_dim}; {train.optimizer} at learning rate {train.learning_rate:g}, "
        f"batch {train.batch_size}, {train.epochs} epochs on {images} training images; "
        f"training seed {train.seed}, split seed {params.base.seed}; "
        f"configuration `{config}` (tag `{CONFIG_TAG}`)."
    )


@contextlib.contextmanager
def training_run(
    params: Params,
    *,
    config: str,
    data_digest: str,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A run for one trained model, new or (given its id) continued after an interruption;
    `config` is its `configuration.config_id`.

    Ends FINISHED on success, FAILED on an error and KILLED on an interrupt.
    """
    experiment_id = configure(params.base.tracking.experiment)
    watch_system(params.base.tracking.system_metrics_interval)
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=True)
        mlflow.set_tags({**(tags or {}), **owner_tags(), "pipeline.resumed": "true"})
    else:
        git = git_state(Path.cwd())
        exp_name = os.environ.get("DVC_EXP_NAME")
        how = f"`dvc exp run`, experiment `{exp_name}`" if exp_name else "`python -m pipeline.train`"
        run_tags = {
            **(tags or {}),
            **git,
            **environment_tags(),
            **owner_tags(),
            "pipeline.stage": "train",
            **configuration_tags(config, data_digest),
            "mlflow.note.content": run_description(params, how, git, config),
        }
        if exp_name:
            run_tags["dvc.exp_name"] = exp_name
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(params, exp_name),
            tags=run_tags,
            log_system_metrics=True,
        )
    with honest_status():
        if resume_run_id is None:
            mlflow.log_params(loggable(params))
            log_lock()
        else:  # settings outside training (e.g. plot.*) may have changed meanwhile
            log_stage_params(loggable(params))
        yield run


def watch_system(interval: float) -> None:
    """Sample MLflow's system metrics (CPU, memory, disk; GPU where one is) every `interval` seconds.

    Each sample is logged as taken, so a short run still gets a curve.
    """
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not a line per start and stop
    mlflow.set_system_metrics_sampling_interval(interval)
    mlflow.set_system_metrics_samples_before_logging(1)


def log_lock(lock: Path = LOCK) -> None:
    """The lock file the run's packages were installed from, as the artifact `environment/uv.lock`."""
    if lock.is_file():
        mlflow.log_artifact(str(lock), "environment")


def loggable(params: Params) -> dict[str, Any]:
    """Flattened params fit to log: a password in any URL (say `tune.storage`) replaced by `***`."""
    return redact_values(flatten(params))


def log_dataset(x_train: np.ndarray, *, digest: str, source: str) -> None:
    """The training images as the run's input, named by the prepared data's digest."""
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path fits both.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(x_train, source=source, name="fashion-mnist", digest=digest[:16])
    mlflow.log_input(dataset, context="training")


def write_run_file(run: mlflow.ActiveRun, model: dict[str, str], path: Path = RUN_FILE) -> None:
    """Record the run and its logged model as a DVC output, so later stages and people find them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, **model}
    path.write_text(json.dumps(info, indent=2) + "\n")


def read_run_file(path: Path = RUN_FILE) -> dict[str, str]:
    """What `write_run_file` recorded."""
    return json.loads(path.read_text())


@contextlib.contextmanager
def resumed_run(params: Params, stage: str, path: Path = RUN_FILE) -> Iterator[mlflow.ActiveRun]:
    """Re-open the training run named in `path` for a later stage.

    Ends FINISHED on success, FAILED on an error and KILLED on an interrupt.
    """
    run_id = read_run_file(path)["run_id"]
    configure(params.base.tracking.experiment)
    run = mlflow.start_run(run_id=run_id)
    with honest_status():
        mlflow.set_tags({**owner_tags(), f"pipeline.{stage}": "done"})
        yield run


def log_stage_params(params: dict[str, Any]) -> None:
    """Log a later stage's settings; one changed since the run began is kept as a tag.

    MLflow params are immutable, and re-plotting the same model with new settings must not fail.
    """
    params = redact_values(params)
    recorded = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in recorded}
    changed = {f"changed.{k}": str(v) for k, v in params.items() if k in recorded and recorded[k] != str(v)}
    if fresh:
        mlflow.log_params(fresh)
    if changed:
        mlflow.set_tags(changed)


def logged_steps(run_id: str, key: str = "loss/train") -> frozenset[int]:
    """The epochs a run already holds for a metric."""
    return frozenset(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def record_model_hash(path: Path) -> None:
    """Tag the active run with the saved model's SHA-256."""
    mlflow.set_tag("model.sha256", file_sha256(path))


def check_model_hash(path: Path) -> None:
    """Refuse a model file that is not the one the active run trained."""
    recorded = mlflow.get_run(mlflow.active_run().info.run_id).data.tags.get("model.sha256")
    actual = file_sha256(path)
    if recorded != actual:
        raise TrackingError(
            f"{path}: SHA-256 {actual} differs from {recorded} recorded by the training run; "
            "re-run `dvc repro` to train it again"
        )


def log_metrics(metrics: dict[str, float], model_id: str | None = None) -> None:
    """Scalar metrics into the active run; with `model_id`, against that logged model too, so that
    the experiment's Models tab shows and sorts by them."""
    mlflow.log_metrics(metrics, model_id=model_id)


def mark_diverged() -> None:
    """Tag the active training run as diverged: a failure of its settings, not of the machine."""
    mlflow.set_tag(DIVERGED_TAG, "true")


def log_figure(figure, name: str) -> None:
    """A matplotlib figure as a run artifact under `figures/`."""
    mlflow.log_figure(figure, f"figures/{name}")


def retag_runs(experiment_id: str, registered_model: str) -> Counter:
    """Set every trained model's and trial's configuration tag from its logged params and data
    digest, as `configuration.config_id` computes it now, and its registered versions' likewise;
    return counts of what was done."""
    client = mlflow.MlflowClient()
    done: Counter = Counter()
    configs = {}
    for run in all_runs(client, experiment_id):
        tags = run.data.tags
        if tags.get("pipeline.stage") not in ("train", "trial"):
            continue
        inputs = run.inputs.dataset_inputs if run.inputs else []
        digest = tags.get(DATA_TAG) or next((i.dataset.digest for i in inputs), None)
        if digest is None:
            done["runs without a data digest, left as they were"] += 1
            continue
        config = config_id(from_logged(run.data.params), digest)
        configs[run.info.run_id] = config
        if tags.get(CONFIG_TAG) == config and tags.get(DATA_TAG) == digest:
            done["runs already current"] += 1
            continue
        client.set_tag(run.info.run_id, CONFIG_TAG, config)
        client.set_tag(run.info.run_id, DATA_TAG, digest)
        done["runs re-tagged"] += 1
    for version in client.search_model_versions(f"name = '{registered_model}'"):
        config = configs.get(version.tags.get("run_id") or version.run_id)
        if config is not None and version.tags.get("config_id") != config:
            client.set_model_version_tag(registered_model, str(version.version), "config_id", config)
            done["model versions re-tagged"] += 1
    return done


def all_runs(
    client: mlflow.MlflowClient,
    experiment_id: str,
    filter_string: str = "",
    order_by: list[str] | None = None,
) -> Iterator[mlflow.entities.Run]:
    """Every run of an experiment that `filter_string` admits, in `order_by`'s order, page by page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=1000, order_by=order_by, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return
