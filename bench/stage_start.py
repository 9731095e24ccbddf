"""A stage's start, part by part: the interpreter, MLflow, the stage's own imports, TensorFlow
(and the Keras it imports), the modules `main` imports, and the first TensorFlow op.

    python bench/stage_start.py                      # this checkout, median of 5 fresh processes
    python bench/stage_start.py --against 4bf8946    # and a commit's, side by side

Each process imports what the stage imports, in the stage's order: `pipeline.<stage>` (MLflow
first), then `start_tensorflow()` as `run_stage` does, then the modules `main` imports, then one
op. With `--against`, the commit's files are extracted (`git archive`) into a temporary folder
and run with this environment; the two checkouts' processes alternate, so that both see the
same machine. Both use this environment's packages; only their bytecode follows each
checkout's `scripts/setup.sh`. Where that set-up compiles none (its `uv sync` has no
`--compile-bytecode`), the checkout's processes get a `PYTHONPYCACHEPREFIX` of their own that
holds the standard library's bytecode and nothing else, so that they read none of what this
environment's set-up compiled. They then compile every installed module they import, as after
that set-up where PYTHONDONTWRITEBYTECODE is set; where it is not, the first process writes the
bytecode there and the later ones read it. Each part and the total are medians over the
processes, so the parts need not add up to the total; the total's range is printed beside it.
Keras' share is read from one more process per row, run under `python -X importtime` (which
slows imports, so it is kept out of the timed ones).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each stage's `main` imports once TensorFlow has started.
STAGE_MODULES = {
    "train": ("keras", "pipeline.model", "pipeline.training", "pipeline.tracking.callbacks",
              "pipeline.tracking.logged_model"),
    "evaluate": ("pipeline.measures", "pipeline.model"),
    "plot": ("pipeline.model",),
}  # fmt: skip
PARTS = ("MLflow", "stage", "TensorFlow", "main's", "first op", "total")

PROBE = """
import importlib, json, sys, time
stage, modules = sys.argv[1], sys.argv[2].split(",")
marks = [time.perf_counter()]
import mlflow
marks.append(time.perf_counter())
importlib.import_module(f"pipeline.{stage}")
marks.append(time.perf_counter())
from pipeline.quiet import start_tensorflow
start_tensorflow()
marks.append(time.perf_counter())
for module in modules:
    importlib.import_module(module)
