"""Optuna's side of a sweep: storage, sampler, pruner, the objective, a worker's loop, the results.

Each trial calls the `train` stage's own `fit_vae` and is one MLflow child run of the study's run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from pipeline import configuration, selection
from pipeline.params import Data, Dimension, Params, Tune, parse_params, with_overrides
from pipeline.quiet import start_tensorflow
from pipeline.stage import catch_sigterm
from pipeline.tracking import store, sweep_runs

JOURNAL = Path("optuna/journal.log")
PARENT_RUN_ATTR = "mlflow_parent_run_id"
SETTINGS_ATTR = "settings"  # `study_settings` of the study's trials
PARENT_WAIT = 60  # seconds a joining launcher waits for the study's creator to make the parent run
# "N trials" counts finished ones, whatever their end; a FAIL retried after a heartbeat counts once more.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# The searched metric: negative ELBO on the validation split, never the test set.
MONITOR = "val_loss"
# A confirming trial's user attributes: the trial it repeats, and its training seed.
REPLICATE_OF = "replicate_of"
SEED = "train.seed"
DIVERGED = "diverged"  # a failed trial's user attribute when its training diverged


def storage_url(tune: Tune) -> str:
    """The storage as given, or the default journal file at the repository root."""
    return tune.storage or str(store.repo_root() / JOURNAL)


def open_storage(tune: Tune) -> optuna.storages.BaseStorage:
    """A journal file (safe for processes on one machine) or an RDB such as PostgreSQL (many machines)."""
    url = storage_url(tune)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    from sqlalchemy.exc import IntegrityError

    # Launchers on several machines meeting a fresh database all create Optuna's tables, and
    # PostgreSQL refuses all but one of them; a moment later the tables are there.
    for wait in (1.0, 2.0):
        try:
            return _rdb_storage(url, tune)
        except IntegrityError:
            time.sleep(wait)
    return _rdb_storage(url, tune)


def _rdb_storage(url: str, tune: Tune) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            heartbeat_interval=tune.heartbeat_interval,
            grace_period=tune.grace_period,
            # A trial whose worker died is marked FAIL and run again, once.
            heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1),
        )


def make_sampler(tune: Tune, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if tune.sampler == "tpe":
            # The constant liar: running trials count as bad ones, so parallel workers spread out
            # rather than all sampling next to the same best trial.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if tune.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(tune: Tune, epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs, the median rule, or none."""
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
        )
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """One value per searched key, named as in params.yaml."""
    values = {}
    for key, dim in space.items():
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, dim.choices)
        elif dim.is_int:
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=int(dim.step or 1), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


@functools.cache
def load_images(data_params: Data, seed: int):
    """Train and validation images (uint8) for a data config, and the digest of its splits (as
    `prepare` writes it), loaded once per worker."""
    from pipeline import data

    _, splits = data.load_splits(data_params, seed=seed)
    return splits["train"].images, splits["val"].images, data.digest(splits)


def objective(trial: optuna.Trial, *, raw: dict[str, Any], parent_run_id: str, tags: dict[str, str]) -> float:
    """Suggest values -> the training loop the `train` stage uses -> final validation negative ELBO."""
    from optuna_integration import KerasPruningCallback

    from pipeline.tracking import callbacks
    from pipeline.training import TrainingError, fit_vae

    values = suggest(trial, parse_params(raw).tune.space)
    replicate_of = trial.user_attrs.get(REPLICATE_OF)
    if replicate_of is not None:  # a confirming trial: the same values, another seed, never pruned
        earlier = duplicate_of(trial.study, trial)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier)
            raise optuna.TrialPruned(f"trial {earlier} runs this configuration and seed")
        values[SEED] = trial.user_attrs[SEED]
        tags = {**tags, "optuna.replicate_of": str(replicate_of)}
    params = parse_params(with_overrides(raw, values))
    train_images, val_images, data_digest = load_images(params.data, params.base.seed)
    pruning = [] if replicate_of is not None else [KerasPruningCallback(trial, MONITOR)]
    with sweep_runs.trial_run(
        params,
        config=configuration.config_id(params, data_digest),
        data_digest=data_digest,
        parent_run_id=parent_run_id,
        trial_number=trial.number,
        tags=tags,
    ) as outcome:
        try:
            _, history = fit_vae(
                train_images,
                val_images,
                model=params.model,
                train=params.train,
                seed=params.train.seed,
                callbacks=[callbacks.EpochMetrics(), *pruning],
                active_threshold=params.evaluate.active_threshold,
                verbose=0,
            )
            # With early stopping the model kept is the best epoch's, and so is the trial's value.
            value = min(history[MONITOR]) if params.train.early_stopping else history[MONITOR][-1]
            if not math.isfinite(value):
                raise TrainingError(f"trial {trial.number}: {MONITOR} became {value}; training diverged")
        except TrainingError:  # a failure of the settings, not of the machine
            outcome["diverged"] = True
            trial.set_user_attr(DIVERGED, True)
            raise
        outcome["value"] = value
    return value


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial that Ctrl-C or SIGTERM stopped with its traceback: some 150 frames
    of TensorFlow, twice per worker, that say nothing. Its one-line message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


