"""The model registry: every trained model a version; the alias `champion` on the configuration
whose validation loss is lower beyond the noise between seeds (`selection.champion`), every
failed seed counted against its configuration."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from pipeline import selection
from pipeline.tracking import queries

CHAMPION = "champion"
CONFIG = "config_id"  # the version tag `train` sets: its run's configuration (all params but the seed)
SEED = "train_seed"  # the version tag `train` sets: a seed trained twice counts once
VAL_LOSS = "val_loss"  # the version tag `train` sets: what the champion is chosen by
TEST_LOSS = "test_loss"  # the version tag `evaluate` sets: reported, never chosen by
PROTOCOL = "protocol"  # the version tag `evaluate` sets: its data and evaluation settings


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


def version_val_loss(version) -> float:
    """A version's `val_loss` tag; NaN where it has none or it is not a number."""
    try:
        return float(version.tags.get(VAL_LOSS, "nan"))
    except ValueError:
        return math.nan


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    # Two evaluations ending at once on one local store (`dvc queue` workers) must not both
    # read the old champion and then both move it. A shared server has no such lock: there each
    # evaluation decides again after moving the alias (`record_evaluation`).
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        with FileLock(f"{Path(uri.removeprefix('sqlite:///'))}.registry.lock"):
            yield
    else:
        yield


def version_config(version) -> str:
    """A version's configuration: its `config_id` tag, or the version itself where it has none."""
    return version.tags.get(CONFIG) or f"version {version.version}"


def _holder(client: mlflow.MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return None


def _decide(
    client: mlflow.MlflowClient,
    name: str,
    version: str,
    protocol: str,
    sd: float,
    level: float,
    experiment_id: str,
) -> tuple[str, str]:
    """Move the alias where `selection.champion` says, among the versions evaluated under
    `protocol` that recorded a `val_loss`, each configuration's failed seeds in `experiment_id`
    counted as NaN (`queries.failed_seeds`); return the version that holds it ("" for none) and why.

    A configuration that wins holds the alias with its version of lowest `val_loss`, chosen on
    validation like the configuration, so a collapsed seed of a good configuration is not served.
    """
    holder = _holder(client, name)
    held_by = str(holder.version) if holder is not None else ""
    evaluated = client.get_model_version(name, version)
    if math.isnan(version_val_loss(evaluated)):
        return (
            held_by,
            f"version {version} has no {VAL_LOSS} tag (trained before it was recorded): not compared",
        )
    if holder is not None and (holder.tags.get(PROTOCOL) != protocol or math.isnan(version_val_loss(holder))):
        how = (
            "before evaluation protocols were recorded"
            if PROTOCOL not in holder.tags
            else "under another protocol (other data or evaluation settings)"
            if holder.tags.get(PROTOCOL) != protocol
            else f"without a {VAL_LOSS} tag"
        )
        return held_by, (
            f"the champion, version {holder.version}, was evaluated {how}, so the two are not compared; "
            "to move the alias: " + promote_command(name, version, mlflow.get_tracking_uri())
        )
    by_seed: dict[str, dict[str, float]] = {}  # a seed trained twice counts once: its latest version
    best: dict[str, tuple[float, int]] = {}  # by configuration: its lowest val_loss, and that version
    versions = client.search_model_versions(f"name = '{name}'")
    for other in sorted(versions, key=lambda v: int(v.version)):
        loss = version_val_loss(other)
        if other.tags.get(PROTOCOL) == protocol and not math.isnan(loss):
            config = version_config(other)
            by_seed.setdefault(config, {})[other.tags.get(SEED) or f"version {other.version}"] = loss
            best[config] = min(best.get(config, (math.inf, 0)), (loss, int(other.version)))
    groups = {config: list(seeds.values()) for config, seeds in by_seed.items()}
    failed = queries.failed_seeds(experiment_id)
    for config, values in groups.items():
        values.extend([math.nan] * len(failed.get(config, {})))
    held = version_config(holder) if holder is not None else None
    winner, why = selection.champion(held, groups, sd=sd, level=level)
    mine = version_config(evaluated)
    if holder is not None and winner == held:
        if held_by == version:
            return version, "re-evaluated"
        if mine == held:
            n = len(groups[held])
            standing = (
                f"whose mean {selection.SELECT_BY} is now {selection.score(groups[held]):.3f} over {n} seeds"
                if math.isfinite(selection.score(groups[held]))
                else f"whose seeds are {selection.lost(groups[held])}"
            )
            return (
                held_by,
                f"another seed of the champion's configuration (version {holder.version}), {standing}",
            )
        return held_by, why
    target = str(best[winner][1])
    if target != version:
        why += f"; the alias goes to version {target}, that configuration's lowest {VAL_LOSS}"
    client.set_registered_model_alias(name, CHAMPION, target)
    return target, why


def record_evaluation(
    name: str,
    version: str,
    *,
    test_loss: float,
    protocol: str,
    sd: float,
    level: float,
    experiment_id: str,
) -> tuple[str, str]:
    """Tag the version with its `test_loss` and evaluation protocol; move `champion` as
    `selection.champion` decides on the versions' `val_loss`; return the version that holds the
    alias ("" for none), and why.

    On a shared tracking server two evaluations may decide at once, each from what the other had
    recorded by then; each decides a second time after the first, from what both recorded, so
    that a decision made without the other's figures is made again with them.
    """
    client = mlflow.MlflowClient()
    with _exclusive():
        client.set_model_version_tag(name, version, TEST_LOSS, repr(test_loss))
        client.set_model_version_tag(name, version, PROTOCOL, protocol)
        holder, why = _decide(client, name, version, protocol, sd, level, experiment_id)
        if not mlflow.get_tracking_uri().startswith("sqlite:///"):
            again, why_again = _decide(client, name, version, protocol, sd, level, experiment_id)
            if again != holder:
                holder, why = again, f"after another evaluation that ended at the same time: {why_again}"
        return holder, why


def versions_of_run(run_id: str) -> list:
    """The registered versions whose model a run logged, with their aliases."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"run_id = '{run_id}'")
    return [client.get_model_version(v.name, str(v.version)) for v in found]  # search leaves aliases out
