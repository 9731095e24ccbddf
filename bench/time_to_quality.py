"""Time to quality: how long each training recipe takes to a model, and how good that model is.

    python bench/time_to_quality.py                      # the defaults against the presets, 3 seeds
    python bench/time_to_quality.py --seeds 42 43 44 --preset mine=train.epochs=8,train.batch_size=500

On one prepared data set (the real `prepare` stage in a scratch copy of the project, with the
project's `params.yaml` or `--params`), for each seed in turn, the defaults and every preset are
trained one after the other (interleaved, so a slow minute of a shared machine hits one recipe,
not all of one) with the `train` stage's own `fit_vae`, each in a fresh process, one at a time.
Each model is then scored on the test set as `evaluate` scores it: `encode` and `elbo_parts`,
drawing from a generator seeded with `base.seed`, so `test_loss` is the number `evaluate` would
record.

Training time is the wall time of `fit_vae` (validation included; TensorFlow's start-up and the
scoring are not). The ratio is the defaults' mean time over the preset's. A preset is chosen on
validation, as every choice here is: it qualifies when the validation loss of the model it keeps
(`val_loss`, what `train` records) is no worse than the defaults' on every seed, and the winner is
the fastest that qualifies; `test_loss` reports on it. Images per second are measured at batch
sizes 100, 250, 500 and 1000 over the median of the second and third of three epochs (validation
included) at a constant learning rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Candidates, each a set of `dvc exp run -S` overrides of the defaults, one per schedule: cosine at
# 6 of the defaults' 30 epochs, plateau at 9 (docs/results.md, time to quality, for how they were chosen).
PRESETS: dict[str, dict[str, object]] = {
    "cosine": {
        "train.epochs": 6,
        "train.learning_rate": 0.018,
        "train.schedule": "cosine",
        "train.warmup_epochs": 1,
    },
    "plateau": {
        "train.epochs": 9,
        "train.learning_rate": 0.004,
        "train.schedule": "plateau",
        "train.plateau_patience": 1,
    },
}
BATCH_SIZES = (100, 250, 500, 1000)


def make_workspace(target: Path, params_file: Path, train_size: int | None, test_size: int | None) -> None:
    """A copy of the project's code with `params_file`, but for the data sizes given."""
    from ruamel.yaml import YAML

    shutil.copytree(ROOT / "pipeline", target / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    yaml = YAML()
    params = yaml.load(params_file)
    for key, value in (("train_size", train_size), ("test_size", test_size)):
        if value is not None:
            params["data"][key] = value
    yaml.dump(params, target / "params.yaml")


def run_child(job: dict, workspace: Path, log: Path) -> dict:
    """Run one job (`train` or `throughput`) in a fresh process; its result."""
    result = workspace / "result.json"
    result.unlink(missing_ok=True)
    with open(log, "ab") as out:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        args = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
        if subprocess.run(args, cwd=workspace, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise SystemExit(f"error: the job {job} failed")
    return json.loads(result.read_text())


def child(job: dict) -> None:
    """In the workspace: train as `job` says and write the figures to result.json."""
    sys.path.insert(0, os.getcwd())
    from pipeline.quiet import start_tensorflow

    start_tensorflow()  # as the stages do: their start-up notices off the console
    import keras
    import numpy as np

    from pipeline import data
    from pipeline.measures import elbo_parts
    from pipeline.model import encode
    from pipeline.params import parse_params, read_params, with_overrides
    from pipeline.paths import PREPARED
    from pipeline.training import fit_vae

    params = parse_params(with_overrides(read_params("params.yaml"), job["overrides"]))
    splits = data.load_prepared(PREPARED)
    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    start = time.perf_counter()
    vae, history = fit_vae(
        splits["train"].images,
        splits["val"].images,
        model=params.model,
        train=params.train,
        seed=params.train.seed,
        callbacks=[clock],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    kept = min(history["val_loss"]) if params.train.early_stopping else history["val_loss"][-1]
    result = {"train_s": seconds, "epochs_run": len(history["loss"]), "val_loss": kept}
    if job["kind"] == "throughput":
        seconds_per_epoch = statistics.median(b - a for a, b in itertools.pairwise(ends))
        result["images_per_s"] = len(splits["train"].images) / seconds_per_epoch
    else:  # scored as `evaluate` scores: the same calls, the same seeded draws
        rng = np.random.default_rng(params.base.seed)
        mu, logvar = encode(vae.encoder, splits["test"].images, params.evaluate.batch_size)
        x_test = data.to_model_input(splits["test"].images)
        reconstruction, kl = elbo_parts(
            vae.decoder, x_test, mu, logvar, rng=rng, batch_size=params.evaluate.batch_size
        )
        result["test_loss"] = float(np.mean(reconstruction + kl))
    Path("result.json").write_text(json.dumps(result))


def command(overrides: dict[str, object]) -> str:
    """The preset as the command that trains it in the project."""
    return " ".join(["dvc exp run", *(f"-S {key}={value}" for key, value in overrides.items())])


def summarise(results: dict[str, list[dict]], seeds: list[int]) -> dict[str, dict]:
    """Per recipe: mean training time, each seed's val_loss and test_loss, the ratio and whether
    it qualifies (on val_loss)."""
    base = results["defaults"]
    base_s = statistics.mean(r["train_s"] for r in base)
    rows = {}
    for name, runs in results.items():
        losses = [r["test_loss"] for r in runs]
        chosen_by = [r["val_loss"] for r in runs]
        train_s = statistics.mean(r["train_s"] for r in runs)
        rows[name] = {
            "train_s": train_s,
            "train_s_each": [r["train_s"] for r in runs],
            "epochs_run": [r["epochs_run"] for r in runs],
            "val_loss": chosen_by,
            "test_loss": losses,
            "ratio": base_s / train_s,
            "qualifies": all(loss <= b["val_loss"] for loss, b in zip(chosen_by, base, strict=True)),
            "seeds": seeds,
        }
    return rows


def report(rows: dict[str, dict], throughput: dict[int, float], presets: dict[str, dict], seeds) -> str:
    seed_cols = " ".join(f"{'seed ' + str(s):>9}" for s in seeds)
    lines = [
        "val_loss chooses (no worse than the defaults' on every seed); test_loss reports",
        f"{'recipe':<14} {'train s':>8} {'speed-up':>8} {'val mean':>8} {'sd':>5}  {'qualifies':<9} "
        f"test_loss: {seed_cols} {'mean':>8} {'sd':>5}",
    ]
    for name, row in rows.items():
        chosen_by, losses = row["val_loss"], row["test_loss"]
        val_sd = statistics.stdev(chosen_by) if len(chosen_by) > 1 else float("nan")
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        qualifies = "-" if name == "defaults" else str(row["qualifies"])
        lines.append(
            f"{name:<14} {row['train_s']:8.1f} {row['ratio']:7.2f}x {statistics.mean(chosen_by):8.2f} "
            f"{val_sd:5.2f}  {qualifies:<9}            "
            + " ".join(f"{loss:9.2f}" for loss in losses)
            + f" {statistics.mean(losses):8.2f} {sd:5.2f}"
        )
    if throughput:  # none with `--batch-sizes` and no sizes
        lines.append(
            "images/s (training, epochs 2 and 3, constant learning rate): "
            + ", ".join(f"batch {b}: {v:,.0f}" for b, v in throughput.items())
        )
    for name, overrides in presets.items():
        lines.append(f"{name}: {command(overrides)}")
    qualified = [name for name, row in rows.items() if name != "defaults" and row["qualifies"]]
    if qualified:
        winner = max(qualified, key=lambda name: rows[name]["ratio"])
        lines.append(f"preset: {command(presets[winner])}")
    else:
        lines.append("preset: none was no worse than the defaults on every seed (val_loss)")
    return "\n".join(lines)


def parse_preset(text: str) -> tuple[str, dict[str, object]]:
    """`name=key=value,key=value` -> the name and its overrides."""
    sys.path.insert(0, str(ROOT))
    from pipeline.params import parse_override

    name, _, rest = text.partition("=")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name=key=value,key=value")
    return name, dict(parse_override(item) for item in rest.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="train.seed values")
    parser.add_argument("--preset", type=parse_preset, action="append", help="name=key=value,...; repeatable")
    parser.add_argument("--only", action="store_true", help="only the --preset ones, not the built-in")
    parser.add_argument("--defaults", type=parse_preset, help="what the presets are compared against")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=list(BATCH_SIZES))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params to start from")
    parser.add_argument("--train-size", type=int, help="training images (default: as in --params)")
    parser.add_argument("--test-size", type=int, help="test images (default: as in --params)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    presets = {} if args.only else dict(PRESETS)
    presets.update(dict(args.preset or []))
    defaults = args.defaults[1] if args.defaults else {}
    recipes = {"defaults": defaults, **presets}

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="time-to-quality-") as scratch:
        workspace = Path(scratch)
        make_workspace(workspace, args.params, args.train_size, args.test_size)
        log = workspace / "bench.log"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log, "ab") as out:
            subprocess.run([sys.executable, "-m", "pipeline.prepare"], cwd=workspace, stdout=out,
                           stderr=subprocess.STDOUT, env=env, check=True)  # fmt: skip
        results: dict[str, list[dict]] = {name: [] for name in recipes}
        for seed in args.seeds:  # interleaved: every recipe on one seed, then the next seed
            for name, overrides in recipes.items():
                print(f"seed {seed}: training {name} ...", file=sys.stderr, flush=True)
                job = {"kind": "train", "overrides": {**overrides, "train.seed": seed}}
                results[name].append(run_child(job, workspace, log))
                print(f"  {results[name][-1]}", file=sys.stderr, flush=True)
        throughput = {}
        for batch in args.batch_sizes:
            print(f"images/s at batch {batch} ...", file=sys.stderr, flush=True)
            job = {"kind": "throughput", "overrides": {"train.epochs": 3, "train.batch_size": batch}}
            throughput[batch] = run_child(job, workspace, log)["images_per_s"]
    rows = summarise(results, args.seeds)
    print(report(rows, throughput, presets, args.seeds))
    if args.json:
        figures = {"recipes": rows, "images_per_s": throughput, "presets": presets}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
