"""Hyperparameter search: Optuna over `params.yaml` keys, every trial a tracked MLflow child run.

    python -m pipeline.tune [--n-trials N] [--timeout S] [--study-name NAME] [--storage URL]
                            [--workers N] [-S key=value ...]

The launcher creates (or resumes) the study and its MLflow parent run, starts `--workers`
processes that each run trials with the `train` stage's own `fit_vae`, shows progress, and
at the end logs Optuna's figures and writes the best trial's params as overrides.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from ruamel.yaml import YAML

import optuna
from pipeline import tracking
from pipeline.redact import redact
from pipeline.params import (
    Data,
    Dimension,
    Params,
    ParamsError,
    Tune,
    interrupt,
    parse_override,
    parse_params,
    read_params,
    run_stage,
    with_overrides,
)

BEST_PARAMS = Path("sweep/best_params.yaml")
SUMMARY = Path("sweep/summary.json")
JOURNAL = Path("optuna/journal.log")
PARENT_RUN_ATTR = "mlflow_parent_run_id"
PARENT_WAIT = 60  # seconds a joining launcher waits for the study's creator to make the parent run
# "N trials" counts finished ones, whatever their end; a FAIL retried after a heartbeat counts once more.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# The searched metric: negative ELBO on the validation split, never the test set.
MONITOR = "val_loss"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; every option defaults to the `tune:` section of params.yaml."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--n-trials", type=int, help="finished trials wanted in the study, in total")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--study-name")
    parser.add_argument(
        "--storage", help="journal file path, or postgresql://user@host:port/db (password in PGPASSWORD)"
    )
    parser.add_argument("--workers", type=int, help="worker processes on this machine")
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key"
    )
    parser.add_argument(
        "--print-best", action="store_true", help="print the best params as `dvc exp run` -S arguments"
    )
    return parser.parse_args(argv)


def resolve_params(args: argparse.Namespace) -> tuple[dict[str, Any], Params]:
    """The trials' base params, validated before any trial.

    params.yaml, then its `tune.overrides` (the search budget), then `-S` and the
    options, so that what the user types wins.
    """
    overrides = dict(parse_override(text) for text in args.set)
    for option in ("n_trials", "timeout", "study_name", "storage", "workers"):
        if getattr(args, option) is not None:
            overrides[f"tune.{option}"] = getattr(args, option)
    budget = parse_params(with_overrides(read_params(), overrides)).tune.overrides
    raw = with_overrides(read_params(), {**budget, **overrides})
    return raw, parse_params(raw)


def storage_url(tune: Tune) -> str:
    """The storage as given, or the default journal file at the repository root."""
    return tune.storage or str(tracking.repo_root() / JOURNAL)


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
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
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
    """Train and validation images (uint8) for a data config, loaded once per worker."""
    from pipeline import data

    _, splits = data.load_splits(data_params, seed=seed)
    return splits["train"].images, splits["val"].images


def objective(trial: optuna.Trial, *, raw: dict[str, Any], parent_run_id: str) -> float:
    """Suggest values -> the `train` stage's `fit_vae` -> final validation negative ELBO."""
    from optuna_integration import KerasPruningCallback

    from pipeline.train import TrainingError, fit_vae

    params = parse_params(with_overrides(raw, suggest(trial, parse_params(raw).tune.space)))
    train_images, val_images = load_images(params.data, params.base.seed)
    with tracking.trial_run(params, parent_run_id=parent_run_id, trial_number=trial.number) as outcome:
        _, history = fit_vae(
            train_images,
            val_images,
            model=params.model,
            train=params.train,
            seed=params.base.seed,
            callbacks=[tracking.EpochMetrics(), KerasPruningCallback(trial, MONITOR)],
            verbose=0,
        )
        value = history[MONITOR][-1]
        if not math.isfinite(value):
            raise TrainingError(f"trial {trial.number}: {MONITOR} became {value}; training diverged")
        outcome["value"] = value
    return value


