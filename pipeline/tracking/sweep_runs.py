"""A sweep in MLflow: the study's parent run and one child run per Optuna trial."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from pipeline import selection
from pipeline.environment import environment_tags, git_state
from pipeline.params import Params
from pipeline.redact import redact
from pipeline.tracking.runs import (
    configuration_tags,
    log_lock,
    loggable,
    run_description,
    run_name,
    watch_system,
)
from pipeline.tracking.store import configure, mark_dead_runs, owner_tags

# Optuna trial states as MLflow run statuses: a pruned trial was stopped on purpose.
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def study_run(params: Params, *, study_name: str, storage: str, run_id: str | None) -> str:
    """Create (or re-open, given `run_id`) the study's parent run; return its id, left RUNNING."""
    experiment_id = configure(params.base.tracking.experiment)
    client = mlflow.MlflowClient()
    if run_id is None:
        tags = {
            **git_state(Path.cwd()),
            **environment_tags(),
            **owner_tags(),
            "pipeline.stage": "tune",
            "optuna.study_name": study_name,
        }
        tags["mlflow.note.content"] = (
            f"Optuna study `{study_name}` ({redact(storage)}): each child run is one trial. "
            f"Compare its best trials with `python -m pipeline.compare --study {study_name}`."
        )
        run = client.create_run(experiment_id, run_name=f"study {study_name}", tags=tags)
        run_id = run.info.run_id
        values = [
            mlflow.entities.Param(k, str(v))
            for k, v in {"optuna.storage": redact(storage), **loggable(params)}.items()
        ]
        for start in range(0, len(values), 100):  # the most log_batch takes at once
            client.log_batch(run_id, params=values[start : start + 100])
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in owner_tags().items():
            client.set_tag(run_id, key, value)
    return run_id


def end_study_run(
    run_id: str,
    *,
    summary: dict[str, Any],
    figures: dict[str, Any],
    status: str,
    tables: dict[str, dict[str, list]] | None = None,  # JSON file -> {"columns": [...], "data": [rows]}
) -> None:
    """Record the study's outcome, its figures and `tables` on its parent run."""
    client = mlflow.MlflowClient()
    numbers = {
        k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in numbers.items()])
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"figures/{name}")
    for name, table in (tables or {}).items():
        # Written whole, so replaced when a resumed study ends again, where MLflow's `log_table`
        # would append its rows a second time.
        client.log_dict(run_id, table, name)
    client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def trial_run(
    params: Params,
    *,
    config: str,
    data_digest: str,
    parent_run_id: str,
    trial_number: int,
    tags: dict[str, str],
) -> Iterator[dict[str, Any]]:
    """A child run for one Optuna trial with the full effective params and the worker's `tags`.

    The block sets `outcome["value"]` (and, in a two-objective study, `"rate"` and
    `"distortion"`), or `outcome["diverged"]` (tagged `optuna.diverged`) when training diverged;
    the run's status and `optuna.state` tag follow how the block ends: normally (COMPLETE), by
    `optuna.TrialPruned` (PRUNED), or otherwise (FAIL).
    """
    from optuna import TrialPruned  # here, so the stages that never prune do not import Optuna

    experiment_id = configure(params.base.tracking.experiment)
    tags = {
        **tags,
        **environment_tags(),
        "mlflow.parentRunId": parent_run_id,
        "optuna.trial_number": str(trial_number),
        "pipeline.stage": "trial",
        **configuration_tags(config, data_digest),
        "mlflow.note.content": run_description(params, f"Optuna trial {trial_number}", {}, config),
        **owner_tags(),
    }
    outcome: dict[str, Any] = {}
    state = "FAIL"
    name = f"trial {trial_number}: {run_name(params)}"
    watch_system(params.base.tracking.system_metrics_interval)
    mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        parent_run_id=parent_run_id,
        tags=tags,
        log_system_metrics=True,
    )
    try:
        mlflow.log_params(loggable(params))
        log_lock()
        yield outcome
        state = "COMPLETE"
    except TrialPruned:
        state = "PRUNED"
        raise
    finally:
        mlflow.set_tag("optuna.state", state)
        if outcome.get("diverged"):
            mlflow.set_tag("optuna.diverged", "true")
        if "value" in outcome:
            mlflow.log_metric(selection.TRIAL_SELECT_BY, outcome["value"])
        if "rate" in outcome:
            mlflow.log_metrics(
                {selection.TRIAL_RATE: outcome["rate"], selection.TRIAL_DISTORTION: outcome["distortion"]}
            )
        mlflow.end_run(status=TRIAL_STATUS[state])


def close_dead_trial_runs(parent_run_id: str) -> list[int]:
    """Mark FAILED the runs that killed workers of this host left RUNNING; return their trial numbers."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    numbers = []
    for run_id in mark_dead_runs(experiment_id):
        tags = client.get_run(run_id).data.tags
        if tags.get("mlflow.parentRunId") == parent_run_id and "optuna.trial_number" in tags:
            numbers.append(int(tags["optuna.trial_number"]))
    return numbers
