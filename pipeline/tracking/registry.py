"""The model registry: every trained model a version, the alias `champion` on the lowest `test_loss`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
TEST_LOSS = "test_loss"  # the version tag `evaluate` sets, which the champion is chosen by


def promote_command(name: str, version: str, tracking_uri: str) -> str:
    """MLflow's own call that points `champion` at a version: to promote, or to roll back."""
    return (
        f"python -c \"import mlflow; mlflow.MlflowClient('{tracking_uri}')"
        f".set_registered_model_alias('{name}', '{CHAMPION}', '{version}')\""
    )


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on one version of a registered model."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def version_test_loss(version) -> float:
    """A version's `test_loss` tag; infinite where it was never evaluated."""
    try:
        return float(version.tags.get(TEST_LOSS, "inf"))
    except ValueError:
        return math.inf


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    # Two evaluations ending at once on one local store (`dvc queue` workers) must not both
    # read the old champion and then both move it. A shared server has no such lock.
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        with FileLock(f"{Path(uri.removeprefix('sqlite:///'))}.registry.lock"):
            yield
    else:
        yield


def record_test_loss(name: str, version: str, test_loss: float) -> bool:
    """Tag the version with its `test_loss`; move `champion` to it if it beats the champion's.

    Returns whether this version is now the champion. A worse model never moves the alias;
    an equal one does not either. The champion being re-evaluated keeps the alias.
    """
    client = mlflow.MlflowClient()
    with _exclusive():
        client.set_model_version_tag(name, version, TEST_LOSS, repr(test_loss))
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:  # no champion yet
            champion = None
        if champion is not None and str(champion.version) == version:
            return True  # re-evaluated: it keeps the alias until a better model takes it
        if champion is not None and version_test_loss(champion) <= test_loss:
            return False
        client.set_registered_model_alias(name, CHAMPION, version)
        return True


def versions_of_run(run_id: str) -> list:
    """The registered versions whose model a run logged, with their aliases."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"run_id = '{run_id}'")
    return [client.get_model_version(v.name, str(v.version)) for v in found]  # search leaves aliases out
