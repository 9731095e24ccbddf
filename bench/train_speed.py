"""Training speed: a plain Keras 3 `fit()` of the seed's model against the project's `train` stage.

    python bench/train_speed.py                       # all 55,000 training images, 5 epochs
    python bench/train_speed.py --epochs 2 --train-size 2000   # a quick look
    python bench/train_speed.py --variants untracked jax        # TensorFlow against JAX

Every variant runs in its own process on the same prepared data (the real `prepare` stage
in a scratch copy of the project, default `params.yaml` but for `--epochs`/`--train-size`):

- `baseline`: `baseline.py`, the seed written plainly: float32 NumPy arrays and `model.fit`
  with default settings, batch 100;
- `stage`: `python -m pipeline.train` itself, MLflow logging on;
- `untracked`: the stage's training (`fit_vae` with its checkpoint callbacks), MLflow off;
- `jax`: the same on Keras' JAX backend (the `jax` extra; on a GPU where JAX finds one).

The variants run in turn, `--rounds` times. The marginal time per epoch is the median
interval between epoch ends after each run's first, so start-up and the first epoch's
tracing are left out; validation is part of every epoch. The fastest such epoch is shown
too: on a shared virtual machine, stalls of a few seconds hit some epochs and not others.
Images per second count training images per second of that marginal epoch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "stage", "untracked", "jax")


def epoch_seconds(epoch_ends: list[float]) -> list[float]:
    """Seconds of each epoch after the first."""
    return [b - a for a, b in itertools.pairwise(epoch_ends)]


def make_workspace(target: Path, epochs: int, train_size: int | None) -> None:
    """A copy of the project with its default params but for the epochs and the data size."""
    from ruamel.yaml import YAML

    shutil.copytree(ROOT / "pipeline", target / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    yaml = YAML()
    params = yaml.load(ROOT / "params.yaml")
    params["train"]["epochs"] = epochs
    params["data"]["train_size"] = train_size
    yaml.dump(params, target / "params.yaml")


def run_measured(args: list[str], workspace: Path, log: Path) -> tuple[float, int]:
    """Run a process in the workspace; its wall seconds and peak resident memory in bytes."""
    start = time.perf_counter()
    with open(log, "ab") as out:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("MLFLOW_TRACKING_URI", None)  # the scratch copy's own store
        process = subprocess.Popen(args, cwd=workspace, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(args)} exited {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def child(variant: str, workspace: Path) -> None:
    """Train one variant in this process and write its epoch ends and final validation loss."""
    os.chdir(workspace)
    sys.path.insert(0, str(workspace))
    from pipeline.backend import start

    start("jax" if variant == "jax" else "tensorflow")  # as the stage does, before Keras
    import keras

    from pipeline import data
    from pipeline.params import load_params
    from pipeline.paths import PREPARED

    params = load_params()
    splits = data.load_prepared(PREPARED)
    ends: list[float] = []  # wall time at each epoch's end, after the other callbacks
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    if variant == "baseline":
        sys.path.insert(0, str(Path(__file__).parent))
        import baseline

        x_train = splits["train"].images.astype("float32")[..., None] / 255.0
        x_val = splits["val"].images.astype("float32")[..., None] / 255.0
        vae = baseline.build_vae(params.model.latent_dim, params.train.learning_rate)
        history = vae.fit(
            x_train, epochs=params.train.epochs, batch_size=100, validation_data=(x_val,),
            callbacks=[clock], verbose=0,
        ).history  # fmt: skip
    else:
        from pipeline.training import fit_vae

        backup = Path("checkpoints/untracked")
        shutil.rmtree(backup, ignore_errors=True)  # an earlier round's history
        backup.mkdir(parents=True)
        _, history = fit_vae(
            splits["train"].images,
            splits["val"].images,
            model=params.model,
            train=params.train,
            seed=params.base.seed,
            callbacks=[
                keras.callbacks.CSVLogger(str(backup / "history.csv")),
                keras.callbacks.BackupAndRestore(str(backup / "state"), double_checkpoint=True),
                clock,
            ],
            verbose=0,
        )
    result = {"epoch_ends": ends, "val_loss": float(history["val_loss"][-1])}
    Path(f"result-{variant}.json").write_text(json.dumps(result))


def measure(variant: str, workspace: Path, log: Path) -> dict:
    """Run one variant in a fresh process: marginal s/epoch, peak memory, final validation loss."""
    if variant == "stage":
        import mlflow

        from pipeline.tracking.store import default_store_uri

        wall, peak = run_measured([sys.executable, "-m", "pipeline.train"], workspace, log)
        run_id = json.loads((workspace / "outputs/mlflow_run.json").read_text())["run_id"]
        client = mlflow.MlflowClient(default_store_uri(workspace))
        history = sorted(client.get_metric_history(run_id, "loss/train"), key=lambda m: m.step)
        ends = [m.timestamp / 1000 for m in history]  # logged at each epoch's end
        val_loss = json.loads((workspace / "metrics/train.json").read_text())["val_loss"]
    else:
        args = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--workspace", "."]
        wall, peak = run_measured(args, workspace, log)
        result = json.loads((workspace / f"result-{variant}.json").read_text())
        ends, val_loss = result["epoch_ends"], result["val_loss"]
    return {"epoch_seconds": epoch_seconds(ends), "wall_s": wall, "peak_rss": peak, "val_loss": val_loss}


def summarise(rounds: list[dict]) -> dict:
    """One variant over all rounds: the median and the fastest epoch after each round's first."""
    seconds = [s for r in rounds for s in r["epoch_seconds"]]
    return {
        "seconds_per_epoch": statistics.median(seconds),
        "best_epoch_s": min(seconds),
        "epoch_seconds": seconds,
        "wall_s": statistics.median(r["wall_s"] for r in rounds),
        "peak_rss": max(r["peak_rss"] for r in rounds),
        "val_loss": rounds[-1]["val_loss"],
    }


