"""A study's identity: the settings its trials were drawn under, its MLflow parent run, and how
many of its trials have ended."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline import configuration
from pipeline.params import Params, Tune
from pipeline.search.storage import open_storage, storage_url
from pipeline.tracking import sweep_runs

PARENT_RUN_ATTR = "mlflow_parent_run_id"
SETTINGS_ATTR = "settings"  # `study_settings` of the study's trials
PARENT_WAIT = 60  # seconds a joining launcher waits for the study's creator to make the parent run
# "N trials" counts finished ones, whatever their end; a FAIL retried after a heartbeat counts once more.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def objectives(tune: Tune) -> tuple[str, ...]:
    """What the study minimises, as `optuna-dashboard` names its axes."""
    if tune.objective == "rate_distortion":
        return ("rate: validation KL", "distortion: validation reconstruction")
    return ("val_loss",)


def finished_count(study: optuna.Study) -> int:
    """Trials that ended, whatever their end."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def sampler_seed(params: Params) -> int:
    """The seed the sampler draws from: `tune.sampler_seed`, or `base.seed` where it is null."""
    return params.base.seed if params.tune.sampler_seed is None else params.tune.sampler_seed


def study_settings(params: Params) -> dict[str, Any]:
    """What decides a study's trials: the space, the trials' own settings (their budget and data
    settings among them, as `configuration.settings` writes them) and training seed, the objective,
    the sampler and its seed, the pruner, and the confirming. Not how many trials, where, on how many
    workers or for how long."""
    tune = params.tune
    return {
        "space": {key: dim.model_dump(exclude_defaults=True) for key, dim in sorted(tune.space.items())},
        "trials": {k: v for k, v in configuration.settings(params).items() if k not in tune.space},
        "trial_seed": params.train.seed,  # the searched trials', which the confirming seeds follow
        "sampler": tune.sampler,
        "seed": sampler_seed(params),
        "pruner": [tune.pruner, tune.pruner_startup_trials, tune.pruner_warmup_epochs],
        "confirm": [
            tune.confirm_top,
            tune.confirm_seeds,
            *([tune.confirm_overrides] if tune.confirm_overrides else []),
        ],
        # Only where it is not the default, so that studies drawn before the key keep their identity.
        **({"objective": tune.objective} if tune.objective != "val_loss" else {}),
    }


def settings_digest(settings: dict[str, Any]) -> str:
    """Eight hex digits of `study_settings`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def study_for(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any]) -> tuple[str, str]:
    """The study that holds trials drawn under `settings`: `name` itself if it does (or holds no
    finished trial yet), `name-<digest>` otherwise; and a line saying why, when it is not `name`."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study: it will be created with these settings
        return name, ""
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded == settings or (recorded is None and not finished_count(study)):
        return name, ""  # the same settings, or a study with no trial yet (trials queued into it)
    actual = f"{name}-{settings_digest(settings)}"
    changed = sorted(k for k in settings if recorded is None or recorded.get(k) != settings[k])
    why = "its settings were not recorded" if recorded is None else f"changed: {', '.join(changed)}"
    return actual, (
        f"tune: study {name!r} was drawn under other settings ({why}); these settings' study is {actual!r}"
    )


def join_study(params: Params) -> tuple[optuna.Study, str]:
    """Create the study for these settings and its MLflow parent run, or join them; return both.

    A study is bound to `study_settings`: the same settings resume it, changed ones go to a
    study of their own (`study_for`), so its best is always drawn from the space as it is now.
    Creating a study is atomic in every Optuna storage, so of launchers starting at once,
    on one machine or on several, exactly one creates the study and then its parent run;
    the others wait for the parent run's id to appear in the study's attributes.
    """
    tune = params.tune
    storage = open_storage(tune)
    settings = study_settings(params)
    name, why = study_for(storage, tune.study_name, settings)
    if why:
        print(why)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, directions=["minimize"] * len(objectives(tune))
        )
        parent_run_id = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.monotonic() + PARENT_WAIT
        while PARENT_RUN_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.5)
        parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # None: its creator died first
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings)
    if len(study.directions) > 1 and study.metric_names is None:  # also one made to queue trials in
        study.set_metric_names(list(objectives(tune)))  # optuna-dashboard's axes
    run_id = sweep_runs.study_run(params, study_name=name, storage=storage_url(tune), run_id=parent_run_id)
    if parent_run_id is None:
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return study, run_id


def fail_trials(study: optuna.Study, numbers: list[int]) -> None:
    """Mark FAIL the trials of workers that were killed before they could end them."""
    for number in numbers:
        with contextlib.suppress(ValueError, RuntimeError):  # it ended after all
            study.tell(number, state=TrialState.FAIL)
