"""What the tests share that is not a fixture: running commands as a user would, project copies,
servers, free ports, the small real config."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone holds that the pipeline needs; everything else is produced by it.
PROJECT_FILES = (
    "pipeline",
    "params.yaml",
    "dvc.yaml",
    "sweep/dvc.yaml",
    "uv.lock",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
)


def run_env() -> dict[str, str]:
    """The environment for a pipeline subprocess: this venv first, no outside tracking server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(
        DVC_NO_ANALYTICS="1",
        # The MLflow servers the tests start run no server jobs, as scripts/team_server.sh's;
        # otherwise each starts seven job-runner processes that compete with training.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
    )  # fmt: skip
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command as a user would, `env` added; on failure show what it printed."""
    result = subprocess.run(
        args, check=False, cwd=cwd, env={**run_env(), **(env or {})}, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def store(repo: Path):
    """The MLflow client of a project copy's own store, opened as the stages open it: after any
    process that is creating the store's tables at that moment."""
    import mlflow

    from pipeline.tracking.store import STORE_DIR, creation_lock, default_store_uri

    (repo / STORE_DIR).mkdir(exist_ok=True)  # as `store.configure` does, for the lock file
    with creation_lock(repo):  # the client opens the store, and creates its tables, at once
        return mlflow.MlflowClient(tracking_uri=default_store_uri(repo))


@contextlib.contextmanager
def serving(
    command: list[str],
    ready_url: str,
    what: str,
    cwd: Path | None = None,
    timeout: float = 90,
    env: dict[str, str] | None = None,
):
    """Start a server, wait until `ready_url` answers, and stop it afterwards, even on failure."""
    server = subprocess.Popen(
        command,
        cwd=cwd,
        env={**run_env(), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, f"{what} did not start"
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_repo(target: Path, overrides: dict[str, dict]) -> Path:
    """A git repository holding a copy of the project with `params.yaml` sections overridden."""
    from ruamel.yaml import YAML

    for name in PROJECT_FILES:
        source, dest = ROOT / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest)
    yaml = YAML()  # round-trip, so comments and layout survive as a user's edit would
    params = yaml.load(target / "params.yaml")
    for section, values in overrides.items():
        params[section].update(values)
    yaml.dump(params, target / "params.yaml")
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "project"], target)
    return target


def set_param(repo: Path, section: str, key: str, value) -> None:
    """Edit one key of a project copy's `params.yaml`, as a user would (comments kept)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load(repo / "params.yaml")
    params[section][key] = value
    yaml.dump(params, repo / "params.yaml")


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` ran, from what it printed."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def overrides(**settings) -> list[str]:
    """`-S key=value` arguments; `train__epochs=2` stands for `train.epochs=2`."""
    return [arg for key, value in settings.items() for arg in ("-S", f"{key.replace('__', '.')}={value}")]


def journal_study(repo: Path, study_name: str):
    """A study in the project copy's default journal file."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(repo / "optuna/journal.log")))
    return optuna.load_study(study_name=study_name, storage=storage)


# Headless on a machine with no network beyond loopback: no background connections, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SMALL = {
    "data": {"train_size": 2000, "val_size": 500, "test_size": 500},
    "train": {"epochs": 2},
    "evaluate": {"iw_samples": 4, "knn_neighbors": 3},
    "plot": {"grid_size": 5, "n_reconstructions": 4, "prior_grid": 3, "dpi": 50},
}

# What a run's name says of SMALL: every setting that differs from the defaults, shortened.
SMALL_NAME = "2 epochs, 500 val images, 2000 train images, 500 test images, iw samples 4, knn neighbors 3"


def run_queue(repo: Path, jobs: int, timeout: float = 1200) -> list[str]:
    """`dvc queue start -j jobs`, as the README says, then wait for the queue to empty; return the
    statuses of the experiments it ran."""
    run(["dvc", "queue", "start", "-j", str(jobs)], repo)
    deadline = time.monotonic() + timeout
    while True:
        rows = [line.split() for line in run(["dvc", "queue", "status"], repo).stdout.splitlines()]
        statuses = [row[-1] for row in rows if row and row[-1] in ("Queued", "Running", "Success", "Failed")]
        if not {"Queued", "Running"} & set(statuses):
            return statuses
        assert time.monotonic() < deadline, f"the queue is still running after {timeout} s"
        time.sleep(5)


def config_of(repo: Path) -> str:
    """The configuration id of the project's params and prepared data, as `train` tags its run."""
    from pipeline.configuration import config_id
    from pipeline.params import load_params

    digest = json.loads((repo / "data/prepared/summary.json").read_text())["digest"]
    return config_id(load_params(repo / "params.yaml"), digest)
