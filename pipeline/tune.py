"""Hyperparameter search: Optuna over `params.yaml` keys, every trial a tracked MLflow child run.

    python -m pipeline.tune [--n-trials N] [--timeout S] [--study-name NAME] [--storage URL]
                            [--workers N] [-S key=value ...]

The launcher creates (or resumes) the study and its MLflow parent run, starts `--workers`
processes that each run trials with the `train` stage's own `fit_vae`, shows progress, and
at the end logs Optuna's figures and writes the best trial's params as overrides.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML

from pipeline.environment import visible_gpus
from pipeline.params import (
    Dimension,
    Params,
    ParamsError,
    Tune,
    parse_override,
    parse_params,
    read_params,
    read_yaml,
    with_overrides,
)
from pipeline.redact import redact
from pipeline.stage import run_stage

if TYPE_CHECKING:
    import optuna


BEST_PARAMS = Path("sweep/best_params.yaml")
# Available memory each `auto` worker needs: one adds about 0.9 GiB at its peak (bench/sweep_speed.py).
WORKER_MEMORY = 2 * 2**30
GPU_MEMORY = 0.9  # the share of a GPU's memory that the JAX workers on it divide among them
SUMMARY = Path("sweep/summary.json")
FRONT_TABLE = "pareto_front.json"  # the parent run's table of a two-objective study's front


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; every option defaults to the `tune:` section of params.yaml."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--n-trials", type=int, help="finished trials wanted in the study, in total")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--study-name")
    parser.add_argument(
        "--storage", help="journal file path, or postgresql://user@host:port/db (password in PGPASSWORD)"
    )
    parser.add_argument(
        "--workers",
        type=workers_arg,
        help="worker processes on this machine: a number, or auto (one per core)",
    )
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key"
    )
    parser.add_argument(
        "--print-best", action="store_true", help="print the best params as `dvc exp run` -S arguments"
    )
    parser.add_argument(
        "--rank",
        type=rank_arg,
        help="with --print-best: the configuration ranked K-th instead (sweep/summary.json's ranking)",
    )
    return parser.parse_args(argv)


def rank_arg(text: str) -> int:
    """`--rank`: a whole number from 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return int(text)


