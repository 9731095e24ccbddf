"""Sweep throughput: how best to spread a sweep's worker processes and threads over the cores.

    python bench/sweep_speed.py              # 4 trials x 3 epochs on 20,000 images, 2 rounds (9 minutes)
    python bench/sweep_speed.py --trials 2 --epochs 1 --train-size 1000 --rounds 1   # a quick look

Each setting runs the real `python -m pipeline.tune` in a scratch copy of the project, on a
fresh study of the same fixed trials: the space holds one latent dim (16) and one learning
rate (1e-3) and nothing is pruned, so every setting does exactly the same work. The settings,
for C usable cores:

- `1 x default`: one worker, TensorFlow's own thread pools (`tune.threads: 0`);
- `1 x C threads`: one worker with both pools set to C threads;
- `C x 1 thread`: C workers with one thread each (what `tune.workers: auto` picks).

They run in turn, `--rounds` times, interleaved. Trial-epochs per minute count the study's
epochs over its span, from the first trial's start to the last trial's end: what the workers
get done. The wall time is the whole command's, to the same number of finished trials, so it
also holds the start-up and the end (imports, the study's MLflow run, its figures), which more
workers do not shorten. Peak memory is the largest sum of resident memory over the launcher
and its workers, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def settings(cores: int) -> dict[str, tuple[int, int]]:
    """Name -> (workers, TensorFlow threads per worker; 0 is TensorFlow's default)."""
    return {"1 x default": (1, 0), f"1 x {cores} threads": (1, cores), f"{cores} x 1 thread": (cores, 1)}


def make_workspace(target: Path) -> None:
    """A copy of the project's package and params, with its own tracking store and journal."""
    shutil.copytree(ROOT / "pipeline", target / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", target / "params.yaml")


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:  # a worker that just ended
            pass
    return total


def run_sweep(args: list[str], workspace: Path, log: Path) -> tuple[float, int]:
    """Run a sweep in the workspace; its wall seconds and the peak memory of its process tree."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the scratch copy's own store
    env.pop("OPTUNA_STORAGE", None)
    start = time.perf_counter()
    peak = 0
    with open(log, "ab") as out:
        process = subprocess.Popen(args, cwd=workspace, stdout=out, stderr=subprocess.STDOUT, env=env)
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} exited {process.returncode}")
    return time.perf_counter() - start, peak


def measure(name: str, workers: int, threads: int, study: str, options: argparse.Namespace,
            workspace: Path, log: Path) -> dict:  # fmt: skip
    """One sweep of the fixed study with a setting: wall seconds, study span, peak memory."""
    space = "{model.latent_dim: {choices: [16]}, train.learning_rate: {choices: [0.001]}}"
    args = [
        sys.executable, "-m", "pipeline.tune", "--study-name", study, "--n-trials", str(options.trials),
        "--workers", str(workers), "-S", f"tune.threads={threads}", "-S", f"tune.space={space}",
        "-S", "tune.pruner=none", "-S", f"train.epochs={options.epochs}",
        "-S", f"data.train_size={options.train_size}",
    ]  # fmt: skip
    wall, peak = run_sweep(args, workspace, log)
    summary = json.loads((workspace / "sweep/summary.json").read_text())
    if summary["trials_complete"] < options.trials:
        raise SystemExit(f"error: {name}: {summary['trials_complete']} of {options.trials} trials completed")
    return {"wall_s": wall, "span_s": summary["study_wall_seconds"], "peak_rss": peak}


def summarise(rounds: list[dict], trial_epochs: int) -> dict:
    """One setting over all rounds: the median times, throughput from the median span, the top memory."""
    span = statistics.median(r["span_s"] for r in rounds)
    return {
        "trial_epochs_per_min": trial_epochs * 60 / span,
        "span_s": span,
        "wall_s": statistics.median(r["wall_s"] for r in rounds),
        "peak_rss": max(r["peak_rss"] for r in rounds),
        "walls": [r["wall_s"] for r in rounds],
    }


def report(results: dict[str, dict], options: argparse.Namespace, cores: int) -> str:
    base = next(iter(results.values()))
    lines = [
        f"{options.trials} trials x {options.epochs} epochs on {options.train_size:,} images, "
        f"{options.rounds} round(s), {cores} cores; medians of the rounds",
        f"{'setting':<14} {'trial-epochs/min':>16} {'speed-up':>9} {'wall s':>7} {'speed-up':>9} "
        f"{'peak memory':>12}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<14} {r['trial_epochs_per_min']:16.1f} "
            f"{r['trial_epochs_per_min'] / base['trial_epochs_per_min']:8.2f}x "
            f"{r['wall_s']:7.1f} {base['wall_s'] / r['wall_s']:8.2f}x {r['peak_rss'] / 2**30:8.2f} GiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials in each study")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each trial")
    parser.add_argument("--train-size", type=int, default=20_000, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, interleaved")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    chosen = settings(cores)
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as scratch:
        workspace = Path(scratch)
        make_workspace(workspace)
        log = workspace / "bench.log"
        measured: dict[str, list[dict]] = {name: [] for name in chosen}
        try:
            for round_ in range(1, options.rounds + 1):  # interleaved, so a slow minute hits one round
                for i, (name, (workers, threads)) in enumerate(chosen.items()):
                    print(f"round {round_}: {name} ...", file=sys.stderr, flush=True)
                    study = f"bench-{round_}-{i}"
                    measured[name].append(measure(name, workers, threads, study, options, workspace, log))
        except SystemExit:  # show what the failed sweep printed
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
    trial_epochs = options.trials * options.epochs
    results = {name: summarise(rounds, trial_epochs) for name, rounds in measured.items()}
    print(report(results, options, cores))
    if options.json:
        asked = {key: value for key, value in vars(options).items() if key != "json"}
        figures = {**asked, "cores": cores, "settings": results}
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