def report(results: dict[str, dict], *, images: int, epochs: int, rounds: int) -> str:
    base = results.get("baseline")
    lines = [
        f"{images:,} training images per epoch, batch 100, {epochs} epochs x {rounds} rounds; "
        f"s/epoch = median of epochs 2..{epochs}, best = the fastest of them",
        f"{'variant':<10} {'s/epoch':>8} {'best':>6} {'img/s':>7} {'speed-up':>9} {'(best)':>7} "
        f"{'peak RSS':>9} {'val_loss':>9} {'wall s':>7}",
    ]
    for name, r in results.items():
        ratios = (
            (base["seconds_per_epoch"] / r["seconds_per_epoch"], base["best_epoch_s"] / r["best_epoch_s"])
            if base
            else (math.nan, math.nan)
        )
        lines.append(
            f"{name:<10} {r['seconds_per_epoch']:8.2f} {r['best_epoch_s']:6.2f} "
            f"{images / r['seconds_per_epoch']:7.0f} {ratios[0]:8.2f}x {ratios[1]:6.2f}x "
            f"{r['peak_rss'] / 2**30:6.2f} GiB {r['val_loss']:9.2f} {r['wall_s']:7.1f}"
        )
    if {"stage", "untracked"} <= results.keys():
        stage, untracked = results["stage"], results["untracked"]
        lines.append(
            "tracking overhead (stage against untracked, per epoch): "
            f"{stage['seconds_per_epoch'] / untracked['seconds_per_epoch'] - 1:+.1%} median, "
            f"{stage['best_epoch_s'] / untracked['best_epoch_s'] - 1:+.1%} best"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per variant (at least 2)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, interleaved")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:3]))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workspace)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 to time epochs after the first")

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="train-speed-") as scratch:
        workspace = Path(scratch)
        make_workspace(workspace, args.epochs, args.train_size)
        log = workspace / "bench.log"
        try:
            run_measured([sys.executable, "-m", "pipeline.prepare"], workspace, log)
            images = json.loads((workspace / "data/prepared/summary.json").read_text())["counts"]["train"]
            measured = {variant: [] for variant in args.variants}
            for round_ in range(1, args.rounds + 1):  # interleaved, so a slow minute hits one round
                for variant in args.variants:
                    print(f"round {round_}: timing {variant} ...", file=sys.stderr, flush=True)
                    measured[variant].append(measure(variant, workspace, log))
            results = {variant: summarise(rounds) for variant, rounds in measured.items()}
        except SystemExit:  # show what the failed process printed
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
    print(report(results, images=images, epochs=args.epochs, rounds=args.rounds))
    if args.json:
        figures = {"images": images, "epochs": args.epochs, "rounds": args.rounds, **results}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
