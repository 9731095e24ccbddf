"""The model registry: every trained model a version; the alias `champion` on the configuration whose
`test_loss` is lowest by more than the noise between seeds."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
TEST_LOSS = "test_loss"  # the version tag `evaluate` sets, which the champion is chosen by
CONFIG = "config_id"  # the version tag `train` sets: its run's configuration (all params but the seed)


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


def config_losses(name: str) -> dict[str, list[float]]:
    """The evaluated `test_loss` of every version, by configuration (a version without one is its own)."""
    client = mlflow.MlflowClient()
    losses: dict[str, list[float]] = {}
    for version in client.search_model_versions(f"name = '{name}'"):
        loss = version_test_loss(version)
        if math.isfinite(loss):
            losses.setdefault(version_config(version), []).append(loss)
    return losses


def version_config(version) -> str:
    """A version's configuration: its `config_id` tag, or the version itself where it has none."""
    return version.tags.get(CONFIG) or f"version {version.version}"


def record_test_loss(name: str, version: str, test_loss: float, margin: float) -> tuple[bool, str]:
    """Tag the version with its `test_loss`; move `champion` to it if its configuration beats the
    champion's by more than `margin` nats; return whether it is the champion now, and why.

    Configurations are compared by the mean `test_loss` of their evaluated versions (one seed
    each), so another seed of the champion's own configuration never takes the alias, and a
    lucky seed of a configuration no better cannot either. The champion re-evaluated keeps it.
    """
    client = mlflow.MlflowClient()
    with _exclusive():
        client.set_model_version_tag(name, version, TEST_LOSS, repr(test_loss))
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:  # no champion yet
            champion = None
        if champion is None:
            client.set_registered_model_alias(name, CHAMPION, version)
            return True, "the first evaluated"
        if str(champion.version) == version:
            return True, "re-evaluated"
        mine, theirs = version_config(client.get_model_version(name, version)), version_config(champion)
        if mine == theirs:
            return False, f"another seed of the champion's configuration (version {champion.version})"
        losses = config_losses(name)
        challenger, holder = losses[mine], losses.get(theirs, [math.inf])
        compared = (
            f"mean test_loss {statistics.fmean(challenger):.3f} over {len(challenger)} seed(s) against the "
            f"champion's (version {champion.version}) {statistics.fmean(holder):.3f} over {len(holder)}"
        )
        if statistics.fmean(holder) - statistics.fmean(challenger) > margin:
            client.set_registered_model_alias(name, CHAMPION, version)
            return True, f"{compared}: better by more than the margin, {margin:g}"
        return False, f"{compared}: not better by more than the margin, {margin:g}"


def versions_of_run(run_id: str) -> list:
    """The registered versions whose model a run logged, with their aliases."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"run_id = '{run_id}'")
    return [client.get_model_version(v.name, str(v.version)) for v in found]  # search leaves aliases out
