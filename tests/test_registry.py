"""The champion alias on a real MLflow store: configurations compared by their mean `val_loss`,
beyond the noise between seeds, failed seeds counted against. Versions are made directly, with
the tags `train` sets, so that each case's numbers are exact; `tests/test_logged_model.py` runs
the same rule through `dvc repro`."""

from __future__ import annotations

import mlflow
import pytest

from pipeline.tracking import registry

NAME = "fashion-mnist-vae"
SOURCE = "/nonexistent/model"  # the registry records a source; nothing here loads one
RULE = {"sd": 1.0, "level": 0.02}  # a one-sided z-test at 2%: z above 2.05


@pytest.fixture
def client(tmp_path, monkeypatch):
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    client.experiment_id = client.create_experiment("vae")
    return client


def record(client, version: str, test_loss: float, protocol: str = "p") -> tuple[str, str]:
    return registry.record_evaluation(
        NAME, version, test_loss=test_loss, protocol=protocol, **RULE, experiment_id=client.experiment_id
    )


def diverged(client, config: str, seed: int) -> None:
    """A training run of `config` that diverged at `seed`, as `train` leaves one: FAILED, no model."""
    tags = {"pipeline.stage": "train", "pipeline.config_id": config, "pipeline.diverged": "true"}
    run = client.create_run(client.experiment_id, tags=tags)
    client.log_param(run.info.run_id, "train.seed", str(seed))
    client.set_terminated(run.info.run_id, "FAILED")


def evaluate(
    client, config: str, val_loss: float, protocol: str = "p", seed: int | None = None
) -> tuple[str, str, str]:
    """A new version of `config` that trained to `val_loss` (at `seed`, where given), evaluated:
    its number, the version holding the alias after, and why."""
    tags = {registry.CONFIG: config, registry.VAL_LOSS: repr(val_loss)}
    if seed is not None:
        tags[registry.SEED] = str(seed)
    version = str(client.create_model_version(NAME, source=str(SOURCE), tags=tags).version)
    holder, why = record(client, version, val_loss + 5, protocol)
    return version, holder, why


def holder(client) -> str:
    return str(client.get_model_version_by_alias(NAME, registry.CHAMPION).version)


def test_configurations_are_compared_by_their_mean_validation_loss_beyond_noise(client):
    assert evaluate(client, "a", 250.0) == ("1", "1", "the first evaluated")
    assert client.get_model_version(NAME, "1").tags[registry.TEST_LOSS] == "255.0"  # reported, not used
    for loss in (251.0, 252.0):  # the champion's own configuration's seeds never take it
        version, now, why = evaluate(client, "a", loss)
        assert now == "1" and why.startswith("another seed of the champion's configuration (version 1)")
    assert why.endswith("is now 251.000 over 3 seeds")

    # One lucky seed does not overturn a configuration measured on three: b's 246.0 is far
    # below a's mean, but b needs two seeds. With a second, b takes the alias (z = 4.75 /
    # (1.0 * sqrt(1/3 + 1/2)) = 5.2), with its version of lowest val_loss (chosen on validation).
    assert evaluate(client, "b", 246.0)[1] == "1"
    version, now, why = evaluate(client, "b", 246.5)
    assert (version, now) == ("5", "4") and holder(client) == "4"
    assert why == (
        "mean val_loss 246.250 over 2 seed(s) against the champion's 251.000 over 3: lower beyond noise "
        "(z = 5.20, one-sided at 0.02); the alias goes to version 4, that configuration's lowest val_loss"
    )

    # c is lower than b by one seed's sd: within the noise of two seeds each (z = 1.0).
    evaluate(client, "c", 245.0)
    version, now, why = evaluate(client, "c", 245.5)
    assert now == "4" and why.startswith(
        "no configuration's mean val_loss is below the champion's beyond noise"
    )

    # A seed of b diverges: its run failed before a model was registered, and it counts against
    # b. At the next evaluation b ranks after every configuration with no failed seed, and the
    # alias goes to the lowest of those, c.
    diverged(client, "b", seed=7)
    version, now, why = evaluate(client, "a", 251.5)
    assert now == "6" and holder(client) == "6"  # c's version of lowest val_loss
    assert why.startswith("the champion's configuration has a failed seed (n = 2 of 3; 1 failed or diverged)")

    # Re-evaluating the champion keeps it.
    assert record(client, "6", 259.0) == ("6", "re-evaluated")


def test_a_seed_retrained_after_a_failure_no_longer_counts_against(client):
    evaluate(client, "a", 250.0)
    evaluate(client, "a", 250.5)
    diverged(client, "a", seed=3)
    tags = {"pipeline.stage": "train", "pipeline.config_id": "a"}
    run = client.create_run(client.experiment_id, tags=tags)  # seed 3 again, trained this time...
    client.log_param(run.info.run_id, "train.seed", "3")
    client.log_metric(run.info.run_id, "val_loss", 250.2)  # ...and, being evaluated, RUNNING again
    evaluate(client, "b", 252.0)
    _, now, why = evaluate(client, "b", 252.5)
    assert now == "1" and "failed seed" not in why


def test_a_version_without_a_validation_loss_is_not_compared(client):
    bare = str(client.create_model_version(NAME, source=SOURCE, tags={registry.CONFIG: "old"}).version)
    assert record(client, bare, 240.0) == (
        "",
        f"version {bare} has no val_loss tag (trained before it was recorded): not compared",
    )
    evaluate(client, "a", 250.0)
    assert holder(client) == "2"
    # The champion re-evaluated after its tag was lost is not compared either: the alias stays.
    client.delete_model_version_tag(NAME, "2", registry.VAL_LOSS)
    _, now, why = evaluate(client, "b", 200.0)
    assert now == "2" and "was evaluated without a val_loss tag" in why


def test_versions_evaluated_under_another_protocol_are_not_compared(client):
    evaluate(client, "a", 250.0)
    version, now, why = evaluate(client, "small-data", 100.0, protocol="q")
    assert now == "1" and "evaluated under another protocol" in why
    assert f"set_registered_model_alias('{NAME}', 'champion', '{version}')" in why  # how to move it


def test_a_seed_trained_twice_counts_once(client):
    evaluate(client, "a", 250.0, seed=1)
    evaluate(client, "a", 251.0, seed=2)
    # b's seed 1 trained again (new code, the same numbers): still one seed, which never
    # overturns a configuration measured on two.
    evaluate(client, "b", 240.0, seed=1)
    _, now, why = evaluate(client, "b", 240.0, seed=1)
    assert now == "1"
    _, now, why = evaluate(client, "b", 240.5, seed=2)
    assert now == "3" and why.startswith("mean val_loss 240.250 over 2 seed(s)")
