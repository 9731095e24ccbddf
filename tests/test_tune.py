"""Optuna sweeps through the real command: tracked trials, resume, pruning, NaN, parallel workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.storages import JournalStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend

from pipeline import environment
from pipeline.figures import FIGURES
from pipeline.params import read_yaml
from tests.components import POSTGRESQL, require
from tests.helpers import free_port, journal_study, make_repo, overrides, run, serving, set_param, store

# One worker runs them all (pytest-xdist's loadgroup), so the module's project is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tune")]
# A search small enough for seconds per trial: 1,000 images, 2 epochs; one worker, so that
# trials run in order, unless a test asks for more; no confirming trials, unless a test asks.
QUICK = overrides(
    train__epochs=2, data__train_size=1000, data__val_size=500, tune__workers=1, tune__confirm_top=0
)
STATES = ("COMPLETE", "PRUNED", "FAIL")


def tune(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["python", "-m", "pipeline.tune", *QUICK, *args], repo, check=check)


def child_runs(repo: Path, study: optuna.Study) -> list:
    client = store(repo)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state.name in STATES]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, official_dir) -> Path:
    return make_repo(tmp_path_factory.mktemp("sweep"), {})


def test_search_tracks_every_trial_and_resumes(repo):
    result = tune(repo, "--n-trials", "3", "--study-name", "main", "-S", "tune.pruner=none")
    assert "3 complete, 0 pruned, 0 failed" in result.stdout

    study = journal_study(repo, "main")
    assert len(finished(study)) == 3
    client = store(repo)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/contour_latent_dim_learning_rate.png"} <= figures

    children = child_runs(repo, study)
    assert len(children) == 3
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in study.trials:
        tracked = by_number[trial.number]
        assert tracked.info.status == "FINISHED" and tracked.data.tags["optuna.state"] == "COMPLETE"
        assert tracked.data.params["model.latent_dim"] == str(trial.params["model.latent_dim"])
        assert tracked.data.params["train.epochs"] == "2"  # -S beats the default budget
        assert tracked.data.params["data.train_size"] == "1000"
        assert tracked.data.metrics["objective_val_loss"] == pytest.approx(trial.value)
        history = client.get_metric_history(tracked.info.run_id, "loss/val")
        assert sorted(m.step for m in history) == [0, 1]
        assert tracked.info.run_name.startswith(
            f"trial {trial.number}: latent {trial.params['model.latent_dim']}"
        )
        # What it ran on, as a training run records it.
        assert tracked.data.tags["env.lock_sha256"] == environment.file_sha256(repo / "uv.lock")
        assert tracked.data.tags["env.tensorflow"] == version("tensorflow")
        assert tracked.data.tags["env.cpu"] and tracked.data.tags["env.gpu"]
        assert [a.path for a in client.list_artifacts(tracked.info.run_id, "environment")] == [
            "environment/uv.lock"
        ]
        assert "system/cpu_utilization_percentage" in tracked.data.metrics
        drawn = {a.path for a in client.list_artifacts(tracked.info.run_id, "figures")}
        assert drawn == {f"figures/{figure.name}" for figure in FIGURES if figure.in_trial}
    assert client.search_model_versions() == []  # trials are compared, not registered

    best = (repo / "sweep/best_params.yaml").read_text()
    assert f"model.latent_dim: {study.best_params['model.latent_dim']}" in best
    overrides = run(["python", "-m", "pipeline.tune", "--print-best"], repo).stdout.split()
    assert overrides[::2] == ["-S"] * len(study.best_params)
    assert f"model.latent_dim={study.best_params['model.latent_dim']}" in overrides[1::2]

    tune(repo, "--n-trials", "4", "--study-name", "main", "-S", "tune.pruner=none")
    study = journal_study(repo, "main")
    assert len(finished(study)) == 4  # a total, not four more
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert len(child_runs(repo, study)) == 4


def enqueue(repo: Path, study_name: str, *trials: dict) -> None:
    (repo / "optuna").mkdir(exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(repo / "optuna/journal.log")))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
    for params in trials:
        study.enqueue_trial(params)


def test_median_pruner_prunes_a_hopeless_trial(repo):
    # A good trial first; then one whose learning rate is too small to learn in 10 steps.
    enqueue(
        repo,
        "prune",
        {"model.latent_dim": 2, "train.learning_rate": 1e-2},
        {"model.latent_dim": 2, "train.learning_rate": 1e-4},
    )
    args = [
        "-S",
        "tune.pruner=median",
        "-S",
        "tune.pruner_startup_trials=1",
        "-S",
        "tune.pruner_warmup_epochs=0",
    ]
    tune(repo, "--n-trials", "2", "--study-name", "prune", *args)
    study = journal_study(repo, "prune")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    (pruned,) = [r for r in child_runs(repo, study) if r.data.tags["optuna.trial_number"] == "1"]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.state"] == "PRUNED"


def test_nan_trial_fails_and_the_study_goes_on(repo):
    """Slow: a real sweep of two trials, one of which diverges."""
    space = "tune.space={model.latent_dim: {low: 2, high: 4}, train.learning_rate: {low: 1.0e-4, high: 10.0}}"
    enqueue(
        repo,
        "nan",
        {"model.latent_dim": 2, "train.learning_rate": 10.0},  # diverges within a few batches
        {"model.latent_dim": 2, "train.learning_rate": 1e-3},
    )
    result = tune(repo, "--n-trials", "2", "--study-name", "nan", "-S", space, "-S", "tune.pruner=none")
    assert "1 complete, 0 pruned, 1 failed" in result.stdout
    study = journal_study(repo, "nan")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    (failed,) = [r for r in child_runs(repo, study) if r.data.tags["optuna.trial_number"] == "0"]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.state"] == "FAIL"


def test_bad_space_is_refused_before_the_first_trial(repo):
    result = tune(
        repo, "--study-name", "bad", "-S", "tune.space={model.latent_dim: {low: 64, high: 2}}", check=False
    )
    assert result.returncode == 2
    assert "tune.space.model.latent_dim: low (64) must be below high (2)" in result.stderr
    with pytest.raises((KeyError, FileNotFoundError)):  # no study, or not even a journal
        journal_study(repo, "bad")


def test_a_searched_value_that_cannot_run_at_the_budget_stops_before_any_trial(repo):
    # The default space searches a 1-epoch warm-up; a 1-epoch trial has no room for it.
    result = tune(repo, "--study-name", "too-short", "-S", "train.epochs=1", check=False)
    assert result.returncode == 2
    assert (
        "tune.space: train.warmup_epochs = 1 at the trials' budget: params.yaml: train: "
        "train.warmup_epochs (1) must be below train.epochs (1)"
    ) in result.stderr
    with pytest.raises((KeyError, FileNotFoundError)):  # no study, or not even a journal
        journal_study(repo, "too-short")


def assert_each_trial_once(repo: Path, study: optuna.Study, n_trials: int, n_workers: int) -> None:
    trials = finished(study)
    assert n_trials <= len(trials) < n_trials + n_workers  # each worker may start one more at the end
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    numbers = [r.data.tags["optuna.trial_number"] for r in child_runs(repo, study)]
    assert sorted(numbers, key=int) == [str(t.number) for t in study.trials]


def test_auto_workers_share_the_cores_and_a_journal_study(repo):
    result = tune(
        repo, "--n-trials", "4", "--workers", "auto", "--study-name", "pair", "-S", "tune.pruner=none"
    )
    cores = len(os.sched_getaffinity(0))
    workers, threads = min(cores, 4), max(1, cores // min(cores, 4))
    assert f"tune: {workers} worker" in result.stdout
    study = journal_study(repo, "pair")
    assert_each_trial_once(repo, study, n_trials=4, n_workers=workers)
    for tracked in child_runs(repo, study):  # as TensorFlow itself reports its pools
        assert tracked.data.tags["tensorflow.intra_op_threads"] == str(threads)
        assert tracked.data.tags["tensorflow.inter_op_threads"] == str(threads)
    # The progress bar's last state: the best value so far and every way a trial ended.
    best = min(t.value for t in study.trials if t.value is not None)
    assert re.search(rf"4/4 .*best val_loss {best:.2f}; \d complete, 0 pruned, 0 failed", result.stderr)


@pytest.fixture
def postgres() -> str:
    """A real PostgreSQL server on loopback in a scratch directory; yields its URL."""
    require("postgresql")
    found = sorted(POSTGRESQL.glob("*/bin/initdb"))
    bin_dir = Path(found[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(home, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data_dir = home / "data"

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_owner, str(bin_dir / tool), *args], check=True, capture_output=True)

    pg("initdb", "-D", str(data_dir), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    pg("pg_ctl", "-D", str(data_dir), "-o", options, "-l", str(home / "log"), "-w", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        pg("pg_ctl", "-D", str(data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(repo, postgres):
    tune(
        repo,
        "--n-trials",
        "4",
        "--workers",
        "2",
        "--study-name",
        "pg",
        "--storage",
        postgres,
        "-S",
        "tune.pruner=none",
    )
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert_each_trial_once(repo, study, n_trials=4, n_workers=2)


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried_once(repo, postgres, processes):
    heartbeat = ["-S", "tune.heartbeat_interval=1", "-S", "tune.grace_period=3", "-S", "tune.pruner=none"]
    args = ["python", "-m", "pipeline.tune", *QUICK, "-S", "train.epochs=30", "--storage", postgres]
    launcher = processes(  # its own process group: the launcher and its worker die together
        [*args, "--study-name", "killed", "--n-trials", "1", *heartbeat],
        repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            study = optuna.load_study(study_name="killed", storage=postgres)
            if [t for t in study.trials if t.state.name == "RUNNING"]:
                break
        except KeyError:
            pass
        assert time.monotonic() < deadline and launcher.poll() is None, "no trial started"
        time.sleep(0.5)
    time.sleep(3)  # a few heartbeats in
    os.killpg(launcher.pid, 9)
    launcher.wait()
    time.sleep(4)  # past the grace period

    run(
        [
            "python",
            "-m",
            "pipeline.tune",
            *QUICK,
            "--storage",
            postgres,
            "--study-name",
            "killed",
            "--n-trials",
            "2",
            "-S",
            "train.epochs=30",  # the study's settings: other ones would start a study of their own
            *heartbeat,
        ],
        repo,
    )
    study = optuna.load_study(study_name="killed", storage=postgres)
    killed, retry = study.trials
    assert (killed.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert RetryFailedTrialCallback.retried_trial_number(retry) == killed.number
    assert retry.params == killed.params


def test_confirming_trials_run_at_their_own_budget(repo):
    """Slow: two searched trials of 2 epochs, the better confirmed at 3 epochs on another seed."""
    confirm = ["-S", "tune.pruner=none", "-S", "tune.confirm_top=1", "-S", "tune.confirm_seeds=1"]
    tune(
        repo,
        "--n-trials",
        "2",
        "--study-name",
        "fidelity",
        *confirm,
        "-S",
        "tune.confirm_overrides={train.epochs: 3}",
    )
    study = journal_study(repo, "fidelity")
    studies = JournalStorage(JournalFileBackend(str(repo / "optuna/journal.log")))
    before = set(optuna.get_all_study_names(studies))
    (replicate,) = [t for t in study.trials if "replicate_of" in t.user_attrs]
    client = store(repo)
    epochs = {
        int(run.data.tags["optuna.trial_number"]): (
            run.data.params["train.epochs"],
            len(client.get_metric_history(run.info.run_id, "loss/val")),
        )
        for run in child_runs(repo, study)
    }
    searched = [t.number for t in study.trials if t is not replicate]
    assert epochs == {**{number: ("2", 2) for number in searched}, replicate.number: ("3", 3)}
    configs = {
        int(r.data.tags["optuna.trial_number"]): r.data.tags["pipeline.config_id"]
        for r in child_runs(repo, study)
    }
    assert configs[replicate.number] != configs[replicate.user_attrs["replicate_of"]]  # another budget
    # Ranked on the confirming budget: the best's value is the 3-epoch one.
    summary = json.loads((repo / "sweep/summary.json").read_text())
    assert summary["best_values"] == [replicate.value] and summary["best_confirmed"]
    # Another confirming budget is another study; a searched key cannot be given one.
    tune(repo, "--n-trials", "1", "--study-name", "fidelity", *confirm)
    assert len(set(optuna.get_all_study_names(studies)) - before) == 1
    result = tune(repo, "-S", "tune.confirm_overrides={model.latent_dim: 3}", check=False)
    assert result.returncode != 0
    assert "tune.confirm_overrides: 'model.latent_dim' is searched" in result.stderr
    result = tune(repo, "-S", "tune.confirm_overrides={train.epochs: 0}", check=False)
    assert result.returncode != 0
    assert "tune.confirm_overrides: params.yaml: train.epochs: Input should be greater" in result.stderr


def test_sweep_confirms_its_best_trials_on_more_seeds(repo, tmp_path):
    """Slow: a real sweep of three trials, then two confirming trials, each a training."""
    confirm = ["-S", "tune.pruner=none", "-S", "tune.confirm_top=2", "-S", "tune.confirm_seeds=1"]
    result = tune(repo, "--n-trials", "3", "--study-name", "cmp", *confirm)
    assert "tune: the 2 best trials again, on 1 more seeds each" in result.stdout
    study = journal_study(repo, "cmp")
    searched = [t for t in study.trials if "replicate_of" not in t.user_attrs]
    replicates = [t for t in study.trials if "replicate_of" in t.user_attrs]
    assert len(searched) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    top = sorted(searched, key=lambda t: t.value)[:2]
    assert sorted((t.user_attrs["replicate_of"], t.user_attrs["train.seed"]) for t in replicates) == sorted(
        (t.number, 43) for t in top
    )
    for replicate in replicates:
        original = study.trials[replicate.user_attrs["replicate_of"]]
        assert replicate.params == original.params and replicate.value != original.value

    # The best is the lowest mean over the seeds that did not select it, which --print-best names.
    def mean(trial):
        values = [r.value for r in replicates if r.user_attrs["replicate_of"] == trial.number]
        return sum(values) / len(values)

    best = min(top, key=mean)
    overrides = run(["python", "-m", "pipeline.tune", "--print-best"], repo).stdout.split()
    assert overrides[::2] == ["-S"] * len(best.params)
    assert f"model.latent_dim={best.params['model.latent_dim']}" in overrides[1::2]
    summary = json.loads((repo / "sweep/summary.json").read_text())
    assert summary["best_trial"] == best.number and summary["best_value"] == pytest.approx(mean(best))
    assert summary["best_selected_by"] == best.value and summary["best_confirmed"]
    assert summary["confirmed_trials"] == len(top)  # the best won a contest on its confirming seeds
    # The same ranking's runner-up, for re-training the two best side by side; no third was confirmed.
    (other,) = [t for t in top if t is not best]
    assert [row["trial"] for row in summary["ranking"]] == [best.number, other.number]
    assert [row["value"] for row in summary["ranking"]] == pytest.approx([mean(best), mean(other)])
    second = run(["python", "-m", "pipeline.tune", "--print-best", "--rank", "2"], repo).stdout.split()
    assert f"model.latent_dim={other.params['model.latent_dim']}" in second[1::2]
    assert second[1::2] != overrides[1::2]
    third = run(["python", "-m", "pipeline.tune", "--print-best", "--rank", "3"], repo, check=False)
    assert third.returncode != 0 and "--rank 3: sweep/summary.json ranks 2 configurations" in third.stderr
    assert (
        f"selection score: val_loss {mean(best):.3f} over 1 other seed, the lowest of {len(top)} confirmed "
        f"trials (trial {best.number}, selected at {best.value:.3f})"
    ) in result.stdout

    # Tracked as child runs of the study's run, with the trial they repeat and its configuration.
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(repo, study)}
    for replicate in replicates:
        tracked, original = runs[replicate.number], runs[replicate.user_attrs["replicate_of"]]
        assert tracked.data.tags["optuna.replicate_of"] == str(original.data.tags["optuna.trial_number"])
        assert tracked.data.tags["pipeline.config_id"] == original.data.tags["pipeline.config_id"]
        assert tracked.data.params["train.seed"] == "43" and tracked.info.run_name.endswith(", seed 43")

    # Run again, nothing more to do: the confirming trials are held in the study.
    tune(repo, "--n-trials", "3", "--study-name", "cmp", *confirm)
    assert len(journal_study(repo, "cmp").trials) == 5

    # The comparison report groups each configuration's seeds.
    report = tmp_path / "study.html"
    result = run(
        ["python", "-m", "pipeline.compare", "--study", "cmp", "--best", "2", "--output", str(report)], repo
    )
    assert "compare: 4 runs of 2 configurations" in result.stdout
    assert result.stdout.count(", n = 2; objective_val_loss ") == 2
    html = report.read_text()
    assert f"trial {best.number}: latent {best.params['model.latent_dim']}" in html
    assert "None of these runs has figures: a sweep trial trains but does not plot." in html
    assert html.count("<img") == 2  # the curves and the rate-distortion plane only


def test_a_two_objective_sweep_returns_its_rate_distortion_front(repo, tmp_path):
    """Slow: four trials on rate and distortion, then the front's two lowest sums on one more seed."""
    two = ["-S", "tune.objective=rate_distortion", "-S", "tune.confirm_top=2", "-S", "tune.confirm_seeds=1"]
    # Two trials far apart on the plane first (a narrow code, a wide one), so the front has two members.
    (repo / "optuna").mkdir(exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(repo / "optuna/journal.log")))
    study = optuna.create_study(study_name="rd", storage=storage, directions=["minimize", "minimize"])
    for latent_dim in (2, 32):
        study.enqueue_trial({"model.latent_dim": latent_dim, "train.free_bits": 0})
    result = tune(repo, "--n-trials", "4", "--study-name", "rd", *two)
    assert (
        "tune: the 2 members of the front with the lowest val_loss again, on 1 more seeds each"
        in result.stdout
    )
    assert "tune: two objectives, so no pruning" in result.stdout
    study = journal_study(repo, "rd")
    assert len(study.directions) == 2 and study.metric_names == [
        "rate: validation KL",
        "distortion: validation reconstruction",
    ]  # the axes optuna-dashboard names
    searched = {t.number: t for t in study.trials if "replicate_of" not in t.user_attrs}
    replicates = [t for t in study.trials if "replicate_of" in t.user_attrs]
    assert len(searched) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)

    # The front: the searched trials that no other searched trial beats on both objectives.
    def beaten(t):
        return any(o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                   for o in searched.values())  # fmt: skip

    front = sorted((t for t in searched.values() if not beaten(t)), key=lambda t: t.values[0])
    confirmed = sorted(front, key=lambda t: sum(t.values))[:2]
    assert sorted(t.user_attrs["replicate_of"] for t in replicates) == sorted(t.number for t in confirmed)

    # Each trial's run records both objectives, and its negative ELBO as their sum.
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(repo, study)}
    for trial in study.trials:
        metrics = runs[trial.number].data.metrics
        assert (metrics["objective_val_rate"], metrics["objective_val_distortion"]) == pytest.approx(
            tuple(trial.values)
        )
        assert metrics["objective_val_loss"] == pytest.approx(sum(trial.values), rel=1e-6)

    # The member chosen: the lowest negative ELBO over the seeds that did not select it.
    def again(trial):
        return next(sum(r.values) for r in replicates if r.user_attrs["replicate_of"] == trial.number)

    chosen = min(confirmed, key=again)
    summary = json.loads((repo / "sweep/summary.json").read_text())
    assert summary["best_trial"] == chosen.number and summary["best_value"] == pytest.approx(again(chosen))
    assert [row["trial"] for row in summary["front"]] == [t.number for t in front]
    assert "the lowest of 2 confirmed members of the rate-distortion front" in result.stdout
    assert f"rate-distortion front: {len(front)} trials, on validation (nats)," in result.stdout

    # The parent run holds the front as a figure and a table.
    client = store(repo)
    parent = study.user_attrs["mlflow_parent_run_id"]
    figures = {a.path for a in client.list_artifacts(parent, "figures")}
    assert "figures/rate_distortion_front.png" in figures
    table = json.loads(
        Path(client.download_artifacts(parent, "pareto_front.json", str(tmp_path))).read_text()
    )
    rows = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert list(rows["trial"]) == [t.number for t in front]
    assert list(rows["rate"]) == pytest.approx([t.values[0] for t in front])
    # Run again, nothing more to do: the table is written anew, not appended to.
    tune(repo, "--n-trials", "4", "--study-name", "rd", *two)
    (tmp_path / "again").mkdir()
    again = json.loads(
        Path(client.download_artifacts(parent, "pareto_front.json", str(tmp_path / "again"))).read_text()
    )
    assert again == table

    # compare --study shows every member of the front, each confirmed one with its other seed.
    report = tmp_path / "front.html"
    result = run(["python", "-m", "pipeline.compare", "--study", "rd", "--output", str(report)], repo)
    shown = len(front) + len(replicates)
    assert f"compare: {shown} runs of {len(front)} configurations" in result.stdout
    html = report.read_text()
    assert "every member of study rd&#39;s rate-distortion front" in html and '<table id="plane">' in html


