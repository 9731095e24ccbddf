"""What `compare` reads from MLflow (runs, the best ones, curves, figures), and the run holding its report."""

from __future__ import annotations

import re
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.environment import git_state
from pipeline.tracking.runs import CONFIG_TAG
from pipeline.tracking.store import TrackingError

# The comparison report: which runs, what they hold, and the small run that carries the report.
RUN_ID = re.compile(r"[0-9a-f]{32}")


def _literal(value: str) -> str:
    """A quoted string for MLflow's search filter."""
    return "'" + value.replace("'", "\\'") + "'"


def runs_named(experiment_id: str, refs: Sequence[str]) -> list[mlflow.entities.Run]:
    """Runs by id or by DVC experiment name (the `dvc.exp_name` tag), in the order given."""
    client = mlflow.MlflowClient()
    found = []
    for ref in refs:
        if RUN_ID.fullmatch(ref):
            try:
                found.append(client.get_run(ref))
                continue
            except MlflowException:
                pass
        matches = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`dvc.exp_name` = {_literal(ref)}",
            order_by=["attributes.start_time DESC"],
        )
        if not matches:
            raise TrackingError(f"{ref!r} is neither a run id nor a DVC experiment name in the MLflow store")
        found.append(matches[0])  # the latest, when an experiment name was re-used
    return found


def best_configurations(experiment_id: str, n: int) -> list[mlflow.entities.Run]:
    """Every finished, evaluated trained model of the `n` configurations with the lowest mean
    `test_loss`, best configuration first, each one's runs in the order they started."""
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string="tags.`pipeline.stage` = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    return best_groups([run for run in runs if "test_loss" in run.data.metrics], "test_loss", n)


def best_trials(experiment_id: str, study_name: str, n: int) -> list[mlflow.entities.Run]:
    """The complete trials of a study's `n` configurations with the lowest mean objective: each
    searched trial with the trials that re-trained it on other seeds."""
    client = mlflow.MlflowClient()
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`optuna.study_name` = {_literal(study_name)}",
    )
    if not parents:
        raise TrackingError(f"no Optuna study named {study_name!r} in the MLflow store")
    trials = [  # MLflow's filter has no IN for tags: one search per parent (a resumed study has one)
        trial
        for parent in parents
        for trial in client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = {_literal(parent.info.run_id)} "
            "and tags.`optuna.state` = 'COMPLETE'",
        )
    ]
    trials.sort(key=lambda run: int(run.data.tags["optuna.trial_number"]))
    return best_groups(trials, "objective_val_loss", n)


def best_groups(runs: list[mlflow.entities.Run], metric: str, n: int) -> list[mlflow.entities.Run]:
    """The runs of the `n` configurations (the `pipeline.config_id` tag; a run without it is its own)
    with the lowest mean `metric`, best first, each configuration's runs in their given order."""
    groups: dict[str, list[mlflow.entities.Run]] = {}
    for run in runs:
        groups.setdefault(run.data.tags.get(CONFIG_TAG) or run.info.run_id, []).append(run)
    ranked = sorted(groups.values(), key=lambda g: statistics.fmean(r.data.metrics[metric] for r in g))
    return [run for group in ranked[:n] for run in group]


def metric_history(run_id: str, key: str) -> list[float]:
    """A metric's values in step order."""
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_figures(run_id: str) -> dict[str, bytes]:
    """The PNG figures the `plot` stage logged, by file name; none for a sweep trial."""
    client = mlflow.MlflowClient()
    names = [Path(a.path).name for a in client.list_artifacts(run_id, "figures") if a.path.endswith(".png")]
    if not names:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        local = Path(client.download_artifacts(run_id, "figures", folder))
        return {name: (local / name).read_bytes() for name in names}


def log_comparison(experiment_id: str, report: Path, runs: Sequence[mlflow.entities.Run], how: str) -> str:
    """A small FINISHED run that holds the report as an artifact; return its id."""
    listing = "\n".join(f"- `{run.info.run_id}` {run.info.run_name}" for run in runs)
    tags = {
        **git_state(Path.cwd()),
        "pipeline.stage": "compare",
        "compare.run_ids": ",".join(run.info.run_id for run in runs),
        "mlflow.note.content": f"Comparison report of {len(runs)} runs ({how}); open `{report.name}` "
        f"under Artifacts.\n\n{listing}",
    }
    names = " vs ".join(run.info.run_name for run in runs)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"compare: {names}"[:250], tags=tags) as run:
        mlflow.log_artifact(str(report))
    return run.info.run_id
