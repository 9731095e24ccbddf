"""The champion alias on a real MLflow store: configurations compared by their mean `val_loss`,
beyond a margin. Versions are made directly, with the tags `train` sets, so that each case's
numbers are exact; `tests/test_logged_model.py` runs the same rule through `dvc repro`."""

from __future__ import annotations

import mlflow
import pytest

from pipeline.tracking import registry

NAME = "fashion-mnist-vae"
SOURCE = "/nonexistent/model"  # the registry records a source; nothing here loads one


@pytest.fixture
def client(tmp_path, monkeypatch):
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    return client


def evaluate(client, config: str, val_loss: float, protocol: str = "p") -> tuple[str, str, str]:
    """A new version of `config` that trained to `val_loss`, evaluated: its number, the version
    holding the alias after, and why."""
    tags = {registry.CONFIG: config, registry.VAL_LOSS: repr(val_loss)}
    version = str(client.create_model_version(NAME, source=str(SOURCE), tags=tags).version)
    holder, why = registry.record_evaluation(
        NAME, version, test_loss=val_loss + 5, protocol=protocol, margin=1.0
    )
    return version, holder, why


def holder(client) -> str:
    return str(client.get_model_version_by_alias(NAME, registry.CHAMPION).version)


def test_configurations_are_compared_by_their_mean_validation_loss_beyond_the_margin(client):
    assert evaluate(client, "a", 250.0) == ("1", "1", "the first evaluated")
    assert client.get_model_version(NAME, "1").tags[registry.TEST_LOSS] == "255.0"  # reported, not used
    for loss in (254.0, 255.0):  # the champion's own configuration's seeds never take it
        version, now, why = evaluate(client, "a", loss)
        assert now == "1" and why.startswith("another seed of the champion's configuration (version 1)")
    assert why.endswith("is now 253.000 over 3 seeds")

    # One lucky seed does not overturn a configuration measured on three: b's 240.0 beats a's
    # mean (253.0) by far, but b needs two seeds. With a second, b takes the alias, with its
    # version of lowest val_loss (chosen on validation, as the configuration is).
    assert evaluate(client, "b", 240.0)[1] == "1"
    version, now, why = evaluate(client, "b", 249.0)  # b: 244.5 over 2 seeds
    assert (version, now) == ("5", "4") and holder(client) == "4"
    assert why == (
        "mean val_loss 244.500 over 2 seed(s) against the champion's 253.000 over 3: "
        "better by more than the margin, 1; the alias goes to version 4, that configuration's lowest val_loss"
    )

    # b's own later seeds pull its mean (255.0 over 4) behind a's by more than the margin: the
    # alias moves back, to a's version of lowest val_loss.
    assert evaluate(client, "b", 256.0)[1] == "4"
    version, now, why = evaluate(client, "b", 275.0)
    assert (version, now) == ("7", "1") and holder(client) == "1"
    assert why.startswith("mean val_loss 253.000 over 3 seed(s) against the champion's 255.000 over 4")

    # Re-evaluating the champion keeps it.
    assert registry.record_evaluation(NAME, "1", test_loss=259.0, protocol="p", margin=1.0) == (
        "1",
        "re-evaluated",
    )


def test_a_version_without_a_validation_loss_is_not_compared(client):
    bare = str(client.create_model_version(NAME, source=SOURCE, tags={registry.CONFIG: "old"}).version)
    assert registry.record_evaluation(NAME, bare, test_loss=240.0, protocol="p", margin=1.0) == (
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