def test_optuna_dashboard_reads_the_journal(repo, pages, artifacts):
    enqueue(repo, "dash")
    space = {"model.latent_dim": IntDistribution(2, 64, log=True)}
    for latent_dim, value in ((2, 270.0), (8, 260.0)):  # two finished trials, as a sweep leaves them
        params = {"model.latent_dim": latent_dim}
        trial = optuna.trial.create_trial(params=params, distributions=space, value=value)
        journal_study(repo, "dash").add_trial(trial)
    storage = JournalStorage(JournalFileBackend(str(repo / "optuna/journal.log")))
    two = optuna.create_study(study_name="dash-rd", storage=storage, directions=["minimize", "minimize"])
    two.set_metric_names(["rate: validation KL", "distortion: validation reconstruction"])
    for latent_dim, values in ((2, [5.0, 260.0]), (8, [12.0, 240.0]), (4, [13.0, 250.0])):
        two.add_trial(optuna.trial.create_trial(params={"model.latent_dim": latent_dim}, distributions=space,
                                                values=values))  # fmt: skip
    port = free_port()
    command = [
        "optuna-dashboard",
        str(repo / "optuna/journal.log"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    studies_url = f"http://127.0.0.1:{port}/api/studies"
    with serving(command, studies_url, "optuna-dashboard", timeout=60):
        with urllib.request.urlopen(studies_url, timeout=10) as response:
            studies = json.load(response)["study_summaries"]
        assert "dash" in {s["study_name"] for s in studies}
        errors: list[str] = []
        page = pages(errors, viewport={"width": 1300, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/dashboard/")
        page.get_by_text(re.compile(r"^\d+\. dash$")).click(timeout=60_000)  # the study list's entry
        page.get_by_text("Best Trial (number=1)").wait_for(timeout=60_000)
        assert page.get_by_text("model.latent_dim: 8").count() == 1  # the best trial's params
        page.screenshot(path=artifacts / "optuna_dashboard.png")

        # A two-objective study, as `tune -S tune.objective=rate_distortion` leaves it: its front.
        page.goto(f"http://127.0.0.1:{port}/dashboard/")
        page.get_by_text(re.compile(r"^\d+\. dash-rd$")).click(timeout=60_000)
        page.get_by_text("Pareto Front", exact=True).first.wait_for(timeout=60_000)
        assert page.get_by_text("rate: validation KL").count() >= 1
        page.screenshot(path=artifacts / "optuna_dashboard_front.png")
        assert errors == []


def test_tune_is_a_dvc_stage_outside_the_default_chain_and_follows_its_space(tmp_path, official_dir):
    """Slow: two real sweeps of two trials through `dvc repro`, before and after an edit of the space."""
    budget = {"train.epochs": 2, "data.train_size": 1000, "data.val_size": 500}
    space = {"model.latent_dim": {"low": 2, "high": 3}}
    project = make_repo(
        tmp_path / "project",
        {"tune": {"n_trials": 2, "pruner": "none", "confirm_top": 0, "overrides": budget, "space": space}},
    )
    assert "tune" not in run(["dvc", "stage", "list", "--name-only"], project).stdout.split()
    assert (
        "sweep/dvc.yaml:tune" in run(["dvc", "stage", "list", "--all", "--name-only"], project).stdout.split()
    )
    run(["dvc", "repro", "sweep/dvc.yaml"], project)
    summary = json.loads((project / "sweep/summary.json").read_text())
    assert summary["trials_complete"] == 2
    assert read_yaml(project / "sweep/best_params.yaml")["model.latent_dim"] in (2, 3)

    # The space edited: its own study, whose best comes from the new space.
    set_param(project, "tune", "space", {"model.latent_dim": {"low": 7, "high": 8}})
    output = run(["dvc", "repro", "sweep/dvc.yaml"], project).stdout
    assert "tune: study 'vae-search' was drawn under other settings (changed: space); " in output
    assert read_yaml(project / "sweep/best_params.yaml")["model.latent_dim"] in (7, 8)
    assert json.loads((project / "sweep/summary.json").read_text())["trials_complete"] == 2
