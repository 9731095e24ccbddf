"""MLflow, and nothing else in the package calls it: store location, runs, logging."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from filelock import FileLock
from mlflow.exceptions import MlflowException

from pipeline.params import PACKAGE_ROOT, Params, PipelineError, flatten
from pipeline.redact import redact, redact_text, redact_values, without_credentials

STORE_DIR = "mlruns"
RUN_FILE = Path("outputs/mlflow_run.json")
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
# MLflow 3.17's UI opens in its GenAI view unless told; this opens the runs and the model registry.
UI_VIEW = "workflowType=machine_learning"


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


def store_uri() -> str:
    """The tracking URI in use, fit to print."""
    return redact(mlflow.get_tracking_uri())


def ui_link(route: str) -> str:
    """A link into the MLflow UI of the store in use: the tracking server, or a local `mlflow ui`."""
    uri = mlflow.get_tracking_uri()
    base = redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/{route}?{UI_VIEW}"


def run_link(run: mlflow.entities.Run | mlflow.ActiveRun | str) -> str:
    """The link to a run's page (given the run, or its id)."""
    run = mlflow.get_run(run) if isinstance(run, str) else run
    return ui_link(f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}")


def ui_hint() -> str:
    """How to open the links printed for a local store; nothing for a tracking server."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return ""
    return f" (after `mlflow ui --backend-store-uri {uri}`)"


class TrackingError(PipelineError):
    """The tracking store cannot be used; the message names it."""


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not after MLflow's retries, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{without_credentials(uri).rstrip('/')}/health", timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact(uri)}: the tracking server does not answer ({exc})"
        ) from None


def configure(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI` or the local store; return the experiment id.

    Also marks runs left RUNNING by processes of this host that have died.
    """
    root = root or repo_root()
    # MLflow prints its own "View run" links on a server: without `workflowType`, and with any
    # password the tracking URI holds. The stages print theirs (`run_link`) instead.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = _experiment_id(experiment, artifact_location=None)
    else:
        (root / STORE_DIR).mkdir(exist_ok=True)
        mlflow.set_tracking_uri(default_store_uri(root))
        # Processes starting at once on a fresh store: one creates its tables and the experiment.
        with FileLock(root / STORE_DIR / ".init.lock"):
            experiment_id = _experiment_id(experiment, (root / STORE_DIR / "artifacts").as_uri())
    mark_dead_runs(experiment_id)
    return experiment_id


