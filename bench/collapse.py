"""Collapse of a larger latent space, seed by seed: latent 16 with and without each lever.

    python bench/collapse.py        # latent 16, 30 epochs, seeds 3 1 2 4 5: none, the levers, the defaults
    python bench/collapse.py --seeds 3 --epochs 2 --train-size 1000 --test-size 500 \
        --variant none= --variant warm=train.kl_warmup_epochs=1      # a quick look (a warm-up below 2 epochs)

In a clone of this repository's last commit, with its own DVC cache and MLflow store
(`replicates.make_clone`), every variant and seed is one DVC experiment, queued as the README
queues replicates, `dvc exp run --queue -S model.latent_dim=16 -S train.seed=N
-S train.threads=1 [the variant's keys]`, and run through the real stages by `dvc queue start
-j C` (C usable cores). The figures come from the clone's MLflow store: `val_loss` and
`active_units/val` (the last epoch's active units on the validation images), what is chosen by;
`test_loss` and `active_units` (what `evaluate` reports on the test set).

A variant is stable when every seed keeps at least `--min-active` active units on validation and
ends with a `val_loss` no worse than the reference's: the mean of the variant `defaults` (latent
2) where it ran, else the committed defaults' run (`metrics/train.json`). The last line names the
lever variant that is stable with the lowest mean `val_loss`, chosen on validation alone:
`stable: dvc exp run -S key=value ...`. With `--figures DIR`, the KL-per-unit figure of the
seed with the fewest active units of each variant is copied there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicates import dvc, make_clone, statuses

ROOT = Path(__file__).resolve().parents[1]
LATENT = {"model.latent_dim": 16}
VARIANTS: dict[str, dict[str, object]] = {
    "none": {},
    "kl-warmup": {"train.kl_warmup_epochs": 10},
    "free-bits": {"train.free_bits": 0.5},
    "defaults": {"model.latent_dim": 2},  # the reference: latent 2, which never collapses
}
REFERENCE = "defaults"
KEYS = ("val_loss", "active_units/val", "test_loss", "active_units")  # chosen by; reported


def stable_variants(table: dict[str, dict[int, dict | None]], *, bar: float, min_active: int) -> list[str]:
    """The lever variants (neither `none` nor the reference) that trained on every seed: at least
    `min_active` active units on validation and a `val_loss` at most `bar`. Validation alone."""
    return [
        name
        for name, rows in table.items()
        if name not in ("none", REFERENCE)
        and all(
            row and row["active_units/val"] >= min_active and row["val_loss"] <= bar for row in rows.values()
        )
    ]


def choose(table: dict[str, dict[int, dict | None]], *, bar: float, min_active: int) -> str | None:
    """The stable variant with the lowest mean `val_loss`, or None."""
    stable = stable_variants(table, bar=bar, min_active=min_active)
    mean = {name: statistics.fmean(row["val_loss"] for row in table[name].values()) for name in stable}
    return min(stable, key=mean.__getitem__) if stable else None


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """`name=key=value,key=value` -> the name and its overrides."""
    sys.path.insert(0, str(ROOT))
    from pipeline.params import parse_override

    name, _, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name=key=value,key=value")
    return name, dict(parse_override(item) for item in rest.split(",") if item)


def queue(clone: Path, variants: dict[str, dict], seeds: list[int]) -> None:
    """Every seed of every variant, seed by seed, so that a short run still covers each variant."""
    for seed in seeds:
        for name, keys in variants.items():
            settings = {**LATENT, **keys, "train.seed": seed, "train.threads": 1}
            args = [arg for key, value in settings.items() for arg in ("-S", f"{key}={value}")]
            dvc(["exp", "run", "--queue", "-n", f"{name}-s{seed}", *args], clone)


def run_queue(clone: Path, jobs: int) -> float:
    """`dvc queue start -j jobs`, then wait until nothing is queued or running; the wall seconds."""
    start = time.perf_counter()
    dvc(["queue", "start", "-j", str(jobs)], clone)
    while {"Queued", "Running"} & set(statuses(clone)):
        time.sleep(10)
    return time.perf_counter() - start


def results(clone: Path) -> dict[str, dict]:
    """Each experiment's figures, by its name, from the clone's MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlruns/mlflow.db'}")
    found = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'"):
            name = run.data.tags.get("dvc.exp_name")
            if name and "test_loss" in run.data.metrics:
                metrics = run.data.metrics
                found[name] = {"run_id": run.info.run_id, **{key: metrics[key] for key in KEYS}}
    return found


