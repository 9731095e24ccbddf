"""End to end through DVC: what a user waits for, the defaults against the time-to-quality preset.

    python bench/end_to_end.py                 # one round on all the data (about 8 minutes)
    python bench/end_to_end.py --rounds 3      # three, alternating which recipe goes first

In a clone of this repository's last commit, with its own DVC cache and MLflow store and its
data prepared once, each round runs `dvc exp run` of the defaults and `dvc exp run` with the
preset's overrides, one after the other, and times each until DVC returns: train, evaluate and
plot, with every stage's start, tracking and DVC's own work. A stage's share runs from the line
where DVC starts or skips it to the next such line, so it includes DVC's work on the stage's
lock entry and its checks of the next stage; the last one's also holds DVC's work after it,
until DVC returns. "dvc" is what comes before the first stage. Each round has a seed of its own
(`train.seed`), so that DVC's run cache restores nothing. An untimed run of one epoch goes
first, so that neither recipe pays alone for what happens once (the MLflow store's creation,
the first read of TensorFlow's libraries from disk). Each round's ratio pairs the two recipes'
runs of that round; their geometric mean and its 95% t interval come before the headline, the
ratio of the mean times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replicates import clone_env, dvc, make_clone  # bench/, beside this script

# The line where DVC starts a stage or skips it ("didn't change", "is cached").
STAGE_LINE = re.compile(r"(?:Running stage|Stage) '([^']+)'")

# The preset of docs/speed.md (bench/time_to_quality.py chose it): 6 of the defaults' 30 epochs.
PRESET = "train.epochs=6 train.learning_rate=0.018 train.schedule=cosine train.warmup_epochs=1"


def spread(ratios: list[float]) -> str:
    """The rounds' geometric mean ratio and its 95% t interval, taken on the logs of the ratios."""
    logs = [math.log(r) for r in ratios]
    mean = f"geometric mean {math.exp(statistics.fmean(logs)):.2f}x"
    if len(logs) < 2:
        return f"{mean}, no interval: n = 1"
    from scipy import stats

    low, high = stats.t.interval(0.95, len(logs) - 1, statistics.fmean(logs), stats.sem(logs))
    return f"{mean}, 95% t interval {math.exp(low):.2f}x..{math.exp(high):.2f}x"


def timed_exp_run(args: list[str], clone: Path) -> tuple[float, dict[str, float]]:
    """`dvc exp run ARGS` in the clone: its wall seconds and each stage's share of them."""
    marks = [("dvc", time.perf_counter())]
    command = ["dvc", "exp", "run", *args]
    with subprocess.Popen(command, cwd=clone, env=clone_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:  # fmt: skip
        output = []
        for line in process.stdout:
            output.append(line)
            if found := STAGE_LINE.search(line):
                marks.append((found[1], time.perf_counter()))
    end = time.perf_counter()
    if process.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)}: {''.join(output)[-4000:]}")
    ends = [at for _, at in marks[1:]] + [end]
    stages: dict[str, float] = {}
    for (name, at), later in zip(marks, ends, strict=True):
        stages[name] = stages.get(name, 0.0) + later - at
    return end - marks[0][1], stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="runs of each recipe (default 1)")
    parser.add_argument("--preset", default=PRESET, help=f"key=value overrides (default: {PRESET})")
    parser.add_argument("--defaults", default="", help="overrides of the defaults too, e.g. for a quick look")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    recipes = {"defaults": options.defaults.split(), "preset": options.preset.split()}

    walls: dict[str, list[float]] = {name: [] for name in recipes}
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in recipes}
    with tempfile.TemporaryDirectory(prefix="end-to-end-") as scratch:
        clone = Path(scratch) / "project"
        make_clone(clone, {"data.train_size": options.train_size, "data.test_size": options.test_size})
        print("warm-up ...", file=sys.stderr, flush=True)
        dvc(["exp", "run", "-S", "train.epochs=1", "-S", "train.seed=0"], clone)
        for round_ in range(options.rounds):
            order = list(recipes) if round_ % 2 == 0 else list(reversed(recipes))
            for name in order:
                print(f"round {round_ + 1}: {name} ...", file=sys.stderr, flush=True)
                overrides = [arg for kv in recipes[name] for arg in ("-S", kv)]
                # `dvc exp run` leaves the last experiment's params in the workspace: start from the commit's.
                subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=clone, check=True)
                wall, shares = timed_exp_run(["-S", f"train.seed={42 + round_}", *overrides], clone)
                walls[name].append(wall)
                stages[name].append(shares)

    images = f"{options.train_size:,}" if options.train_size else "all 55,000"
    print(f"dvc exp run, train + evaluate + plot, on {images} images; {os.cpu_count()} cores")
    names = list(dict.fromkeys(stage for runs in stages.values() for run in runs for stage in run))
    header = "".join(f"{stage:>9}" for stage in names)
    print(f"{'recipe':<10} {'mean s':>8} {'sd s':>6}{header}  each run")
    for name, seconds in walls.items():
        sd = f"{statistics.stdev(seconds):6.1f}" if len(seconds) > 1 else f"{'-':>6}"
        shares = "".join(
            f"{statistics.fmean(run.get(stage, 0.0) for run in stages[name]):9.1f}" for stage in names
        )
        runs = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:<10} {statistics.fmean(seconds):8.1f} {sd}{shares}  {runs}")
    by_round = [d / p for d, p in zip(walls["defaults"], walls["preset"], strict=True)]
    print(f"each round: {', '.join(f'{r:.2f}x' for r in by_round)}; {spread(by_round)}")
    ratio = statistics.fmean(walls["defaults"]) / statistics.fmean(walls["preset"])
    print(f"preset end to end: {ratio:.2f}x faster than the defaults (n = {options.rounds} each)")
    if options.json:
        report = {
            "recipes": recipes,
            "wall_s": walls,
            "stage_s": stages,
            "ratio": ratio,
            "by_round": by_round,
        }
        options.json.write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
