"""Where the MLflow store is, connecting to it, links into its UI, and runs left behind by dead processes."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from pipeline.params import PACKAGE_ROOT, PipelineError
from pipeline.redact import redact, without_credentials

STORE_DIR = "mlruns"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
# MLflow 3.17's UI opens in its GenAI view unless told; this opens the runs and the model registry.
UI_VIEW = "workflowType=machine_learning"
DIED_TAG = "pipeline.died"  # a run marked FAILED because its process ended without closing it


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


def creation_lock(root: Path) -> FileLock:
    """Held by whoever may be the first to open the local store: the first creates its tables,
    and two creating them at once collide (`table ... already exists`)."""
    return FileLock(root / STORE_DIR / ".init.lock")


def is_server(uri: str) -> bool:
    """Whether a tracking URI names a tracking server, rather than a local store."""
    return uri.startswith(("http://", "https://"))


def store_uri() -> str:
    """The tracking URI in use, fit to print."""
    return redact(mlflow.get_tracking_uri())


def ui_link(route: str) -> str:
    """A link into the MLflow UI of the store in use: the tracking server, or a local `mlflow ui`."""
    uri = mlflow.get_tracking_uri()
    base = redact(uri).rstrip("/") if is_server(uri) else LOCAL_UI
    return f"{base}/#/{route}?{UI_VIEW}"


def run_link(run: mlflow.entities.Run | mlflow.ActiveRun | str) -> str:
    """The link to a run's page (given the run, or its id)."""
    run = mlflow.get_run(run) if isinstance(run, str) else run
    return ui_link(f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}")


def ui_hint() -> str:
    """How to open the links printed for a local store; nothing for a tracking server."""
    uri = mlflow.get_tracking_uri()
    if is_server(uri):
        return ""
    return f" (after `mlflow ui --backend-store-uri {uri}`)"


class TrackingError(PipelineError):
    """The tracking store cannot be used; the message names it."""


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not after MLflow's retries, when a tracking server does not answer."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{without_credentials(uri).rstrip('/')}/health", timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact(uri)}: the tracking server does not answer ({exc})"
        ) from None


def server_gone() -> bool:
    """Whether the tracking URI names a server that no longer answers."""
    try:
        check_reachable(mlflow.get_tracking_uri(), timeout=3.0)
    except TrackingError:
        return True
    return False


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
        with creation_lock(root):
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
        client.set_tag(run.info.run_id, DIED_TAG, f"process {pid} ended without closing the run")
        client.set_terminated(run.info.run_id, status="FAILED")
        marked.append(run.info.run_id)
    return marked