marks.append(time.perf_counter())
import tensorflow as tf
tf.reduce_sum(tf.ones((2, 2))).numpy()
marks.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(marks, marks[1:])]))
"""


def keras_seconds(stderr: str) -> float:
    """Keras' cumulative import seconds in `python -X importtime` output: its widest `keras` or
    `keras.*` entry, since its own `__init__` starts by importing `keras._tf_keras`."""
    seconds = 0.0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            name = name.strip()
            if cumulative.strip().isdigit() and (name == "keras" or name.startswith("keras.")):
                seconds = max(seconds, int(cumulative) / 1e6)
    return seconds


@functools.cache
def installs_bytecode(checkout: Path) -> bool:
    """Whether the checkout's set-up compiles the installed packages' bytecode (read once)."""
    lines = (checkout / "scripts/setup.sh").read_text().splitlines()
    return any("uv sync" in line and "--compile-bytecode" in line for line in lines)


def stdlib_bytecode(prefix: Path) -> None:
    """Copy the standard library's compiled bytecode into `prefix`, laid out as Python looks for
    it under PYTHONPYCACHEPREFIX, since the interpreter came with it compiled."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for compiled in stdlib.rglob(f"__pycache__/*.{sys.implementation.cache_tag}.pyc"):
        if "site-packages" not in compiled.parts:
            target = prefix / compiled.parent.parent.relative_to("/") / compiled.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(compiled, target)


def probe(checkout: Path, stage: str, importtime_: bool = False) -> subprocess.CompletedProcess:
    """Run the stage's probe in a fresh process; with `importtime_`, under `-X importtime`. A
    checkout whose set-up compiles no bytecode reads it from its own folder (`stdlib_bytecode`)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not installs_bytecode(checkout):
        env["PYTHONPYCACHEPREFIX"] = f"{checkout}-bytecode"
    flags = ["-X", "importtime"] if importtime_ else []
    args = [sys.executable, *flags, "-c", PROBE, stage, ",".join(STAGE_MODULES[stage])]
    result = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the {stage} probe in {checkout} exited {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")  # fmt: skip
    return result


def parts(checkout: Path, stage: str) -> dict[str, float]:
    """One fresh process's parts, in seconds."""
    result = probe(checkout, stage)
    mlflow, stage_imports, tensorflow, modules, first_op = json.loads(result.stdout.splitlines()[-1])
    return {
        "MLflow": mlflow,
        "stage": stage_imports,
        "TensorFlow": tensorflow,
        "main's": modules,
        "first op": first_op,
        "total": mlflow + stage_imports + tensorflow + modules + first_op,
    }


def interpreter() -> float:
    """Seconds of `python -c pass`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="processes per figure (default 5)")
    parser.add_argument("--against", metavar="COMMIT", help="also measure this commit, side by side")
    parser.add_argument("--stages", nargs="+", default=list(STAGE_MODULES), choices=list(STAGE_MODULES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stage-start-") as scratch:
        checkouts = {"this checkout": ROOT}
        if options.against:
            files = Path(scratch) / "against"
            files.mkdir()
            archive = subprocess.run(
                ["git", "archive", options.against], cwd=ROOT, capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(files)], input=archive.stdout, check=True)
            checkouts = {options.against: files, **checkouts}
            compiled = installs_bytecode(files)
            if not compiled:
                stdlib_bytecode(Path(f"{files}-bytecode"))
        runs = {(name, stage): [] for name in checkouts for stage in options.stages}
        for _ in range(options.repeat):
            for stage in options.stages:
                for name, checkout in checkouts.items():
                    runs[name, stage].append(parts(checkout, stage))
        keras = {
            (name, stage): keras_seconds(probe(checkouts[name], stage, importtime_=True).stderr)
            for name, stage in runs
        }
    start = statistics.median(interpreter() for _ in range(options.repeat))

    figures = {}
    for (name, stage), samples in runs.items():
        row = {part: statistics.median(r[part] for r in samples) for part in PARTS}
        totals = [r["total"] for r in samples]
        figures[f"{name} {stage}"] = {**row, "total_min": min(totals), "total_max": max(totals),
                                      "Keras": keras[name, stage]}  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")  # fmt: skip
    print(f"stage start, seconds, median of {options.repeat} fresh processes; {os.cpu_count()} cores, {cpu}")
    print(f"interpreter: {start:.2f} s. stage: its imports beyond MLflow. main's: what `main` imports.")
    if options.against and not compiled:
        writes = "set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "not set"
        print(f"{options.against}: its set-up compiles no bytecode; PYTHONDONTWRITEBYTECODE {writes}.")
    print("total: MLflow to the first op, and its range. Keras: its share of TensorFlow's import, from")
    print("one more process under python -X importtime (slower than the timed ones).")
    print(f"{'':<26}" + "".join(f"{part:>12}" for part in PARTS) + f"{'range':>14}{'Keras':>8}")
    for label, row in figures.items():
        spread = f"{row['total_min']:.2f}..{row['total_max']:.2f}"
        print(
            f"{label:<26}"
            + "".join(f"{row[part]:12.2f}" for part in PARTS)
            + f"{spread:>14}{row['Keras']:8.2f}"
        )
    if options.against:
        for stage in options.stages:
            before = figures[f"{options.against} {stage}"]["total"]
            after = figures[f"this checkout {stage}"]["total"]
            print(f"{stage}: {before:.2f} s -> {after:.2f} s, {before / after:.2f}x")
    if options.json:
        options.json.write_text(json.dumps({"interpreter": start, "stages": figures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
