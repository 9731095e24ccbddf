"""The benchmark scripts run end to end on small data and print their figures (no timing asserted)."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest

from tests.helpers import ROOT, run

pytestmark = pytest.mark.slow


def test_train_speed_compares_the_baseline_with_the_stage(official_dir, tmp_path):
    """Slow: three trainings in fresh processes (plain Keras, the stage, the stage untracked)."""
    figures = tmp_path / "speed.json"
    result = run(
        [sys.executable, "bench/train_speed.py", "--epochs", "2", "--train-size", "1000",
         "--json", str(figures)],
        ROOT,
    )  # fmt: skip
    printed = result.stdout
    assert "1,000 training images per epoch" in printed
    assert "tracking overhead" in printed
    report = json.loads(figures.read_text())
    for variant in ("baseline", "stage", "untracked"):
        assert report[variant]["seconds_per_epoch"] > 0
        assert report[variant]["peak_rss"] > 100 * 2**20
        assert math.isfinite(report[variant]["val_loss"])
        assert variant in printed
    # The stage and its training without tracking are the same computation.
    assert report["stage"]["val_loss"] == report["untracked"]["val_loss"]


def test_startup_reports_every_stage(official_dir):
    printed = run([sys.executable, "bench/startup.py", "--repeat", "1"], ROOT).stdout
    assert "no-op dvc repro" in printed
    for stage in ("prepare", "train", "evaluate", "plot", "tune"):
        assert f"  {stage} " in printed
    assert "MLflow store connection" in printed and "model build" in printed
    assert "pipeline.compare" in printed and "tune --print-best wall" in printed
    compare = next(line for line in printed.splitlines() if "pipeline.compare" in line)
    assert "tensorflow" not in compare and "keras" not in compare


def test_sweep_speed_times_every_setting_on_the_same_study(official_dir, tmp_path):
    """Slow: three real sweeps, one per setting of workers and threads, each starting TensorFlow
    in every worker."""
    figures = tmp_path / "sweep.json"
    result = run(
        [sys.executable, "bench/sweep_speed.py", "--trials", "2", "--epochs", "1", "--train-size", "500",
         "--rounds", "1", "--json", str(figures)],
        ROOT,
    )  # fmt: skip
    report = json.loads(figures.read_text())
    cores = report["cores"]
    names = ["1 x default", f"1 x {cores} threads", f"{cores} x 1 thread"]
    assert list(report["settings"]) == names
    for name in names:
        setting = report["settings"][name]
        assert setting["trial_epochs_per_min"] > 0 and setting["wall_s"] > setting["span_s"] > 0
        assert setting["peak_rss"] > 200 * 2**20  # a launcher and at least one TensorFlow worker
        assert name in result.stdout
    assert "trial-epochs/min" in result.stdout


def test_replicates_times_the_queue_in_every_setting(official_dir, tmp_path):
    """Slow: three real `dvc queue` runs of two replicates each (the least that runs two at once),
    each a whole pipeline of three TensorFlow processes."""
    figures = tmp_path / "replicates.json"
    result = run(
        [sys.executable, "bench/replicates.py", "--replicates", "2", "--epochs", "1", "--train-size", "500",
         "--test-size", "200", "--json", str(figures)],
        ROOT,
    )  # fmt: skip
    report = json.loads(figures.read_text())
    cores = report["cores"]
    names = ["-j 1, default threads", f"-j {cores}, 1 thread", f"-j {cores}, default threads"]
    assert list(report["wall_s"]) == names
    for name in names:
        assert report["wall_s"][name] > 0 and name in result.stdout
    assert "2 replicates x 1 epochs on 500 images" in result.stdout


def test_time_to_quality_scores_as_evaluate_and_names_a_preset(reproduced, tmp_path):
    """Slow: six trainings (three recipes on two seeds, the least that shows seeds differ and a
    winner is picked) and a `dvc repro` whose `test_loss` the script must match."""
    repo = reproduced("time_to_quality")  # the small project after `dvc repro`
    figures = tmp_path / "ttq.json"
    printed = run(
        [sys.executable, "bench/time_to_quality.py", "--params", str(repo / "params.yaml"), "--only",
         "--seeds", "42", "7", "--preset", "short=train.epochs=1",
         "--preset", "cosine=train.schedule=cosine,train.learning_rate=0.003,train.early_stopping=1",
         "--batch-sizes", "100", "250", "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    report = json.loads(figures.read_text())
    recipes = report["recipes"]
    # The defaults at seed 42 are the model `dvc repro` trained: the same test_loss as `evaluate`.
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())["test_loss"]
    assert recipes["defaults"]["test_loss"][0] == evaluated
    assert recipes["defaults"]["test_loss"][1] != evaluated  # seed 7: another model
    assert recipes["short"]["epochs_run"] == [1, 1]
    assert set(report["images_per_s"]) == {"100", "250"}
    for name, row in recipes.items():
        assert f"{row['ratio']:.2f}x" in printed and name in printed
        defaults = recipes["defaults"]["val_loss"]  # chosen on validation; test_loss reports
        assert row["qualifies"] == all(a <= b for a, b in zip(row["val_loss"], defaults, strict=True))
    last = printed.strip().splitlines()[-1]
    qualified = [name for name in ("short", "cosine") if recipes[name]["qualifies"]]
    if qualified:
        winner = max(qualified, key=lambda name: recipes[name]["ratio"])
        overrides = report["presets"][winner]
        assert last == "preset: dvc exp run " + " ".join(f"-S {k}={v}" for k, v in overrides.items())
    else:
        assert last == "preset: none was no worse than the defaults on every seed (val_loss)"


# The last commit whose set-up compiled no bytecode: its probes take the other branch.
UNCOMPILED = "0ba53bf~1"


def test_stage_start_splits_the_start_and_compares_a_commit(tmp_path):
    figures = tmp_path / "start.json"
    printed = run(
        [sys.executable, "bench/stage_start.py", "--repeat", "1", "--stages", "train",
         "--against", UNCOMPILED, "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    stages = json.loads(figures.read_text())["stages"]
    assert set(stages) == {f"{UNCOMPILED} train", "this checkout train"}
    assert f"{UNCOMPILED}: its set-up compiles no bytecode" in printed
    for row in stages.values():
        parts = ("MLflow", "stage", "TensorFlow", "main's", "first op")
        assert row["total"] == pytest.approx(sum(row[part] for part in parts))
        assert 0 < row["Keras"] < row["TensorFlow"]  # imported by TensorFlow's import
    assert "train: " in printed.splitlines()[-1] and printed.strip().endswith("x")


def test_end_to_end_times_both_recipes_through_dvc(official_dir, tmp_path):
    """Slow: five `dvc exp run`s (an untimed one, then two rounds of the two recipes, the least
    that pairs runs made in both orders and prints an interval; tests/test_bench_figures.py
    checks the interval itself)."""
    figures = tmp_path / "end_to_end.json"
    printed = run(
        [sys.executable, "bench/end_to_end.py", "--defaults", "train.epochs=2", "--preset", "train.epochs=1",
         "--train-size", "500", "--test-size", "200", "--rounds", "2", "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    report = json.loads(figures.read_text())
    assert report["recipes"] == {"defaults": ["train.epochs=2"], "preset": ["train.epochs=1"]}
    for name in ("defaults", "preset"):
        walls = report["wall_s"][name]
        assert len(walls) == 2 and all(wall > 0 and f"{wall:.1f}" in printed for wall in walls)
        for wall, shares in zip(walls, report["stage_s"][name], strict=True):  # DVC's work, then each stage
            assert list(shares) == ["dvc", "prepare", "train", "evaluate", "plot"]  # prepare: skipped
            assert sum(shares.values()) == pytest.approx(wall)
            # Each stage that ran starts a Python with TensorFlow: over a second, and more than
            # DVC's own work before the first stage or a stage it skipped.
            ran = min(shares["train"], shares["evaluate"], shares["plot"])
            assert ran > 1 and max(shares["prepare"], shares["dvc"]) < ran
    # Round i's ratio pairs the two recipes' i-th runs, whichever of them went first.
    by_round = [d / p for d, p in zip(report["wall_s"]["defaults"], report["wall_s"]["preset"], strict=True)]
    assert report["by_round"] == pytest.approx(by_round)
    logs = [math.log(r) for r in by_round]
    geometric = math.exp(sum(logs) / 2)
    each, headline = printed.strip().splitlines()[-2:]
    ratios = f"{by_round[0]:.2f}x, {by_round[1]:.2f}x"
    assert each.startswith(f"each round: {ratios}; geometric mean {geometric:.2f}x, 95% t interval ")
    assert headline == f"preset end to end: {report['ratio']:.2f}x faster than the defaults (n = 2 each)"


def test_collapse_queues_every_variant_and_seed_through_dvc_and_names_the_stable_one(official_dir, tmp_path):
    """Slow: three pipelines through DVC's queue (two levers and the reference they are judged
    against), so that the choice between levers runs."""
    figures = tmp_path / "collapse.json"
    printed = run(
        [sys.executable, "bench/collapse.py", "--seeds", "3", "--epochs", "2", "--train-size", "1000",
         "--test-size", "500", "--min-active", "1", "--variant", "warm=train.kl_warmup_epochs=1",
         "--variant", "free=train.free_bits=0.5", "--variant", "defaults=model.latent_dim=2",
         "--figures", str(tmp_path / "figures"), "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    report = json.loads(figures.read_text())
    rows = {name: report["table"][name]["3"] for name in ("warm", "free", "defaults")}
    for name, row in rows.items():
        assert row is not None and 0 <= row["active_units/val"] <= 16, name
        line = f"{name:<12} {3:>5} {row['val_loss']:9.2f} {row['active_units/val']:10.0f} "
        assert line + f"{row['test_loss']:10.2f}" in printed
    assert rows["defaults"]["active_units/val"] <= 2  # the reference is latent 2
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "kl_per_unit_defaults_seed3.png", "kl_per_unit_free_seed3.png", "kl_per_unit_warm_seed3.png"
    ]  # fmt: skip
    bar = rows["defaults"]["val_loss"]
    stable = [n for n in ("warm", "free") if rows[n]["active_units/val"] >= 1 and rows[n]["val_loss"] <= bar]
    last = printed.strip().splitlines()[-1]
    levers = {"warm": "-S train.kl_warmup_epochs=1", "free": "-S train.free_bits=0.5"}
    if stable:
        chosen = min(stable, key=lambda n: rows[n]["val_loss"])
        assert last == f"stable: dvc exp run -S model.latent_dim=16 {levers[chosen]}"
    else:
        assert last == "stable: none of warm, free"


def test_epoch_images_prints_the_pictures_share_of_training(official_dir):
    result = run([sys.executable, "bench/epoch_images.py", "--train-size", "500", "--epochs", "2"], ROOT)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training: ") and " s per epoch on 500 images" in lines[0]
    assert lines[1].startswith("pictures: ") and " s per set (latent dim 2, with the scatter; " in lines[1]
    share = r"epoch images: \d+\.\d\d% of the default run's training "
    assert re.fullmatch(share + r"\(7 sets of 30 epochs at plot.epoch_images 5\)", lines[2])


def test_route_times_each_part_of_two_routes_and_compares_them_on_fresh_seeds(official_dir, tmp_path):
    """Slow: two sweeps and their re-trains through `dvc repro` and `dvc exp run` (a's two best
    side by side), each in a clone of its own, then both bests on two fresh seeds through DVC's
    queue."""
    import mlflow

    figures = tmp_path / "route.json"
    printed = run(
        [sys.executable, "bench/route.py", "--route", "a:tune.confirm_top=0;tune.pruner=none;top=2",
         "--route", "b:tune.n_trials=3;train.kl_weight=2", "--sampler-seeds", "5", "--seeds", "1", "2",
         "--tune", "n_trials=2", "--tune", "confirm_top=1", "--tune", "confirm_seeds=1",
         "--tune", "overrides={train.epochs: 2}", "--epochs", "2", "--train-size", "500",
         "--test-size", "500", "--workdir", str(tmp_path / "work"), "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    runs = json.loads(figures.read_text())["runs"]
    assert list(runs) == ["a-5", "b-5"]
    a, b = runs["a-5"], runs["b-5"]
    # Each route's own settings reached its sweep: no confirming in a, one more trial in b.
    assert a["summary"]["confirm_seconds"] is None and a["seconds"]["confirm"] == 0
    assert 0 < b["seconds"]["confirm"] == b["summary"]["confirm_seconds"] < b["summary"]["seconds"]
    assert sum(a["summary"][f"trials_{s}"] for s in ("complete", "pruned", "failed")) == 2
    assert sum(b["summary"][f"trials_{s}"] for s in ("complete", "pruned", "failed")) >= 4
    for name, route_run in runs.items():
        assert route_run["seconds"]["sweep"] > 0 and route_run["seconds"]["retrain"] > 0
        seconds = route_run["seconds"]
        assert seconds["sweep"] + seconds["confirm"] == pytest.approx(route_run["sweep_wall"])
        assert math.isfinite(route_run["retrain"]["test_loss"])
        line = f"{name:<16} " + " ".join(
            f"{route_run['fresh'][seed]['val_loss']:10.2f} {route_run['fresh'][seed]['test_loss']:7.2f}"
            for seed in ("1", "2")
        )
        assert line in printed
    assert b["summary"]["best_params"] == b["best"] and "retrained" not in b
    # a re-trained its two best, one thread each, and kept the lower val_loss: the figures its
    # fresh seeds train with are that one's.
    assert a["summary"]["ranking"][0]["params"] == a["summary"]["best_params"]
    assert sorted(a["retrained"]) == ["1", "2"]
    kept = min(a["retrained"], key=lambda rank: a["retrained"][rank]["val_loss"])
    assert a["kept"] == int(kept) and a["retrain"] == a["retrained"][kept]
    assert a["best"] == a["summary"]["ranking"][a["kept"] - 1]["params"]
    assert a["summary"]["ranking"][0]["params"] != a["summary"]["ranking"][1]["params"]
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work/a-5/mlruns/mlflow.db'}")
    retrained = store.search_runs(
        [e.experiment_id for e in store.search_experiments()], "tags.`pipeline.stage` = 'train'"
    )
    assert sorted(r.data.tags["dvc.exp_name"] for r in retrained) == ["route-best-1", "route-best-2"]
    assert {r.data.params["train.threads"] for r in retrained} == {"1"}
    # The fresh re-trains carry the route's settings outside the search (b's KL weight) and the best's.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work/fresh/mlruns/mlflow.db'}")
    fresh = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`pipeline.stage` = 'train'"
    )
    by_name = {r.data.tags["dvc.exp_name"]: r.data.params for r in fresh}
    assert sorted(by_name) == ["a-5-s1", "a-5-s2", "b-5-s1", "b-5-s2"]
    for r in fresh:  # each row of the report is its own run's
        name = r.data.tags["dvc.exp_name"]
        assert runs[name[:3]]["fresh"][name[-1]]["test_loss"] == r.data.metrics["test_loss"]
    for name, params in by_name.items():
        route_run = runs[name[:3]]
        assert float(params["train.kl_weight"]) == (2 if name.startswith("b") else 1)
        assert params["train.seed"] == name[-1]
        assert params["model.latent_dim"] == str(route_run["best"]["model.latent_dim"])
    # One draw each: the difference of the two draws' means over their fresh seeds, and no test.
    mean = {name: sum(runs[name]["fresh"][s]["test_loss"] for s in ("1", "2")) / 2 for name in runs}
    difference = mean["b-5"] - mean["a-5"]
    assert printed.splitlines()[-1] == (
        f"b against a: wall time {sum(b['seconds'].values()) / sum(a['seconds'].values()):.2f}x by draw; "
        "test_loss b - a, each draw's mean over its fresh seeds, by draw: "
        f"{difference:+.2f} on each of 1 (no test)"
    )