def work(raw: dict[str, Any], worker: int) -> None:
    """One worker process: run trials until the study holds `n_trials` finished ones."""
    from pipeline.train import TrainingError

    signal.signal(signal.SIGTERM, interrupt)  # the launcher stops workers with SIGTERM
    params = parse_params(raw)
    tune = params.tune
    study = optuna.load_study(
        study_name=tune.study_name,
        storage=open_storage(tune),
        sampler=make_sampler(tune, params.base.seed + worker),
        pruner=make_pruner(tune, params.train.epochs),
    )
    if _finished(study) >= tune.n_trials:
        return
    study.optimize(
        functools.partial(objective, raw=raw, parent_run_id=study.user_attrs[PARENT_RUN_ATTR]),
        timeout=tune.timeout,
        # Running trials count too, so that workers on every machine stop once the trials
        # started add up to `n_trials`, rather than each starting one more.
        callbacks=[MaxTrialsCallback(tune.n_trials, states=(*FINISHED, TrialState.RUNNING))],
        catch=(TrainingError,),  # a diverged trial fails; the study goes on
        gc_after_trial=True,
    )


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_workers(raw: dict[str, Any], study: optuna.Study, n_workers: int, n_trials: int) -> None:
    """Start the worker processes and show a progress bar over finished trials until they end."""
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    processes = [
        context.Process(target=work, args=(raw, i), name=f"tune-worker-{i}") for i in range(n_workers)
    ]
    for process in processes:
        process.start()
    try:
        with tqdm(total=n_trials, initial=min(_finished(study), n_trials), unit="trial") as bar:
            while any(p.is_alive() for p in processes):
                time.sleep(1.0)
                done = min(_finished(study), n_trials)
                if done != bar.n:  # redraw only on progress, so logs get a line per trial
                    bar.update(done - bar.n)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes ended with an error: {', '.join(failed)}")


def study_figures(study: optuna.Study, space: dict[str, Dimension]) -> dict[str, Any]:
    """Optuna's own figures, as far as the finished trials allow each one."""
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
    if counts["COMPLETE"]:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
    return summary


def write_best(summary: dict[str, Any], study_name: str) -> None:
    """The best params as a YAML file of params.yaml overrides, and the summary as JSON."""
    BEST_PARAMS.parent.mkdir(parents=True, exist_ok=True)
    with open(BEST_PARAMS, "w") as handle:
        handle.write(
            f"# Best trial {summary['best_trial']} of study {study_name!r}: "
            f"{MONITOR} {summary['best_value']:.3f}\n"
            "# Re-train through DVC: dvc exp run $(python -m pipeline.tune --print-best)\n"
        )
        YAML(typ="safe", pure=True).dump(summary["best_params"], handle)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


def dvc_args(path: Path = BEST_PARAMS) -> str:
    """`-S key=value ...` for `dvc exp run`, from the best params file."""
    from pipeline.params import read_yaml

    return " ".join(f"-S {key}={value}" for key, value in read_yaml(path).items())


def join_study(params: Params) -> tuple[optuna.Study, str]:
    """Create the study and its MLflow parent run, or join them; return both.

    Creating a study is atomic in every Optuna storage, so of launchers starting at once,
    on one machine or on several, exactly one creates the study and then its parent run;
    the others wait for the parent run's id to appear in the study's attributes.
    """
    tune = params.tune
    storage = open_storage(tune)
    try:
        study = optuna.create_study(study_name=tune.study_name, storage=storage, direction="minimize")
        parent_run_id = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=tune.study_name, storage=storage)
        deadline = time.monotonic() + PARENT_WAIT
        while PARENT_RUN_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.5)
        parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # None: its creator died first
    run_id = tracking.study_run(
        params, study_name=tune.study_name, storage=storage_url(tune), run_id=parent_run_id
    )
    if parent_run_id is None:
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return study, run_id


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_best:
        print(dvc_args())
        return
    raw, params = resolve_params(args)
    tune = params.tune
    if not tune.space:
        raise ParamsError("tune.space: empty, so there is nothing to search")

    study, parent_run_id = join_study(params)

    started = time.monotonic()
    status = "FAILED"
    try:
        run_workers(raw, study, tune.workers, tune.n_trials)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary = {**summarise(study), "seconds": round(time.monotonic() - started, 1)}
        tracking.end_study_run(
            parent_run_id, summary=summary, figures=study_figures(study, tune.space), status=status
        )
    print(
        f"tune: study {tune.study_name!r} in {redact(storage_url(tune))}\n"
        f"  trials: {summary['trials_complete']} complete, {summary['trials_pruned']} pruned, "
        f"{summary['trials_failed']} failed ({summary['seconds']} s this session)\n"
        f"  MLflow parent run: {tracking.run_link(parent_run_id)}{tracking.ui_hint()}"
    )
    if "best_params" in summary:
        write_best(summary, tune.study_name)
        print(
            f"  best {MONITOR}: {summary['best_value']:.3f} (trial {summary['best_trial']}) "
            f"with {summary['best_params']}\n"
            f"  written to {BEST_PARAMS}; re-train: dvc exp run $(python -m pipeline.tune --print-best)"
        )


if __name__ == "__main__":
    run_stage(main)