def work(raw: dict[str, Any], worker: int, threads: int) -> None:
    """One worker process: run trials until the study holds `n_trials` finished ones.

    Stopped (SIGTERM, from the launcher or a `kill` of the process group), it ends its trial
    FAILED and exits with status 130 and one line: no traceback to fill a pipe or a console.
    """
    catch_sigterm()  # the launcher stops workers with SIGTERM
    try:
        _work(raw, worker, threads)
    except KeyboardInterrupt:
        print(f"tune: worker {worker} stopped", file=sys.stderr)
        raise SystemExit(130) from None


def _work(raw: dict[str, Any], worker: int, threads: int) -> None:
    start_tensorflow()  # quietly: a worker process is a runner of its own
    from pipeline.training import TrainingError, set_threads

    tags = set_threads(threads)  # before TensorFlow's first op, which fixes its pools

    logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptTraceback())
    params = parse_params(raw)
    tune = params.tune
    study = optuna.load_study(
        study_name=tune.study_name,
        storage=open_storage(tune),
        sampler=make_sampler(tune, params.base.seed + worker),
        pruner=make_pruner(tune, params.train.epochs),
    )
    if finished_count(study) >= tune.n_trials:
        return
    study.optimize(
        functools.partial(objective, raw=raw, parent_run_id=study.user_attrs[PARENT_RUN_ATTR], tags=tags),
        timeout=tune.timeout,
        # Running trials count too, so that workers on every machine stop once the trials
        # started add up to `n_trials`, rather than each starting one more.
        callbacks=[MaxTrialsCallback(tune.n_trials, states=(*FINISHED, TrialState.RUNNING))],
        catch=(TrainingError,),  # a diverged trial fails; the study goes on
        gc_after_trial=True,
    )


def finished_count(study: optuna.Study) -> int:
    """Trials that ended, whatever their end."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def study_settings(params: Params) -> dict[str, Any]:
    """What decides a study's trials: the space, the trials' own settings (their budget and data
    settings among them, as `configuration.settings` writes them) and training seed, the sampler
    and its seed, the pruner, and the confirming. Not how many trials, where, on how many
    workers or for how long."""
    tune = params.tune
    return {
        "space": {key: dim.model_dump(exclude_defaults=True) for key, dim in sorted(tune.space.items())},
        "trials": {k: v for k, v in configuration.settings(params).items() if k not in tune.space},
        "trial_seed": params.train.seed,  # the searched trials', which the confirming seeds follow
        "sampler": tune.sampler,
        "seed": params.base.seed,
        "pruner": [tune.pruner, tune.pruner_startup_trials, tune.pruner_warmup_epochs],
        "confirm": [tune.confirm_top, tune.confirm_seeds],
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
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
        parent_run_id = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.monotonic() + PARENT_WAIT
        while PARENT_RUN_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.5)
        parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # None: its creator died first
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings)
    run_id = sweep_runs.study_run(params, study_name=name, storage=storage_url(tune), run_id=parent_run_id)
    if parent_run_id is None:
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return study, run_id


def study_figures(study: optuna.Study, space: dict[str, Dimension]) -> dict[str, Any]:
    """Optuna's own figures, as far as the complete trials allow each one; none without one."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {}
    from optuna.visualization import matplotlib as vis

    plots = {
        "optimization_history.png": lambda: vis.plot_optimization_history(study),
        "param_importances.png": lambda: vis.plot_param_importances(study),
        "intermediate_values.png": lambda: vis.plot_intermediate_values(study),
    }
    if {"model.latent_dim", "train.learning_rate"} <= set(space):
        plots["contour_latent_dim_learning_rate.png"] = lambda: vis.plot_contour(
            study, params=["model.latent_dim", "train.learning_rate"]
        )
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in plots.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError) as exc:  # e.g. too few complete trials for importances
                print(f"tune: no {name}: {exc}", file=sys.stderr)
                continue
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
            figure.set_size_inches(8, 6)
            figure.tight_layout()
            figures[name] = figure
    return figures


