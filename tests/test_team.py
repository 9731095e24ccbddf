"""A team on several machines, each stood for by a clone: the services of `scripts/team_server.sh`
(PostgreSQL, an MLflow server on it, the Optuna database) on loopback, a bare git origin and a
local-directory DVC remote. Also: no password reaches any store, file or console, and a
tracking server that goes away mid-training."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.components import require
from tests.helpers import ROOT, SMALL, free_port, make_repo, overrides, ran_stages, run

# One worker runs them all (pytest-xdist's loadgroup), so the module's project is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

# No confirming trials: these tests count the searched ones. 2 epochs: the default space
# searches a 1-epoch warm-up, which must be shorter than a trial.
QUICK = overrides(
    train__epochs=2, data__train_size=1000, data__val_size=500, tune__pruner="none", tune__confirm_top=0
)
SENTINEL = "Sentinel-pw-5f1c9e"  # a password that must never be written or shown anywhere


@pytest.fixture(scope="module")
def team() -> dict[str, str]:
    """`scripts/team_server.sh start` on free loopback ports; yields its settings and exports."""
    require("postgresql")
    folder = Path(tempfile.mkdtemp(prefix="team-", dir="/tmp"))  # a place user postgres can reach
    settings = {
        "TEAM_DIR": str(folder),
        "TEAM_PG_PORT": str(free_port()),
        "TEAM_MLFLOW_PORT": str(free_port()),
        "PYTHON": str(ROOT / ".venv/bin/python") if (ROOT / ".venv").is_dir() else "python",
    }
    script = [str(ROOT / "scripts/team_server.sh")]
    try:
        started = run(["bash", *script, "start"], ROOT, env=settings).stdout
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", started, re.MULTILINE))
        assert set(exports) == {"MLFLOW_TRACKING_URI", "PGPASSFILE", "OPTUNA_STORAGE"}
        yield {**settings, **exports}
    finally:
        run(["bash", *script, "stop"], ROOT, env=settings, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def as_team(team: dict[str, str], **extra: str) -> dict[str, str]:
    """What each teammate exports, as the script printed it."""
    return {key: team[key] for key in ("MLFLOW_TRACKING_URI", "PGPASSFILE")} | extra


def server(team: dict[str, str]) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=team["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def clones(tmp_path_factory, team, official_dir) -> tuple[Path, Path]:
    """Two clones of one bare origin, sharing a DVC remote: A has run `dvc repro` and pushed."""
    folder = tmp_path_factory.mktemp("machines")
    a = make_repo(folder / "a", SMALL)
    run(["git", "init", "-q", "--bare", str(folder / "origin.git")], folder)
    run(["git", "remote", "add", "origin", str(folder / "origin.git")], a)
    run(["dvc", "remote", "add", "-d", "team", str(folder / "dvc-remote")], a)  # as the README says
    env = as_team(team)
    run(["dvc", "repro"], a, env=env)
    run(["dvc", "push"], a, env=env)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "trained on machine A"], a)
    run(["git", "push", "-q", "origin", "HEAD:main"], a)
    b = folder / "b"
    run(["git", "clone", "-q", "-b", "main", str(folder / "origin.git"), str(b)], folder)
    run(["dvc", "pull"], b, env=env)
    return a, b


def test_second_clone_pulls_and_reruns_only_what_changed(clones, team):
    a, b = clones
    env = as_team(team)
    # The default pipeline, which A ran (this copy's sweep/dvc.yaml has never run anywhere).
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], b, env=env).stdout
    assert (b / "models/vae.keras").read_bytes() == (a / "models/vae.keras").read_bytes()
    assert ran_stages(run(["dvc", "repro"], b, env=env).stdout) == []

    params = (b / "params.yaml").read_text()
    (b / "params.yaml").write_text(params.replace("dpi: 50", "dpi: 60"))
    assert ran_stages(run(["dvc", "repro"], b, env=env).stdout) == ["plot"]
    run_id = json.loads((a / "outputs/mlflow_run.json").read_text())["run_id"]
    tracked = server(team).get_run(run_id)  # machine A's run, on the shared server
    assert tracked.info.status == "FINISHED" and tracked.data.tags["changed.plot.dpi"] == "60"
    assert tracked.data.tags["pipeline.checkout"] == str(b)  # the last to touch it
    figures = [f.path for f in server(team).list_artifacts(run_id, "figures")]
    assert "figures/latent_grid.png" in figures


def test_experiment_shared_through_git(clones, team):
    a, b = clones
    env = as_team(team)
    run(["dvc", "exp", "run", "-S", "model.latent_dim=3", "--name", "from-a"], a, env=env)
    run(["dvc", "exp", "push", "origin", "from-a"], a, env=env)
    run(["dvc", "exp", "pull", "origin", "from-a"], b, env=env)
    assert "from-a" in run(["dvc", "exp", "show", "--csv"], b, env=env).stdout


def test_two_machines_share_one_study(clones, team, tmp_path, processes):
    a, b = clones
    env = as_team(team)
    command = ["python", "-m", "pipeline.tune", *QUICK, "--storage", team["OPTUNA_STORAGE"]]
    command += ["--study-name", "team", "--n-trials", "4"]
    launchers = [
        processes(command, clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for clone in (a, b)
    ]
    outputs = [launcher.communicate(timeout=600)[0].decode() for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGPASSFILE", team["PGPASSFILE"])
        study = optuna.load_study(study_name="team", storage=team["OPTUNA_STORAGE"])
        trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)  # the total, exactly
    experiment = server(team).get_experiment_by_name("fashion-mnist-vae").experiment_id
    (parent,) = server(team).search_runs([experiment], "tags.`optuna.study_name` = 'team'")
    children = server(team).search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [t.number for t in trials]
    by_clone = {str(a): set(), str(b): set()}
    for child in children:
        by_clone[child.data.tags["pipeline.checkout"]].add(child.info.run_id)
    assert all(by_clone.values()), "each machine ran at least one trial"

    report = tmp_path / "study.html"
    compare = ["python", "-m", "pipeline.compare", "--study", "team", "--output", str(report)]
    run(compare, b, env=env)
    shown = report.read_text()
    assert all(any(run_id in shown for run_id in ids) for ids in by_clone.values())


def as_postgres(team: dict[str, str], tool: str, *args: str) -> bytes:
    """A PostgreSQL client tool as the cluster's superuser, over the script's private socket."""
    owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    binary = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))[-1]
    sockets = Path(team["TEAM_DIR"]) / "postgres/run"
    command = [*owner, str(binary), "-h", str(sockets), "-p", team["TEAM_PG_PORT"], "-U", "postgres", *args]
    return subprocess.run(command, check=True, capture_output=True).stdout


def everything_written(team: dict[str, str], *folders: Path) -> bytes:
    """Every byte the pipeline and the services hold: both databases, artifacts, outputs, logs."""
    dumps = [as_postgres(team, "pg_dump", db) for db in ("mlflow", "optuna", "leakcheck")]
    files = [
        path.read_bytes()
        for folder in (Path(team["TEAM_DIR"]), *folders)
        for path in folder.rglob("*")
        if path.is_file() and "postgres" not in path.relative_to(folder).parts[:1]
    ]
    return b"\n".join(dumps + files)


def test_no_password_reaches_any_store_file_or_console(team, tmp_path, official_dir):
    for sql in (f"CREATE ROLE leaker LOGIN PASSWORD '{SENTINEL}'", "CREATE DATABASE leakcheck OWNER leaker"):
        as_postgres(team, "psql", "-c", sql)
    storage = f"postgresql+psycopg2://leaker:{SENTINEL}@127.0.0.1:{team['TEAM_PG_PORT']}/leakcheck"
    tracking = team["MLFLOW_TRACKING_URI"].replace("http://", f"http://someone:{SENTINEL}@")

    repo = make_repo(tmp_path / "repo", SMALL)
    env = {"MLFLOW_TRACKING_URI": tracking}  # the password only in the URLs, no PGPASSFILE
    swept = run(
        ["python", "-m", "pipeline.tune", *QUICK, "--storage", storage, "--n-trials", "2"], repo, env=env
    )
    run(["python", "-m", "pipeline.prepare"], repo, env=env)
    trained = run(["python", "-m", "pipeline.train"], repo, env=env)
    console = "\n".join([swept.stdout, swept.stderr, trained.stdout, trained.stderr])
    assert "leaker:***@" in swept.stdout  # named, with the password hidden
    assert f"someone:***@127.0.0.1:{team['TEAM_MLFLOW_PORT']}" in trained.stdout  # the printed link

    (parent,) = server(team).search_runs(
        [server(team).get_experiment_by_name("fashion-mnist-vae").experiment_id],
        "tags.`optuna.study_name` = 'vae-search'",
    )
    assert parent.data.params["optuna.storage"] == storage.replace(SENTINEL, "***")
    assert SENTINEL not in console
    assert SENTINEL.encode() not in everything_written(team, repo)


def test_params_file_refuses_a_password(tmp_path, official_dir):
    repo = make_repo(tmp_path / "repo", {"tune": {"storage": f"postgresql://optuna:{SENTINEL}@db/optuna"}})
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "tune.storage: the URL holds a password" in error and SENTINEL not in result.stderr + result.stdout
    assert not (repo / "data/prepared").exists()


def test_training_fails_in_one_line_when_the_server_goes_and_resumes_when_it_is_back(
    team, tmp_path, official_dir, processes
):
    """Slow: trains until the server is killed, then again until it is back and the run ends."""
    repo = make_repo(tmp_path / "repo", {**SMALL, "train": {"epochs": 30}})
    env = as_team(team, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")  # fail at once, not after minutes of retries
    run(["python", "-m", "pipeline.prepare"], repo, env=env)
    training = processes(["python", "-m", "pipeline.train"], repo, env=env, stderr=subprocess.PIPE, text=True)
    state = repo / "checkpoints/train/run.json"
    deadline = time.monotonic() + 300
    while not (
        state.is_file()
        and len(server(team).get_metric_history(json.loads(state.read_text())["run_id"], "loss/train")) >= 2
    ):
        assert time.monotonic() < deadline and training.poll() is None, "training did not log two epochs"
        time.sleep(0.5)
    run_id = json.loads(state.read_text())["run_id"]
    pid_file = Path(team["TEAM_DIR"]) / "mlflow.pid"
    os.killpg(int(pid_file.read_text()), 9)  # the tracking server goes away, at once
    stderr = training.communicate(timeout=300)[1]
    assert training.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the tracking server {team['MLFLOW_TRACKING_URI']} stopped answering"), (
        last
    )
    assert (repo / "checkpoints/train/state").is_dir()

    run(["bash", str(ROOT / "scripts/team_server.sh"), "start"], ROOT, env=team)  # it is back
    output = run(["dvc", "repro"], repo, env=env).stdout
    assert f"resuming run {run_id}" in output
    tracked = server(team).get_run(run_id)
    assert tracked.info.status == "FINISHED" and "test_loss" in tracked.data.metrics
    steps = [m.step for m in server(team).get_metric_history(run_id, "loss/train")]
    assert sorted(steps) == list(range(30))  # every epoch logged once
