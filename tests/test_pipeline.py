"""End to end: real `dvc repro` in a temporary git repository, checked through DVC and MLflow."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline import data
from pipeline.figures import NAMES as FIGURES
from pipeline.tracking.store import default_store_uri
from tests.helpers import (
    SMALL,
    SMALL_NAME,
    config_of,
    free_port,
    make_repo,
    ran_stages,
    run,
    serving,
    set_param,
    store,
)

# One worker runs them all (pytest-xdist's loadgroup), so the module's project is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


@pytest.fixture(scope="module")
def repo(reproduced) -> Path:
    """A project copy after one full `dvc repro` on small real data."""
    return reproduced("pipeline")


def run_of(repo: Path):
    run_id = json.loads((repo / "outputs/mlflow_run.json").read_text())["run_id"]
    return store(repo).get_run(run_id)


def test_outputs_and_dvc_metrics(repo):
    assert (repo / "models/vae.keras").is_file()
    assert not (repo / "sweep/best_params.yaml").exists()  # the sweep is not in the default chain
    assert (repo / "dvc.lock").is_file()
    summary = json.loads((repo / "data/prepared/summary.json").read_text())
    assert summary["counts"] == {"train": 2000, "val": 500, "test": 500}
    assert sum(summary["class_counts"]["test"].values()) == 500
    for name in FIGURES:
        assert (repo / f"plots/figures/{name}").stat().st_size > 5000
    history = (repo / "plots/history.csv").read_text().splitlines()
    assert history[0].split(",") == [
        "epoch",
        "kl",
        "loss",
        "reconstruction",
        "val_active_units",  # the latent space's use, on 1,000 validation images
        "val_kl",
        "val_kl_unit_00",
        "val_kl_unit_01",
        "val_loss",
        "val_reconstruction",
    ]
    assert len(history) == 1 + SMALL["train"]["epochs"]

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = shown[""]["data"]["metrics/evaluate.json"]["data"]
    assert 100 < metrics["test_loss"] < 700
    assert metrics["test_iw_nll"] <= metrics["test_loss"] + 1.0  # the IW bound is the tighter one
    assert 0 <= metrics["knn_accuracy"] <= 1 and 0 <= metrics["active_units"] <= 2
    by_class = json.loads((repo / "plots/reconstruction_by_class.json").read_text())
    assert [row["class"] for row in by_class] == list(data.CLASS_NAMES)
    assert all(row["reconstruction"] > 0 for row in by_class)


def test_mlflow_run_holds_all_four_stages(repo):
    tracked = run_of(repo)
    assert tracked.info.status == "FINISHED"
    params = tracked.data.params
    assert params["train.epochs"] == "2" and params["model.latent_dim"] == "2"
    assert params["train.learning_rate"] == "0.001" and params["plot.grid_size"] == "5"
    assert not any(key.startswith("optimizer_") for key in params)  # no float32 copies of train.*
    for key in ("loss/train", "loss/val", "kl/val", "reconstruction/train"):  # grouped per quantity
        history = store(repo).get_metric_history(tracked.info.run_id, key)
        assert sorted(m.step for m in history) == [0, 1]
    assert tracked.info.run_name == f"latent 2, lr 0.001, {SMALL_NAME}, seed 42"
    assert tracked.data.tags["pipeline.config_id"] == config_of(repo)
    description = tracked.data.tags["mlflow.note.content"]
    assert "Latent dim 2; nadam at learning rate 0.001, batch 100, 2 epochs on 2,000 training" in description
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())
    assert tracked.data.metrics["test_loss"] == pytest.approx(evaluated["test_loss"])
    assert "reconstruction_by_class/t_shirt_top" in tracked.data.metrics

    figures = {a.path for a in store(repo).list_artifacts(tracked.info.run_id, "figures")}
    assert figures == {f"figures/{name}" for name in FIGURES}

    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert tracked.data.tags["git.commit"] == head and tracked.data.tags["git.dirty"] == "false"

    (dataset,) = tracked.inputs.dataset_inputs
    digest = json.loads((repo / "data/prepared/summary.json").read_text())["digest"]
    assert dataset.dataset.digest == digest[:16]

    mlflow.set_tracking_uri(default_store_uri(repo))
    (logged,) = mlflow.search_logged_models(experiment_ids=[tracked.info.experiment_id], output_format="list")
    assert logged.source_run_id == tracked.info.run_id
    model = mlflow.keras.load_model(logged.model_uri)
    assert model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 28, 28, 1)
    signature = mlflow.models.get_model_info(logged.model_uri).signature
    assert tuple(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 28, 28, 1)
    assert signature.params.to_dict() == [
        {"name": "mode", "default": "reconstruct", "shape": None, "type": "string"}
    ]


def test_stage_console_shows_the_pipeline_not_tensorflow(repo):
    result = run(["python", "-m", "pipeline.plot"], repo, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.stdout.strip() == "plot: 7 figures in plots/figures"
    noise = ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit", "RuntimeWarning", "overflow")
    assert [line for line in result.stderr.splitlines() if any(n in line for n in noise)] == []


def test_an_edit_makes_stale_only_the_stages_that_run_the_edited_code(repo):
    for module, stage in (("pipeline/tracking/callbacks.py", "train"), ("pipeline/plot.py", "plot")):
        path = repo / module
        original = path.read_text()
        path.write_text(original + "# an edit\n")
        try:
            stale = json.loads(run(["dvc", "status", "--json", "dvc.yaml"], repo).stdout)  # not the sweep
        finally:
            path.write_text(original)
        assert sorted(stale) == [stage], (module, stale)


def test_a_training_seed_leaves_the_split_alone(repo):
    original = (repo / "params.yaml").read_text()
    set_param(repo, "train", "seed", 7)
    try:
        stale = json.loads(run(["dvc", "status", "--json", "dvc.yaml"], repo).stdout)
    finally:
        (repo / "params.yaml").write_text(original)
    assert sorted(stale) == ["train"]  # not prepare: the same split and test set


def test_second_repro_runs_nothing(repo):
    assert ran_stages(run(["dvc", "repro"], repo).stdout) == []


def test_plot_setting_reruns_only_plot(repo):
    before = run_of(repo).info.run_id
    set_param(repo, "plot", "dpi", 60)
    assert ran_stages(run(["dvc", "repro"], repo).stdout) == ["plot"]
    after = run_of(repo)
    assert after.info.run_id == before and after.info.status == "FINISHED"
    assert after.data.tags["changed.plot.dpi"] == "60"


def test_exp_run_with_override_is_listed_with_params_and_metrics(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)  # dvc.lock and metrics, as a user commits them
    run(["dvc", "exp", "run", "-S", "model.latent_dim=8"], repo)
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    baseline = next(row for row in table if row["typ"] == "baseline" and row["rev"] != "workspace")
    (experiment,) = [row for row in table if row["typ"].startswith("branch")]
    assert (baseline["model.latent_dim"], experiment["model.latent_dim"]) == ("2", "8")
    assert float(baseline["test_loss"]) > 0 and float(experiment["test_loss"]) > 0
    assert baseline["test_loss"] != experiment["test_loss"]

    runs = store(repo).search_runs(experiment_ids=[run_of(repo).info.experiment_id])
    by_dim = {r.data.params["model.latent_dim"]: r for r in runs}
    assert set(by_dim) == {"2", "8"}
    assert by_dim["8"].info.status == "FINISHED" and "dvc.exp_name" in by_dim["8"].data.tags
    assert by_dim["8"].data.tags["dvc.exp_name"] == experiment["Experiment"]
    assert (
        by_dim["8"].info.run_name == f"latent 8, lr 0.001, {SMALL_NAME}, seed 42 · {experiment['Experiment']}"
    )
    assert by_dim["8"].data.tags["git.dirty"] == "true"  # params.yaml differs from the commit


def test_failed_stage_marks_run_failed(reproduced):
    repo = reproduced("broken_model", {**SMALL, "train": {"epochs": 1}})  # its own: it breaks the model
    tracked = run_of(repo)
    (repo / "models/vae.keras").write_bytes(b"truncated")
    result = run(["python", "-m", "pipeline.evaluate"], repo, check=False)
    assert result.returncode == 2
    assert "models/vae.keras: SHA-256" in result.stderr.splitlines()[-1]
    assert store(repo).get_run(tracked.info.run_id).info.status == "FAILED"


def test_bad_params_stop_before_any_work(tmp_path):
    repo = make_repo(tmp_path / "bad", {"train": {"epochs": "ten"}})
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and "train.epochs" in errors[0]
    assert not (repo / "mlruns").exists()
    assert not (repo / "data/prepared").exists()


@pytest.fixture
def tracking_server(tmp_path):
    """A real `mlflow server` on loopback with its own store."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
    ]  # fmt: skip
    with serving(command, f"{uri}/health", "mlflow server"):
        yield uri


def test_tracking_uri_from_environment_wins(repo, tracking_server):
    local_experiment = run_of(repo).info.experiment_id
    local_runs = len(store(repo).search_runs(experiment_ids=[local_experiment]))
    env = {"MLFLOW_TRACKING_URI": tracking_server}
    for stage in ("train", "evaluate"):
        run(["python", "-m", f"pipeline.{stage}"], repo, env=env)

    remote = mlflow.MlflowClient(tracking_uri=tracking_server)
    (experiment,) = [e for e in remote.search_experiments() if e.name == "fashion-mnist-vae"]
    (tracked,) = remote.search_runs(experiment_ids=[experiment.experiment_id])
    assert tracked.info.status == "FINISHED" and "test_loss" in tracked.data.metrics
    assert json.loads((repo / "outputs/mlflow_run.json").read_text())["run_id"] == tracked.info.run_id
    assert len(store(repo).search_runs(experiment_ids=[local_experiment])) == local_runs
