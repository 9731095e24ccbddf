"""`compare` on a real MLflow store whose runs are made directly, so that the numbers are exact:
`--best` chooses on validation where the test set would choose otherwise, and a seed that failed
or diverged counts against its configuration, named or ranked."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from tests.helpers import ROOT, run

EXPERIMENT = "fashion-mnist-vae"
# Three configurations: validation puts a before b, the test set b before a; c is the lowest on
# validation but one of its three seeds diverged.
RUNS = {
    "a": {"latent": 4, "val_loss": [240.0, 240.2, 240.1], "test_loss": [252.0, 252.4, 252.2]},
    "b": {"latent": 8, "val_loss": [241.0, 241.3, 241.1], "test_loss": [246.0, 246.3, 246.1]},
    "c": {"latent": 16, "val_loss": [230.0, 230.5], "test_loss": [235.0, 235.5]},
}


@pytest.fixture
def project(tmp_path):
    """A folder with the project's params.yaml and a store holding the runs of `RUNS`, plus c's
    diverged seed as `train` leaves it: FAILED, tagged, no val_loss."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    ids = {}

    def make(config: str, seed: int, status: str, metrics: dict[str, float], tags: dict[str, str]) -> str:
        name = f"latent {RUNS[config]['latent']}, seed {seed}"
        tags = {"pipeline.stage": "train", "pipeline.config_id": f"config-{config}", **tags}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.log_param(run_id, "train.seed", str(seed))
        client.log_param(run_id, "model.latent_dim", str(RUNS[config]["latent"]))
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status)
        return run_id

    for config, spec in RUNS.items():
        for seed, (val, test) in enumerate(zip(spec["val_loss"], spec["test_loss"], strict=True), start=1):
            metrics = {"val_loss": val, "test_loss": test, "test_loss_se": 0.6}
            ids[config, seed] = make(config, seed, "FINISHED", metrics, {})
    ids["c", 3] = make("c", 3, "FAILED", {"loss/train": float("nan")}, {"pipeline.diverged": "true"})
    make("a", 9, "KILLED", {}, {})  # stopped by the user: not the configuration's failure
    make("b", 4, "FAILED", {"val_loss": 241.2}, {})  # trained, then failed in evaluate: not a failed seed
    return tmp_path, uri, ids


def compare(project, *args: str) -> tuple[str, str]:
    folder, uri, _ = project
    report = folder / "report.html"
    printed = run(
        ["python", "-m", "pipeline.compare", *args, "--output", str(report)],
        folder,
        env={"MLFLOW_TRACKING_URI": uri},
    ).stdout
    return printed, report.read_text()


def test_best_chooses_on_validation_where_the_test_set_would_choose_otherwise(project):
    _, _, ids = project
    printed, html = compare(project, "--best", "1")
    assert all(ids["a", seed] in html for seed in (1, 2, 3))
    assert not any(ids["b", seed] in html for seed in (1, 2, 3))  # b is lower on test
    assert not any(ids["c", seed] in html for seed in (1, 2))  # c is lowest on validation, but diverged once
    assert "compare: validation chose: latent 4 [config-a], mean val_loss 240.1 ± 0.1 (n = 3)" in printed
    assert "best test_loss" not in printed
    assert '<p id="choice"><strong>validation chose: latent 4 [config-a]' in html


def test_a_diverged_seed_ranks_its_configuration_last_and_is_counted(project):
    printed, html = compare(project, "--best", "3")
    lines = printed.splitlines()
    order = [
        line.split(" [")[0] for line in lines if " [config-" in line and not line.startswith("compare: valid")
    ]
    assert order == [
        "compare: model.latent_dim 4",
        "compare: model.latent_dim 8",
        "compare: model.latent_dim 16",
    ]
    assert "compare: model.latent_dim 16 [config-c], n = 2 of 3; 1 diverged; val_loss" in printed
    assert (
        "compare: model.latent_dim 4 [config-a], n = 3; val_loss" in printed
    )  # the KILLED run is not counted
    assert "(n = 2 of 3; 1 diverged)</th>" in html
    # b is lower than a on test beyond noise: reported as a finding on the choice, not as a choice.
    assert "compare: reported on test, test_loss: model.latent_dim 8 (primary: p = " in printed


def test_named_runs_count_their_configurations_failed_seeds(project):
    _, _, ids = project
    # The diverged run named as well counts once.
    printed, _ = compare(project, ids["a", 1], ids["a", 2], ids["c", 1], ids["c", 2], ids["c", 3])
    assert "compare: model.latent_dim 16 [config-c], n = 2 of 3; 1 diverged;" in printed
    # c's mean val_loss is far lower, but a configuration with a failed seed is never the best.
    assert "compare: best val_loss: none, no test: every other configuration has a failed seed" in printed
