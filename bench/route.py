"""The route from a sweep to a model, end to end: the sweep, its best re-trained at the full
budget, then the same settings on seeds the sweep did not use.

    python bench/route.py          # the default sweep, then 30 epochs on all 55,000 images, seeds 42, 1..5
    python bench/route.py --tune n_trials=2 --tune confirm_top=0 \
        --tune 'overrides={train.epochs: 1, data.train_size: 500}' \
        --epochs 1 --train-size 500 --test-size 500 --seeds 1     # a quick look

In a clone of this repository's last commit (`replicates.make_clone`), with `--tune key=value`
set under `tune:` in its params.yaml:
1. `dvc repro sweep/dvc.yaml` runs the sweep; its best goes to `sweep/best_params.yaml`;
2. `dvc exp run --queue -S key=value ...` with those params and `train.threads=1`, at seed 42
   (the sweep's own trial seed: the route's re-train) and at each of `--seeds` (by default
   1 to 5; the sweep's trials use 42 and its confirming seeds 43 and 44), run by
   `dvc queue start -j C` (C usable cores) through the real stages.
It prints each re-train's `val_loss`, `test_loss` and active units (test set), then the mean ±
sd of `test_loss` over the seeds the sweep did not use, with a 95% t interval, against
`--target`. `--keep DIR` copies the clone's `sweep/` results there (best params, summary, lock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pipeline
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, beside this script
from collapse import queue, results, run_queue, spread
from replicates import dvc, make_clone

from pipeline.params import PipelineError, parse_override, read_yaml

ROUTE_SEED = 42  # train.seed: the sweep's trials and the route's re-train


def tune_setting(text: str) -> tuple[str, object]:
    """`key=value` under `tune:`, the value read as `dvc exp run -S` reads it."""
    try:
        key, value = parse_override(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"tune.{key}", value


def interval(values: list[float]) -> str:
    """The 95% t interval of the mean, or why there is none."""
    if len(values) < 2:
        return "no interval: n = 1"
    from scipy import stats

    low, high = stats.t.interval(0.95, len(values) - 1, statistics.fmean(values), stats.sem(values))
    return f"95% t interval {low:.2f}..{high:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="train.seed values the sweep did not use")  # fmt: skip
    parser.add_argument("--tune", type=tune_setting, action="append", default=[],
                        help="key=value under tune: for the sweep; repeatable")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="re-trains' epochs (default: train.epochs)")
    parser.add_argument("--train-size", type=int, default=None, help="re-trains' images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--target", type=float, default=240.0, help="the mean test_loss aimed at")
    parser.add_argument("--workdir", type=Path, help="keep the clone here (default: a temporary folder)")
    parser.add_argument("--keep", type=Path, help="copy the sweep's results (sweep/*) here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if ROUTE_SEED in options.seeds:
        parser.error(f"--seeds: {ROUTE_SEED} is the sweep's own seed")

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="route-") as scratch:
        clone = (options.workdir or Path(scratch)) / "project"
        budget = {"train.epochs": options.epochs, "data.train_size": options.train_size,
                  "data.test_size": options.test_size, **dict(options.tune)}  # fmt: skip
        make_clone(clone, budget)
        start = time.perf_counter()
        dvc(["repro", "sweep/dvc.yaml"], clone)
        sweep_wall = time.perf_counter() - start
        best = read_yaml(clone / "sweep/best_params.yaml")
        summary = json.loads((clone / "sweep/summary.json").read_text())
        if options.keep:
            options.keep.mkdir(parents=True, exist_ok=True)
            for name in ("best_params.yaml", "summary.json", "dvc.lock"):
                shutil.copy(clone / "sweep" / name, options.keep / name)
        seeds = [ROUTE_SEED, *options.seeds]
        queue(clone, {"best": best}, seeds)
        train_wall = run_queue(clone, cores)
        found = results(clone)
    rows = {seed: found.get(f"best-s{seed}") for seed in seeds}

    overrides = " ".join(f"-S {key}={value}" for key, value in best.items())
    print(
        f"sweep: {summary['trials_complete']} complete, {summary['trials_pruned']} pruned, "
        f"{summary['trials_failed']} failed in {sweep_wall / 60:.1f} min; "
        f"best trial #{summary['best_trial']}, selection score val_loss {summary['best_value']:.2f} "
        f"over {len(summary['best_values'])} seed(s) at the trial budget"
    )
    print(f"best: {overrides}")
    print(f"re-trains: {cores} at a time through DVC's queue, {train_wall / 60:.1f} min")
    print(f"{'seed':>5} {'val_loss':>9} {'test_loss':>10} {'active':>7}")
    for seed, row in rows.items():
        if row:
            print(f"{seed:>5} {row['val_loss']:9.2f} {row['test_loss']:10.2f} {row['active_units']:7.0f}")
        else:
            print(f"{seed:>5} {'failed':>9}")
    unused = [rows[seed] for seed in options.seeds if rows[seed]]
    losses = [row["test_loss"] for row in unused]
    active = [row["active_units"] for row in unused]
    mean = statistics.fmean(losses) if losses else float("inf")
    print(
        f"unused seeds: test_loss {spread(losses)}, {interval(losses)}, active units {spread(active)} "
        f"(n = {len(losses)} of {len(options.seeds)})"
    )
    verdict = "met" if losses and len(losses) == len(options.seeds) and mean <= options.target else "not met"
    print(f"target: mean test_loss of the unused seeds at most {options.target:.2f}: {verdict}")
    if options.json:
        options.json.write_text(json.dumps({"best": best, "summary": summary, "rows": rows,
                                            "sweep_wall_s": sweep_wall, "train_wall_s": train_wall},
                                           indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