def workers_arg(text: str) -> int | str:
    """`--workers`: "auto" or a whole number."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


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
    params = parse_params(raw)
    check_space(raw, params.tune.space)
    if params.tune.confirm_overrides:
        confirming = with_overrides(raw, params.tune.confirm_overrides)
        try:
            parse_params(confirming)
        except ParamsError as error:
            raise ParamsError(f"tune.confirm_overrides: {error}") from None
        check_space(confirming, params.tune.space, "confirming trials")
    return raw, params


def check_space(raw: dict[str, Any], space: dict[str, Dimension], trials: str = "trials") -> None:
    """Stop before any trial if a searched value cannot run at the trials' budget (a warm-up as long
    as the trial), rather than fail every trial that draws it."""
    for key, dim in space.items():
        for value in dim.choices if dim.choices is not None else (dim.low, dim.high):
            try:
                parse_params(with_overrides(raw, {key: value}))
            except ParamsError as error:
                raise ParamsError(f"tune.space: {key} = {value} at the {trials}' budget: {error}") from None


def plan(tune: Tune, trials_left: int, gpus: int = 0) -> tuple[int, int]:
    """How many worker processes, and how many TensorFlow threads each (0: TensorFlow's default).

    `auto` workers: one per core this process may use, or where there are `gpus`,
    `tune.trials_per_gpu` per GPU (one small trial leaves most of a GPU idle); as many as the
    available memory holds, and no more than the trials left. On the CPU, one single-threaded
    worker per core beats one worker with every core: this model is too small for TensorFlow to
    keep several threads busy (bench/sweep_speed.py). `auto` threads share the cores out evenly.
    """
    import psutil

    cores = len(os.sched_getaffinity(0))
    workers = tune.workers
    if workers == "auto":
        fits = psutil.virtual_memory().available // WORKER_MEMORY
        slots = min(gpus * tune.trials_per_gpu, cores) if gpus else cores  # each worker needs a core
        workers = max(1, min(slots, fits, trials_left))
    threads = tune.threads
    if threads == "auto":
        threads = max(1, cores // workers)
    return workers, threads


def placements(workers: int, threads: int, gpus: list[str]) -> list[dict[str, Any]]:
    """Where each worker runs. Where there are `gpus` (CUDA device ids), worker i gets GPU i mod
    their number and an equal share of its memory among the workers on it (JAX takes that
    share; TensorFlow grows into what it needs). Otherwise, with `threads` set and enough cores,
    cores of its own (JAX's threads follow them; TensorFlow's pools are sized by `threads`)."""
    usable = sorted(os.sched_getaffinity(0))
    placed: list[dict[str, Any]] = []
    for i in range(workers):
        if gpus:
            sharing = len(range(i % len(gpus), workers, len(gpus)))
            placed.append({"gpu": gpus[i % len(gpus)], "gpu_share": GPU_MEMORY / sharing})
        elif threads and workers * threads <= len(usable):
            placed.append({"cores": set(usable[i * threads : (i + 1) * threads])})
        else:
            placed.append({})
    return placed


def run_workers(
    raw: dict[str, Any],
    study: optuna.Study,
    *,
    n_trials: int,
    workers: int,
    threads: int,
    gpus: list[str],
    stop_timeout: float,
    parent_run_id: str,
) -> None:
    """Start the worker processes and show a progress bar over finished trials until they end.

    The bar's text holds the best value so far and the trials by how they ended. Stopped,
    the workers get `stop_timeout` seconds to end their trials; any still running then is
    killed, and its trial and run are marked failed here.
    """
    from tqdm import tqdm

    from pipeline.search.best import summarise
    from pipeline.search.study import fail_trials
    from pipeline.search.worker import MONITOR, work
    from pipeline.tracking import sweep_runs

    def progress() -> tuple[int, str]:
        summary = summarise(study)
        best = f"{summary['best_value']:.2f}" if "best_value" in summary else "-"
        counts = {state: summary[f"trials_{state}"] for state in ("complete", "pruned", "failed")}
        text = f"best {MONITOR} {best}; " + ", ".join(f"{n} {state}" for state, n in counts.items())
        return sum(counts.values()), text

    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    processes = [
        context.Process(target=work, args=(raw, i, threads, place), name=f"tune-worker-{i}")
        for i, place in enumerate(placements(workers, threads, gpus))
    ]
    for process in processes:
        process.start()
    try:
        done, text = progress()
        with tqdm(total=n_trials, initial=min(done, n_trials), unit="trial", postfix=text) as bar:
            while any(p.is_alive() for p in processes):
                time.sleep(1.0)
                done, text = progress()
                if min(done, n_trials) != bar.n:  # redraw only on progress: a log gets a line per trial
                    bar.set_postfix_str(text, refresh=False)
                    bar.update(min(done, n_trials) - bar.n)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + stop_timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        stuck = [process for process in processes if process.is_alive()]
        for process in stuck:
            process.kill()
            process.join()
        if stuck:
            fail_trials(study, sweep_runs.close_dead_trial_runs(parent_run_id))
            print(
                f"tune: killed {len(stuck)} worker(s) still running after {stop_timeout:g} s",
                file=sys.stderr,
            )
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes ended with an error: {', '.join(failed)}")


def describe_best(summary: dict[str, Any], monitor: str) -> str:
    """`selection score: val_loss 247.160 ± 0.210 over 2 other seeds, the lowest of 3 confirmed
    trials (trial 17, selected at 245.880)`: the score the best won on. Its confirming seeds did
    not select the trial, but they chose it among the confirmed ones, so the score is optimistic
    for it: a figure to report comes from seeds that chose nothing. Unconfirmed, its one seed's."""
    trial, value = summary["best_trial"], f"{summary['best_value']:.3f}"
    if not summary["best_confirmed"]:
        return f"selection score: {monitor} {value} (trial {trial}, one seed, not confirmed)"
    n, sd = len(summary["best_values"]), summary["best_sd"]
    spread = f" ± {sd:.3f}" if sd is not None else ""
    confirmed = summary.get("confirmed_trials", 1)
    members = "members of the rate-distortion front" if "front" in summary else "trials"
    among = f", the lowest of {confirmed} confirmed {members}" if confirmed > 1 else ""
    budget = " at the trials' budget" if summary.get("confirm_overrides") else ""
    selected = f"trial {trial}, selected at {summary['best_selected_by']:.3f}{budget}"
    return (
        f"selection score: {monitor} {value}{spread} over {n} other seed{'s' * (n != 1)}{among} ({selected})"
    )


def front_lines(front: list[dict[str, Any]]) -> list[str]:
    """The rate-distortion front, a line per member by rate: its selecting seed's figures, then
    its confirming seeds' means where it has them."""
    if not front:
        return []
    lines = [
        f"rate-distortion front: {len(front)} trials, on validation (nats), each at the seed that selected it"
    ]
    for row in front:
        again = ""
        if row["confirmed_val_loss"] is not None:
            again = f"; over {row['confirming_seeds']} other seeds val_loss {row['confirmed_val_loss']:.2f}"
            if row["confirmed_rate"] is not None:
                again += f" (rate {row['confirmed_rate']:.2f}, distortion {row['confirmed_distortion']:.2f})"
        lines.append(
            f"  trial {row['trial']}: rate {row['rate']:.2f}, distortion {row['distortion']:.2f}, "
            f"val_loss {row['val_loss']:.2f}{again}"
        )
    return lines


def front_table(front: list[dict[str, Any]]) -> dict[str, list]:
    """The front as MLflow's `log_table` writes a table, columns then rows (the params as
    `dvc exp run` -S arguments)."""
    columns = [key for key in front[0] if key != "params"]
    rows = [[row[key] for key in columns] for row in front]
    for row, member in zip(rows, front, strict=True):
        row.append(" ".join(f"-S {k}={v}" for k, v in member["params"].items()))
    return {"columns": [*columns, "params"], "data": rows}


def write_best(summary: dict[str, Any], study_name: str, monitor: str) -> None:
    """The best params as a YAML file of params.yaml overrides, and the summary as JSON."""
    BEST_PARAMS.parent.mkdir(parents=True, exist_ok=True)
    with open(BEST_PARAMS, "w") as handle:
        handle.write(
            f"# Best of study {study_name!r}: {describe_best(summary, monitor)}\n"
            "# Re-train through DVC: dvc exp run $(python -m pipeline.tune --print-best)\n"
        )
        YAML(typ="safe", pure=True).dump(summary["best_params"], handle)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


def dvc_args(path: Path = BEST_PARAMS) -> str:
    """`-S key=value ...` for `dvc exp run`, from the best params file."""
    return " ".join(f"-S {key}={value}" for key, value in read_yaml(path).items())


def ranked_args(rank: int, path: Path = SUMMARY) -> str:
    """`-S key=value ...` for the configuration the sweep's summary ranks `rank`-th."""
    if not path.exists():
        raise ParamsError(f"--rank: no {path}; run the sweep first")
    ranking = json.loads(path.read_text()).get("ranking", [])
    if rank > len(ranking):
        raise ParamsError(
            f"--rank {rank}: {path} ranks {len(ranking)} configurations (once any trial is confirmed, "
            "the confirmed ones that did not diverge; tune.confirm_top confirms more)"
        )
    return " ".join(f"-S {key}={value}" for key, value in ranking[rank - 1]["params"].items())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rank is not None and not args.print_best:
        raise ParamsError("--rank: only with --print-best")
    if args.print_best:
        print(dvc_args() if args.rank in (None, 1) else ranked_args(args.rank))
        return
    raw, params = resolve_params(args)
    tune = params.tune
    if not tune.space:
        raise ParamsError("tune.space: empty, so there is nothing to search")
    # Optuna, MLflow and (in the workers) TensorFlow: only a sweep needs them, not --print-best.
    from pipeline.search import best, storage, worker
    from pipeline.search import study as studies
    from pipeline.tracking import store, sweep_runs

    os.environ["KERAS_BACKEND"] = params.base.backend  # what the sweep's run records; the workers start it
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's device ids in NVML's order
    study, parent_run_id = studies.join_study(params)
    raw = with_overrides(raw, {"tune.study_name": study.study_name})  # the workers join the same one
    gpus = visible_gpus()
    workers, threads = plan(tune, tune.n_trials - studies.finished_count(study), len(gpus))
    on_gpus = f" on {len(gpus)} GPU{'s' * (len(gpus) > 1)}" if gpus else ""
    each = (
        f"{threads or 'default'} TensorFlow thread{'s' * (threads != 1)} each"
        if params.base.backend == "tensorflow"
        else "Keras on JAX"
    )
    print(f"tune: {workers} worker{'s' * (workers > 1)} on this machine{on_gpus}, {each}")
    if tune.objective == "rate_distortion" and tune.pruner != "none":
        print(
            "tune: two objectives, so no pruning: Optuna prunes single-objective studies only "
            f"(tune.pruner {tune.pruner} is not used)"
        )

    started = time.monotonic()
    confirm_seconds = None
    status = "FAILED"
    options = {"workers": workers, "threads": threads, "gpus": gpus, "stop_timeout": tune.stop_timeout}
    try:
        run_workers(raw, study, n_trials=tune.n_trials, parent_run_id=parent_run_id, **options)
        if tune.confirm_top and tune.confirm_seeds and studies.finished_count(study) >= tune.n_trials:
            total = best.enqueue_replicates(study, tune.confirm_top, tune.confirm_seeds, params.train.seed)
            if tune.objective == "rate_distortion":
                front = min(tune.confirm_top, len(best.front(study)))
                which = f"{front} members of the front with the lowest val_loss"
            else:
                which = f"{tune.confirm_top} best trials"
            print(f"tune: the {which} again, on {tune.confirm_seeds} more seeds each")
            confirm = with_overrides(raw, {"tune.n_trials": total})
            confirming = time.monotonic()
            run_workers(confirm, study, n_trials=total, parent_run_id=parent_run_id, **options)
            confirm_seconds = round(time.monotonic() - confirming, 1)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        seconds = round(time.monotonic() - started, 1)
        # This session's wall time, and the confirming's part of it (None: no confirming ran).
        summary = {**best.summarise(study), "seconds": seconds, "confirm_seconds": confirm_seconds}
        if tune.confirm_overrides:  # the confirming trials' budget, which their values are at
            summary["confirm_overrides"] = tune.confirm_overrides
        # Stopped or failed, it ends at once: the figures wait for the run that finishes the study.
        figures = best.study_figures(study, tune.space) if status == "FINISHED" else {}
        tables = {FRONT_TABLE: front_table(summary["front"])} if summary.get("front") else {}
        sweep_runs.end_study_run(
            parent_run_id, summary=summary, figures=figures, status=status, tables=tables
        )
    print(
        f"tune: study {study.study_name!r} in {redact(storage.storage_url(tune))}\n"
        f"  trials: {summary['trials_complete']} complete, {summary['trials_pruned']} pruned, "
        f"{summary['trials_failed']} failed ({summary['seconds']} s this session)\n"
        f"  MLflow parent run: {store.run_link(parent_run_id)}{store.ui_hint()}"
    )
    for line in front_lines(summary.get("front", [])):
        print(f"  {line}")
    if "best_params" in summary:
        write_best(summary, study.study_name, worker.MONITOR)
        print(
            f"  best: {describe_best(summary, worker.MONITOR)} with {summary['best_params']}\n"
            f"  written to {BEST_PARAMS}; re-train: dvc exp run $(python -m pipeline.tune --print-best)"
        )


if __name__ == "__main__":
    run_stage(main)