def fail_trials(study: optuna.Study, numbers: list[int]) -> None:
    """Mark FAIL the trials of workers that were killed before they could end them."""
    for number in numbers:
        with contextlib.suppress(ValueError, RuntimeError):  # it ended after all
            study.tell(number, state=TrialState.FAIL)


def configurations(study: optuna.Study) -> dict[int, list[float]]:
    """`selection.sweep_groups` of the study: by searched trial, its value, then its confirming
    seeds' (NaN for one whose training diverged)."""
    entries = []
    for trial in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        if REPLICATE_OF not in trial.user_attrs:
            if trial.state == TrialState.COMPLETE:
                entries.append((trial.number, None, trial.value))
        elif trial.state == TrialState.COMPLETE or trial.user_attrs.get(DIVERGED):
            value = trial.value if trial.state == TrialState.COMPLETE else math.nan
            entries.append((trial.user_attrs[REPLICATE_OF], trial.user_attrs[SEED], value))
        # Neither: a duplicate that stood down (pruned), or a worker stopped or killed: queued again.
    return selection.sweep_groups(entries)


def duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """An earlier trial queued for the same configuration and seed that has not failed: the one
    that runs it. Launchers on several machines can queue a confirming seed at the same moment."""
    key = (trial.user_attrs[REPLICATE_OF], trial.user_attrs[SEED])
    for other in study.get_trials(
        deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    ):
        if (
            other.number < trial.number
            and (other.user_attrs.get(REPLICATE_OF), other.user_attrs.get(SEED)) == key
        ):
            return other.number
    return None


def enqueue_replicates(study: optuna.Study, top: int, seeds: int, first_seed: int) -> int:
    """Queue `seeds` more trials, at seeds `first_seed + 1...`, of each of the `top` best searched
    trials, unless the study already holds them; return how many finished trials the study will
    hold once they have run.

    Optuna's own queue: the workers take these first, with the trial's values as fixed params.
    """
    groups = configurations(study)
    trials = study.get_trials(deepcopy=False)
    searched = [trials[number] for number in sorted(groups, key=lambda n: groups[n][0])[:top]]
    standing = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    held = {  # a seed whose worker was stopped or killed, or that stood down, is queued again
        (t.user_attrs[REPLICATE_OF], t.user_attrs[SEED])
        for t in trials
        if REPLICATE_OF in t.user_attrs and (t.state in standing or t.user_attrs.get(DIVERGED))
    }
    waiting = sum(t.state not in FINISHED for t in trials if REPLICATE_OF in t.user_attrs)
    for trial in searched:
        for seed in range(first_seed + 1, first_seed + 1 + seeds):
            if (trial.number, seed) not in held:
                study.enqueue_trial(trial.params, user_attrs={REPLICATE_OF: trial.number, SEED: seed})
                held.add((trial.number, seed))
                waiting += 1
    return finished_count(study) + waiting


def best_configuration(study: optuna.Study) -> dict[str, Any] | None:
    """The searched trial whose values rank first by `selection.rank` over `selection.confirmed`
    (confirming seeds only, once any trial was confirmed); None before any completes."""
    groups = configurations(study)
    if not groups:
        return None
    scored = selection.confirmed(groups)
    number = selection.rank(scored)[0]
    values = list(scored[number])
    return {
        "best_trial": number,
        "best_params": study.get_trials(deepcopy=False)[number].params,
        "best_value": selection.score(values),
        "best_values": values,
        "best_sd": statistics.stdev(values)
        if len(values) > 1 and math.isfinite(selection.score(values))
        else None,
        "best_confirmed": len(groups[number]) > 1,  # then best_values leave out the selecting seed
        "confirmed_trials": len([values for values in groups.values() if len(values) > 1]),
        "best_selected_by": groups[number][0],  # the searched trial's own value: optimistic for it
    }


def summarise(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, and the best trial if any completed."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    summary: dict[str, Any] = {
        "trials_complete": counts["COMPLETE"],
        "trials_pruned": counts["PRUNED"],
        "trials_failed": counts["FAIL"],
    }
    ended = [t for t in trials if t.datetime_start and t.datetime_complete]
    if ended:  # across every session that worked on the study
        span = max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)
        summary["study_wall_seconds"] = round(span.total_seconds(), 1)
    summary.update(best_configuration(study) or {})
    return summary
