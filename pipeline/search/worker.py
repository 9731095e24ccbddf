"""A worker process: it draws settings from the study's sampler and trains each trial with the
`train` stage's own `fit_vae`, one MLflow child run of the study's run per trial."""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import warnings
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from pipeline import backend, configuration
from pipeline.params import Data, Dimension, Tune, parse_params, with_overrides
from pipeline.search.best import DIVERGED, REPLICATE_OF, SEED, duplicate_of
from pipeline.search.storage import open_storage
from pipeline.search.study import FINISHED, PARENT_RUN_ATTR, finished_count, sampler_seed
from pipeline.stage import catch_sigterm
from pipeline.tracking import sweep_runs

# The searched metric: negative ELBO on the validation split, never the test set.
MONITOR = "val_loss"


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


def objective(
    trial: optuna.Trial, *, raw: dict[str, Any], parent_run_id: str, tags: dict[str, str]
) -> float | tuple[float, float]:
    """Suggest values -> the training loop the `train` stage uses -> the validation negative ELBO of
    the model kept, or its two parts (rate, distortion) where the study has two objectives.

    Optuna prunes single-objective studies only (`Trial.report` refuses several objectives), so a
    two-objective trial runs its whole budget."""
    from optuna_integration import KerasPruningCallback

    from pipeline.tracking import callbacks
    from pipeline.training import TrainingError, fit_vae

    tune = parse_params(raw).tune
    values = suggest(trial, tune.space)
    replicate_of = trial.user_attrs.get(REPLICATE_OF)
    if replicate_of is not None:  # a confirming trial: the same values, another seed, never pruned
        earlier = duplicate_of(trial.study, trial)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier)
            raise optuna.TrialPruned(f"trial {earlier} runs this configuration and seed")
        values.update({**tune.confirm_overrides, SEED: trial.user_attrs[SEED]})  # and its budget
        tags = {**tags, "optuna.replicate_of": str(replicate_of)}
    params = parse_params(with_overrides(raw, values))
    train_images, val_images, data_digest = load_images(params.data, params.base.seed)
    two = len(trial.study.directions) > 1
    pruning = [] if replicate_of is not None or two else [KerasPruningCallback(trial, MONITOR)]
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
            losses = history[MONITOR]
            kept = losses.index(min(losses)) if params.train.early_stopping else len(losses) - 1
            value = losses[kept]
            if not math.isfinite(value):
                raise TrainingError(f"trial {trial.number}: {MONITOR} became {value}; training diverged")
        except TrainingError:  # a failure of the settings, not of the machine
            outcome["diverged"] = True
            trial.set_user_attr(DIVERGED, True)
            raise
        outcome["value"] = value
        if two:
            outcome["rate"] = history["val_kl"][kept]
            outcome["distortion"] = history["val_reconstruction"][kept]
            return outcome["rate"], outcome["distortion"]
    return value


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial that Ctrl-C or SIGTERM stopped with its traceback: some 150 frames
    of TensorFlow, twice per worker, that say nothing. Its one-line message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


def work(raw: dict[str, Any], worker: int, threads: int, place: dict[str, Any]) -> None:
    """One worker process: run trials until the study holds `n_trials` finished ones, on the
    GPU or cores of `place` (`tune.placements`).

    Stopped (SIGTERM, from the launcher or a `kill` of the process group), it ends its trial
    FAILED and exits with status 130 and one line: no traceback to fill a pipe or a console.
    """
    catch_sigterm()  # the launcher stops workers with SIGTERM
    try:
        _work(raw, worker, threads, place)
    except KeyboardInterrupt:
        print(f"tune: worker {worker} stopped", file=sys.stderr)
        raise SystemExit(130) from None


def _work(raw: dict[str, Any], worker: int, threads: int, place: dict[str, Any]) -> None:
    params = parse_params(raw)
    if "gpu" in place:
        os.environ["CUDA_VISIBLE_DEVICES"] = place["gpu"]
    # A worker process is a runner of its own: it starts Keras' backend before importing Keras.
    tags = backend.start(
        params.base.backend,
        threads=threads,
        cores=place.get("cores") if params.base.backend == "jax" else None,
        gpu_share=place.get("gpu_share"),
    )
    from pipeline.training import TrainingError

    logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptTraceback())
    tune = params.tune
    study = optuna.load_study(
        study_name=tune.study_name,
        storage=open_storage(tune),
        sampler=make_sampler(tune, sampler_seed(params) + worker),
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
