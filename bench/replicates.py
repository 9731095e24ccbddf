"""Replicates side by side: DVC's queue one at a time, against one per core with one thread each.

    python bench/replicates.py             # 4 replicates x 5 epochs on all 55,000 images (about 25 minutes)
    python bench/replicates.py --replicates 2 --epochs 1 --train-size 1000 --test-size 500   # a quick look

In a clone of this repository's last commit, with its own DVC cache and MLflow store, each
setting queues the same number of replicates, `dvc exp run --queue -S train.seed=N ...` as the
README does, and times `dvc queue start -j J` until the queue is empty: the whole pipeline of
each (train, evaluate, plot), as a user waits for it. Each replicate has a seed of its own, so
that DVC's run cache restores none. The settings, for C usable cores:

- `-j 1, default threads`: one at a time, TensorFlow's own thread pools (`train.threads: 0`);
- `-j C, 1 thread`: C at once, one thread each (`train.threads: 1`);
- `-j C, default threads`: C at once, each with TensorFlow's pools for every core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("Queued", "Running", "Success", "Failed")


def clone_env() -> dict[str, str]:
    """This environment, but for the tracking URI: a clone's stages use the clone's own store."""
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def dvc(args: list[str], cwd: Path) -> str:
    """Run `dvc ...` in the clone; its stdout, or an error with what it printed."""
    result = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=clone_env())
    if result.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def statuses(clone: Path) -> list[str]:
    """The status of every experiment the queue has seen."""
    rows = [line.split() for line in dvc(["queue", "status"], clone).splitlines()]
    return [row[-1] for row in rows if row and row[-1] in STATUSES]


def measure(clone: Path, jobs: int, threads: int, seeds: range, options: argparse.Namespace) -> float:
    """Queue one replicate per seed, run the queue with `jobs` workers; its wall seconds."""
    before = len(statuses(clone))
    for seed in seeds:
        dvc(["exp", "run", "--queue", "-S", f"train.seed={seed}", "-S", f"train.threads={threads}"], clone)
    start = time.perf_counter()
    dvc(["queue", "start", "-j", str(jobs)], clone)
    while {"Queued", "Running"} & set(statuses(clone)):
        time.sleep(2)
    wall = time.perf_counter() - start
    ended = statuses(clone)[before:] if before else statuses(clone)
    if len(ended) < len(seeds) or set(ended) != {"Success"}:
        raise SystemExit(f"error: -j {jobs}, {threads} threads: the queue ended {ended}")
    return wall


def make_clone(target: Path, settings: dict[str, object]) -> None:
    """A clone of the last commit with `settings` (dotted keys; None leaves a key as it is) in
    params.yaml, committed, and its data prepared."""
    from ruamel.yaml import YAML

    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    yaml = YAML()
    params = yaml.load(target / "params.yaml")
    for key, value in settings.items():
        section, name = key.split(".")
        if value is not None:
            params[section][name] = value
    yaml.dump(params, target / "params.yaml")
    subprocess.run(["git", "commit", "-qm", "bench budget", "--allow-empty", "-a"], cwd=target, check=True)
    dvc(["repro", "prepare"], target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=4, help="replicates in each setting")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each replicate")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    chosen = {
        "-j 1, default threads": (1, 0),
        f"-j {cores}, 1 thread": (cores, 1),
        f"-j {cores}, default threads": (cores, 0),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="replicates-") as scratch:
        clone = Path(scratch) / "project"
        budget = {"train.epochs": options.epochs, "data.train_size": options.train_size,
                  "data.test_size": options.test_size}  # fmt: skip
        make_clone(clone, budget)
        for i, (name, (jobs, threads)) in enumerate(chosen.items()):
            print(f"{name} ...", file=sys.stderr, flush=True)
            seeds = range(100 * (i + 1), 100 * (i + 1) + options.replicates)
            results[name] = measure(clone, jobs, threads, seeds, options)
    images = f"{options.train_size:,}" if options.train_size else "all 55,000"
    print(f"{options.replicates} replicates x {options.epochs} epochs on {images} images, {cores} cores")
    print(f"{'setting':<24} {'wall s':>8} {'per replicate s':>16} {'speed-up':>9}")
    base = next(iter(results.values()))
    for name, wall in results.items():
        print(f"{name:<24} {wall:8.1f} {wall / options.replicates:16.1f} {base / wall:8.2f}x")
    if options.json:
        options.json.write_text(
            json.dumps({**vars(options), "json": None, "cores": cores, "wall_s": results}) + "\n"
        )


if __name__ == "__main__":
    main()