def _experiment_id(name: str, artifact_location: str | None) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def owner_tags() -> dict[str, str]:
    """Which process runs this run, so a run it leaves RUNNING can be found after it dies,
    and from which checkout: on a shared server, which teammate's clone it came from."""
    return {
        "pipeline.host": socket.gethostname(),
        "pipeline.pid": str(os.getpid()),
        "pipeline.checkout": str(repo_root()),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def mark_dead_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs whose owning process on this host no longer exists."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    marked = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("pipeline.host") != host or not tags.get("pipeline.pid", "").isdigit():
            continue
        pid = int(tags["pipeline.pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        client.set_tag(run.info.run_id, "pipeline.died", f"process {pid} ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    return marked


def server_gone() -> bool:
    """Whether the tracking URI names a server that no longer answers."""
    try:
        check_reachable(mlflow.get_tracking_uri(), timeout=3.0)
    except TrackingError:
        return True
    return False


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


def run_name(params: Params, exp_name: str | None = None) -> str:
    """What tells runs apart in the UI's list: the DVC experiment, latent dim and learning rate."""
    settings = f"latent {params.model.latent_dim}, lr {params.train.learning_rate:.2g}"
    return f"{settings} · {exp_name}" if exp_name else settings


def run_description(params: Params, how: str, git: dict[str, str]) -> str:
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
        f"seed {params.base.seed}."
    )


@contextlib.contextmanager
def training_run(params: Params, resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run for one trained model, new or (given its id) continued after an interruption.

    Ends FINISHED on success, FAILED on an error and KILLED on an interrupt.
    """
    experiment_id = configure(params.base.tracking.experiment)
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id)
        mlflow.set_tags({**owner_tags(), "pipeline.resumed": "true"})
    else:
        git = git_state(Path.cwd())
        exp_name = os.environ.get("DVC_EXP_NAME")
        how = f"`dvc exp run`, experiment `{exp_name}`" if exp_name else "`python -m pipeline.train`"
        tags = {
            **git,
            **owner_tags(),
            "pipeline.stage": "train",
            "mlflow.note.content": run_description(params, how, git),
        }
        if exp_name:
            tags["dvc.exp_name"] = exp_name
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(params, exp_name), tags=tags)
    with honest_status():
        if resume_run_id is None:
            mlflow.log_params(loggable(params))
        else:  # settings outside training (e.g. plot.*) may have changed meanwhile
            log_stage_params(loggable(params))
        yield run


def loggable(params: Params) -> dict[str, Any]:
    """Flattened params fit to log: a password in any URL (say `tune.storage`) replaced by `***`."""
    return redact_values(flatten(params))


def log_dataset(x_train: np.ndarray, *, digest: str, source: str) -> None:
    """The training images as the run's input, named by the prepared data's digest."""
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


def grouped(name: str) -> str:
    """Keras' `loss` and `val_loss` -> `loss/train` and `loss/val`.

    MLflow's UI puts metrics that share a prefix before `/` in one section, so each
    quantity's train and validation curves sit side by side.
    """
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


def logged_steps(run_id: str, key: str = "loss/train") -> frozenset[int]:
    """The epochs a run already holds for a metric."""
    return frozenset(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
        tags = {
            **git_state(Path.cwd()),
            **owner_tags(),
            "pipeline.stage": "tune",
            "optuna.study_name": study_name,
        }
        tags["mlflow.note.content"] = (
            f"Optuna study `{study_name}` ({redact(storage)}): each child run is one trial. "
            f"Compare its best trials with `python -m pipeline.compare --study {study_name}`."
        )
        run = client.create_run(experiment_id, run_name=f"study {study_name}", tags=tags)
        run_id = run.info.run_id
        values = [
            mlflow.entities.Param(k, str(v))
            for k, v in {"optuna.storage": redact(storage), **loggable(params)}.items()
        ]
        for start in range(0, len(values), 100):  # the most log_batch takes at once
            client.log_batch(run_id, params=values[start : start + 100])
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in owner_tags().items():
            client.set_tag(run_id, key, value)
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
    from optuna import TrialPruned  # here, so the stages that never prune do not import Optuna

    experiment_id = configure(params.base.tracking.experiment)
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "optuna.trial_number": str(trial_number),
        "pipeline.stage": "trial",
        "mlflow.note.content": run_description(params, f"Optuna trial {trial_number}", {}),
        **owner_tags(),
    }
    outcome: dict[str, Any] = {}
    state = "FAIL"
    name = f"trial {trial_number}: {run_name(params)}"
    mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id, tags=tags)
    try:
        mlflow.log_params(loggable(params))
        yield outcome
        state = "COMPLETE"
    except TrialPruned:
        state = "PRUNED"
        raise
    finally:
        mlflow.set_tag("optuna.state", state)
        if "value" in outcome:
            mlflow.log_metric("objective_val_loss", outcome["value"])
        mlflow.end_run(status=TRIAL_STATUS[state])


# The comparison report: which runs, what they hold, and the small run that carries the report.
RUN_ID = re.compile(r"[0-9a-f]{32}")


def _literal(value: str) -> str:
    """A quoted string for MLflow's search filter."""
    return "'" + value.replace("'", "\\'") + "'"


def runs_named(experiment_id: str, refs: Sequence[str]) -> list[mlflow.entities.Run]:
    """Runs by id or by DVC experiment name (the `dvc.exp_name` tag), in the order given."""
    client = mlflow.MlflowClient()
    found = []
    for ref in refs:
        if RUN_ID.fullmatch(ref):
            try:
                found.append(client.get_run(ref))
                continue
            except MlflowException:
                pass
        matches = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`dvc.exp_name` = {_literal(ref)}",
            order_by=["attributes.start_time DESC"],
        )
        if not matches:
            raise TrackingError(f"{ref!r} is neither a run id nor a DVC experiment name in the MLflow store")
        found.append(matches[0])  # the latest, when an experiment name was re-used
    return found


def best_runs(experiment_id: str, n: int) -> list[mlflow.entities.Run]:
    """The `n` finished trained models with the lowest `test_loss`."""
    return mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string="tags.`pipeline.stage` = 'train' and attributes.status = 'FINISHED'",
        order_by=["metrics.test_loss ASC"],
        max_results=n,
    )


def best_trials(experiment_id: str, study_name: str, n: int) -> list[mlflow.entities.Run]:
    """The `n` complete trials of a study with the lowest objective."""
    client = mlflow.MlflowClient()
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`optuna.study_name` = {_literal(study_name)}",
    )
    if not parents:
        raise TrackingError(f"no Optuna study named {study_name!r} in the MLflow store")
    trials = [  # MLflow's filter has no IN for tags: one search per parent (a resumed study has one)
        trial
        for parent in parents
        for trial in client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = {_literal(parent.info.run_id)} "
            "and tags.`optuna.state` = 'COMPLETE'",
            order_by=["metrics.objective_val_loss ASC"],
            max_results=n,
        )
    ]
    return sorted(trials, key=lambda run: run.data.metrics["objective_val_loss"])[:n]


def metric_history(run_id: str, key: str) -> list[float]:
    """A metric's values in step order."""
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_figures(run_id: str) -> dict[str, bytes]:
    """The PNG figures the `plot` stage logged, by file name; none for a sweep trial."""
    client = mlflow.MlflowClient()
    names = [Path(a.path).name for a in client.list_artifacts(run_id, "figures") if a.path.endswith(".png")]
    if not names:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        local = Path(client.download_artifacts(run_id, "figures", folder))
        return {name: (local / name).read_bytes() for name in names}


def log_comparison(experiment_id: str, report: Path, runs: Sequence[mlflow.entities.Run], how: str) -> str:
    """A small FINISHED run that holds the report as an artifact; return its id."""
    listing = "\n".join(f"- `{run.info.run_id}` {run.info.run_name}" for run in runs)
    tags = {
        **git_state(Path.cwd()),
        "pipeline.stage": "compare",
        "compare.run_ids": ",".join(run.info.run_id for run in runs),
        "mlflow.note.content": f"Comparison report of {len(runs)} runs ({how}); open `{report.name}` "
        f"under Artifacts.\n\n{listing}",
    }
    names = " vs ".join(run.info.run_name for run in runs)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"compare: {names}"[:250], tags=tags) as run:
        mlflow.log_artifact(str(report))
    return run.info.run_id