def spread(values: list[float]) -> str:
    """`mean ± sd`, or the one value."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 1, 2, 4, 5])
    parser.add_argument(
        "--variant", type=parse_variant, action="append", help="name=key=value,...; repeatable"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: train.epochs (30)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--min-active", type=int, default=5, help="fewer active units is a collapse")
    parser.add_argument("--workdir", type=Path, help="keep the clone here (default: a temporary folder)")
    parser.add_argument(
        "--figures", type=Path, help="copy each variant's worst seed's KL-per-unit figure here"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()

    variants = dict(options.variant) if options.variant else VARIANTS
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="collapse-") as scratch:
        clone = (options.workdir or Path(scratch)) / "project"
        budget = {"train.epochs": options.epochs, "data.train_size": options.train_size,
                  "data.test_size": options.test_size}  # fmt: skip
        make_clone(clone, budget)
        queue(clone, variants, options.seeds)
        wall = run_queue(clone, cores)
        found = results(clone)
        table = {name: {seed: found.get(f"{name}-s{seed}") for seed in options.seeds} for name in variants}
        if options.figures:
            import mlflow

            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlruns/mlflow.db'}")
            options.figures.mkdir(parents=True, exist_ok=True)
            for name, rows in table.items():
                done = {seed: row for seed, row in rows.items() if row}
                if done:
                    seed = min(done, key=lambda s: (done[s]["active_units"], -done[s]["val_loss"]))
                    local = client.download_artifacts(
                        done[seed]["run_id"], "figures/kl_per_unit.png", scratch
                    )
                    Path(local).replace(options.figures / f"kl_per_unit_{name}_seed{seed}.png")

    print(
        f"latent {LATENT['model.latent_dim']} unless a variant says otherwise; seeds {options.seeds}; "
        f"{cores} at a time through DVC's queue, {wall / 60:.1f} min"
    )
    print(f"{'variant':<12} {'seed':>5} {'val_loss':>9} {'val active':>10} {'test_loss':>10} {'active':>7}")
    summary = {}
    for name, rows in table.items():
        done = [row for row in rows.values() if row]
        for seed, row in rows.items():
            if row:
                print(
                    f"{name:<12} {seed:>5} {row['val_loss']:9.2f} {row['active_units/val']:10.0f} "
                    f"{row['test_loss']:10.2f} {row['active_units']:7.0f}"
                )
            else:
                print(f"{name:<12} {seed:>5} {'failed':>9}")
        summary[name] = {key: [row[key] for row in done] for key in KEYS}
        val, val_active, test, active = (spread(summary[name][key]) for key in KEYS)
        print(
            f"{name:<12} {'all':>5} {val:>9} {val_active:>10} {test:>10} {active:>7}  "
            f"(n = {len(done)} of {len(rows)})"
        )
    reference = summary.get(REFERENCE, {}).get("val_loss")
    if reference:
        bar, source = statistics.fmean(reference), f"the mean of variant {REFERENCE!r}"
    else:  # the defaults' committed run: latent 2, seed 42, the full budget
        bar = json.loads((ROOT / "metrics/train.json").read_text())["val_loss"]
        source = "the committed defaults' (metrics/train.json, seed 42)"
    print(
        f"stable if, on every seed: {options.min_active}+ active units on validation, val_loss at most "
        f"{bar:.2f}, {source}"
    )
    stable = stable_variants(table, bar=bar, min_active=options.min_active)
    if options.json:
        options.json.write_text(json.dumps({"seeds": options.seeds, "variants": variants, "table": table,
                                             "wall_s": wall, "stable": stable}, indent=2) + "\n")  # fmt: skip
    best = choose(table, bar=bar, min_active=options.min_active)
    if best:
        keys = {**LATENT, **variants[best]}
        print("stable: dvc exp run " + " ".join(f"-S {key}={value}" for key, value in keys.items()))
    else:
        print(f"stable: none of {', '.join(n for n in variants if n not in ('none', REFERENCE))}")


if __name__ == "__main__":
    main()
