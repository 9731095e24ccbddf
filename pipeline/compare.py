"""Compare runs side by side in one self-contained HTML report, logged to MLflow.

    python -m pipeline.compare RUN_ID_OR_DVC_EXP [...]   # the runs named
    python -m pipeline.compare --best 3                  # the 3 configurations with the lowest mean val_loss
    python -m pipeline.compare --study vae-search        # that study's 4 best trials (--best N to change),
                                                         # or a two-objective study's front

MLflow's compare view shows params, metrics and one chosen artifact per run; this report
pools runs that differ only in their training seed into one configuration: its n (a seed that
failed or diverged counted against it), mean, standard deviation and range. It calls one best
only when Welch's t-test on the primary metric (validation loss) says its difference to the
next is larger than the noise; other metrics' p values are adjusted for their number. Under
`--best`, validation's choice is named and the test set reports on it. Every image is
embedded, so the page opens with no network.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.params import PipelineError, load_params
from pipeline.report import collect, group_runs, render, summary_lines
from pipeline.stage import run_stage
from pipeline.tracking import queries, store

REPORT = Path("reports/compare.html")
STUDY_TRIALS = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="MLflow run ids or DVC experiment names")
    parser.add_argument(
        "--best",
        type=int,
        metavar="N",
        help="the N configurations with the lowest mean val_loss (test_loss is reported)",
    )
    parser.add_argument(
        "--study",
        metavar="NAME",
        help=f"an Optuna study's best trials ({STUDY_TRIALS}), or its rate-distortion front",
    )
    parser.add_argument("--output", type=Path, default=REPORT, help=f"the HTML file (default {REPORT})")
    args = parser.parse_args(argv)
    chosen = [bool(args.runs), args.study is not None, args.best is not None and args.study is None]
    if sum(chosen) != 1:
        parser.error("name runs, or give --best N, or --study NAME (with --best N for N trials)")
    if args.best is not None and args.best < 1:
        parser.error(f"--best must be at least 1 (got {args.best})")
    return args


def select(
    args: argparse.Namespace, experiment_id: str, failed: dict[str, dict[int, str]]
) -> tuple[list, str]:
    """The runs the command line names, and how they were chosen (`--best` counting the `failed`
    seeds against their configurations)."""
    if args.runs:
        return queries.runs_named(experiment_id, args.runs), "named runs"
    if args.study is not None:
        configurations, front = queries.best_trials(experiment_id, args.study)
        if not configurations:
            raise PipelineError(f"study {args.study!r} has no complete trial in the MLflow store")
        n = args.best or (len(configurations) if front else STUDY_TRIALS)
        runs = [run for trials in configurations[:n] for run in trials]
        if front:
            which = f"the {n} best members" if args.best else "every member"
            return runs, f"{which} of study {args.study}'s rate-distortion front"
        return runs, f"the {n} best trials of study {args.study}"
    runs = queries.best_configurations(experiment_id, args.best, failed)
    if not runs:
        raise PipelineError("no finished trained model in the MLflow store; run `dvc repro` first")
    return runs, f"the {args.best} configurations with the lowest mean val_loss"


def plural(n: int, noun: str) -> str:
    """`1 run`, `3 runs`."""
    return f"{n} {noun}{'s' * (n != 1)}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run's figures
    params = load_params()
    experiment_id = store.configure(params.base.tracking.experiment)
    # A seed that failed or diverged counts against its configuration; a study ranks its own.
    failed = queries.failed_seeds(experiment_id) if args.study is None else {}
    runs, how = select(args, experiment_id, failed)
    groups = group_runs([collect(run) for run in runs])
    for group in groups:
        group.failed = failed.get(group.config, {})
    counts = f"{plural(len(runs), 'run')} of {plural(len(groups), 'configuration')}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    chosen = args.best is not None and args.study is None
    args.output.write_text(render(groups, title=f"Comparing {counts}: {how}", chosen=chosen))
    run_id = queries.log_comparison(experiment_id, args.output, runs, how)
    for line in summary_lines(groups, chosen=chosen):
        print(f"compare: {line}")
    print(
        f"compare: {counts} in {args.output}\n"
        f"compare: logged to MLflow run {run_id}: {store.run_link(run_id)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main)
