"""What the commands read back from MLflow: runs, the best ones, failed seeds, curves, figures,
and the run holding `compare`'s report."""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipeline import selection
from pipeline.environment import git_state
from pipeline.tracking.runs import CONFIG_TAG, DIVERGED_TAG, all_runs
from pipeline.tracking.store import DIED_TAG, TrackingError

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


def failed_seeds(experiment_id: str) -> dict[str, dict[int, str]]:
    """Each configuration's training seeds that failed, `"diverged"` or `"failed"`: training runs
    that ended FAILED before their model was kept (no `val_loss`), less any seed of the same
    configuration that another run trained (logged a `val_loss`, whatever its status: `evaluate`
    reopens it). Not counted: a run stopped by the user (KILLED), and one whose process died
    (`pipeline.died`: the machine's failure, which `dvc repro` resumes)."""
    failed: dict[str, dict[int, str]] = {}
    trained: set[tuple[str, str]] = set()
    for run in _train_runs(experiment_id, "attributes.status != 'KILLED'"):
        config, seed = run.data.tags.get(CONFIG_TAG), run.data.params.get("train.seed")
        if config is None or seed is None:
            continue
        if selection.SELECT_BY in run.data.metrics:
            trained.add((config, seed))
        elif run.info.status == "FAILED" and DIED_TAG not in run.data.tags:
            why = "diverged" if run.data.tags.get(DIVERGED_TAG) == "true" else "failed"
            failed.setdefault(config, {})[int(seed)] = why
    return {
        config: kept
        for config, seeds in failed.items()
        if (kept := {seed: why for seed, why in seeds.items() if (config, str(seed)) not in trained})
    }


def _train_runs(experiment_id: str, condition: str) -> list[mlflow.entities.Run]:
    """Every training run of the experiment that meets `condition`, oldest first."""
    filter_string = f"tags.`pipeline.stage` = 'train' and {condition}"
    return list(all_runs(mlflow.MlflowClient(), experiment_id, filter_string, ["attributes.start_time ASC"]))


def best_configurations(
    experiment_id: str, n: int, failed: dict[str, dict[int, str]]
) -> list[mlflow.entities.Run]:
    """Every finished, evaluated trained model of the `n` configurations that `selection.rank`
    puts first by mean validation loss, best first, each one's runs in the order they started.
    A seed trained twice counts once, by its latest run; a seed in `failed` (`failed_seeds`)
    counts against its configuration."""
    groups: dict[str, dict[str, mlflow.entities.Run]] = {}
    for run in _train_runs(experiment_id, "attributes.status = 'FINISHED'"):
        if "test_loss" in run.data.metrics:
            config = run.data.tags.get(CONFIG_TAG) or run.info.run_id
            seed = run.data.params.get("train.seed", run.info.run_id)
            groups.setdefault(config, {}).pop(seed, None)
            groups[config][seed] = run  # the latest of a seed, in start order
    scores = {
        config: [validation_loss(run) for run in group.values()] + [math.nan] * len(failed.get(config, {}))
        for config, group in groups.items()
    }
    return [run for config in selection.rank(scores)[:n] for run in groups[config].values()]


def validation_loss(run: mlflow.entities.Run) -> float:
    """The validation loss a trained model is chosen by; for runs before it was logged, the last
    epoch's (the model kept, as they had no early stopping)."""
    metrics = run.data.metrics
    return metrics.get(selection.SELECT_BY, metrics.get("loss/val", math.nan))


def best_trials(experiment_id: str, study_name: str) -> tuple[list[list[mlflow.entities.Run]], bool]:
    """A study's configurations, best first, as `tune` ranks them (`selection.confirmed`): each the
    complete runs of a searched trial and of the trials that re-trained it on other seeds.
    Confirmed configurations come first, then unconfirmed ones.

    A two-objective study's candidates are the searched trials on its rate-distortion front
    (`selection.pareto_front`). Also returns whether the study had two objectives."""
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
            "and tags.`optuna.state` != 'PRUNED'",
        )
    ]
    trials.sort(key=lambda run: int(run.data.tags["optuna.trial_number"]))
    entries, shown, points = [], {}, {}
    for trial in trials:
        tags, complete = trial.data.tags, trial.data.tags["optuna.state"] == "COMPLETE"
        if not complete and tags.get("optuna.diverged") != "true":
            continue  # stopped or killed, not the settings' failure: `tune` queues it again
        value = trial.data.metrics.get(selection.TRIAL_SELECT_BY, math.nan) if complete else math.nan
        if "optuna.replicate_of" in tags:
            key, seed = int(tags["optuna.replicate_of"]), int(trial.data.params["train.seed"])
        elif complete:
            key, seed = int(tags["optuna.trial_number"]), None
            if selection.TRIAL_RATE in trial.data.metrics:
                metrics = trial.data.metrics
                points[key] = (metrics[selection.TRIAL_RATE], metrics[selection.TRIAL_DISTORTION])
        else:
            continue
        entries.append((key, seed, value))
        if complete:
            shown.setdefault(key, []).append(trial)
    groups = selection.sweep_groups(entries)
    if points:
        members = set(selection.pareto_front(points))
        groups = {key: values for key, values in groups.items() if key in members}
    scored = selection.confirmed(groups)
    rest = {key: values for key, values in groups.items() if key not in scored}
    order = selection.rank(scored) + selection.rank(rest)
    return [shown[key] for key in order], bool(points)


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
