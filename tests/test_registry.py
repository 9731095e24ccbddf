"""The champion alias on a real MLflow store: configurations compared by their mean `test_loss`,
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


def evaluate(client, config: str, test_loss: float) -> tuple[str, bool, str]:
    """A new version of `config` evaluated at `test_loss`: its number, and the registry's answer."""
    version = client.create_model_version(NAME, source=str(SOURCE), tags={registry.CONFIG: config})
    champion, why = registry.record_test_loss(NAME, str(version.version), test_loss, margin=1.0)
    return str(version.version), champion, why


def holder(client) -> str:
    return str(client.get_model_version_by_alias(NAME, registry.CHAMPION).version)


def test_configurations_are_compared_by_their_means_beyond_the_margin(client):
    assert evaluate(client, "a", 250.0)[1:] == (True, "the first evaluated")
    for loss in (254.0, 255.0):  # the champion's own configuration: never, whatever the value
        _, champion, why = evaluate(client, "a", loss)
        assert not champion and why == "another seed of the champion's configuration (version 1)"
    assert holder(client) == "1"

    # 249.5 beats the champion's own 250.0 by less than the margin, but its configuration's
    # mean (253.0 over three seeds) by 3.5: the means decide.
    version, champion, why = evaluate(client, "b", 249.5)
    assert champion and holder(client) == version == "4"
    assert why == (
        "mean test_loss 249.500 over 1 seed(s) against the champion's (version 1) 253.000 over 3: "
        "better by more than the margin, 1"
    )
    assert not evaluate(client, "b", 249.0)[1]  # another seed of the new champion's configuration

    # A lucky seed of a configuration no better does not take it: c's third seed, 247.9, is the
    # lowest of all, but c's mean (250.3) is above b's (249.25).
    for loss in (252.0, 251.0, 247.9):
        _, champion, why = evaluate(client, "c", loss)
        assert not champion and why.endswith("not better by more than the margin, 1")
    assert holder(client) == "4"

    # Re-evaluating the champion keeps it; a version with no configuration tag is its own.
    assert registry.record_test_loss(NAME, "4", 249.6, margin=1.0) == (True, "re-evaluated")
    version = client.create_model_version(NAME, source=str(SOURCE))
    assert registry.record_test_loss(NAME, str(version.version), 240.0, margin=1.0)[0]
    assert holder(client) == str(version.version)
