"""The route from a sweep to a model, end to end and timed by part: the sweep, its confirming,
the re-train of its best; then that best on seeds that chose nothing.

    python bench/route.py     # the route params.yaml holds, sampler seeds 100 and 200, fresh seeds 901..903
    python bench/route.py --route today \\
        --route 'short:tune.overrides={train.epochs: 3};tune.confirm_seeds=1'   # two routes, balanced
    python bench/route.py --route today \\
        --route 'top2:tune.overrides={train.epochs: 3};tune.confirm_top=0;top=2'   # the best two re-trained
    python bench/route.py --tune n_trials=2 --tune confirm_top=0 --sampler-seeds 1 \\
        --tune 'overrides={train.epochs: 1, data.train_size: 500}' \\
        --epochs 1 --train-size 500 --test-size 500 --seeds 1 2     # a quick look

A route is a name and the settings it changes in params.yaml (`name:key=value;key=value`, keys
as in params.yaml; `;` between them, since a YAML value may hold commas), and `top=K` where it
re-trains the sweep's K best instead of its best alone. Each route runs once
per `--sampler-seeds` value (`tune.sampler_seed`: the sweep's draw), in an order that balances
which goes first: the routes as given for the first sampler seed, reversed for the second, and
so on (A B B A for two). Each route run, in a clone of this repository's last commit with its
settings (and `--tune`, `--epochs`, `--train-size`, `--test-size`) in params.yaml:
1. `dvc repro sweep/dvc.yaml`: the sweep, its confirming trials timed apart
   (`confirm_seconds` in `sweep/summary.json`);
2. `dvc exp run $(python -m pipeline.tune --print-best)`: the re-train, the whole pipeline
   (train, evaluate, plot) as the README's route runs it. With `top=K`: the K best
   (`--print-best --rank k`) queued with one thread each and run side by side
   (`dvc queue start -j K`), the lowest `val_loss` kept; the queue and its runs timed as the
   re-train (the ranks read before).
Nothing else runs while these are timed. Then, untimed, every route run's best on each of
`--seeds` (seeds no sweep or choice used), with the route's own settings, through one DVC queue
`-j C` (C usable cores) with one thread each. It prints each part's wall time, the fresh seeds'
`val_loss` and `test_loss` (n, mean ± sd), and against the first route: the wall time's ratio
and the `test_loss` difference of each draw's mean over its fresh seeds, paired by draw
(paired t-test, n draws).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pipeline
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, beside this script
from collapse import results, run_queue, spread
from replicates import clone_env, dvc, make_clone

from pipeline.params import PipelineError, parse_override, read_yaml
from pipeline.search.best import RANKED

ROUTE_SEED = 42  # train.seed: the sweep's trials (their confirming seeds follow it) and the re-train
PARTS = ("sweep", "confirm", "retrain")
TOP = "top"  # a route's own key, beside params.yaml's: how many of the sweep's best it re-trains


def setting(text: str) -> tuple[str, object]:
    """`key=value`, the value read as `dvc exp run -S` reads it."""
    try:
        return parse_override(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tune_setting(text: str) -> tuple[str, object]:
    """`key=value` under `tune:`."""
    key, value = setting(text)
    return f"tune.{key}", value


def route_arg(text: str) -> tuple[str, dict[str, object]]:
    """`name` or `name:key=value;key=value`, `top=K` among them or not."""
    name, _, rest = text.partition(":")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"a route's name is letters, digits, - and _: got {name!r}")
    settings = dict(setting(part) for part in rest.split(";") if part.strip())
    top = settings.get(TOP, 1)
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= RANKED:
        raise argparse.ArgumentTypeError(f"{TOP}: a whole number from 1 to {RANKED}, got {top!r}")
    return name, settings


def print_best(clone: Path, rank: int) -> list[str]:
    """`python -m pipeline.tune --print-best --rank rank` in the clone: `-S` arguments."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tune", "--print-best", "--rank", str(rank)],
        cwd=clone, env=clone_env(), capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"route: {clone.name}: {result.stderr.strip()}")
    return result.stdout.split()


def balanced_order(routes: list[str], sampler_seeds: list[int]) -> list[tuple[str, int]]:
    """Every (route, sampler seed), the routes in the given order for the first seed, reversed
    for the second, and so on: each route goes first as often as the others, for two routes."""
    order = []
    for i, seed in enumerate(sampler_seeds):
        order += [(route, seed) for route in (routes if i % 2 == 0 else routes[::-1])]
    return order


def paired(first: list[float], second: list[float]) -> str:
    """`second - first` paired: mean ± sd, the 95% t interval and the paired t-test, with n."""
    from scipy import stats

    differences = [b - a for a, b in zip(first, second, strict=True)]
    n = len(differences)
    if n < 2 or len(set(differences)) == 1:
        return f"{differences[0]:+.2f} on each of {n} (no test)" if differences else "no pairs"
    mean = statistics.fmean(differences)
    low, high = stats.t.interval(0.95, n - 1, mean, stats.sem(differences))
    p = stats.ttest_rel(second, first).pvalue
    sd = statistics.stdev(differences)
    return (
        f"{mean:+.2f} ± {sd:.2f}, 95% t interval {low:+.2f}..{high:+.2f}, paired t-test p = {p:.2g}, n = {n}"
    )


def run_route(clone: Path, settings: dict[str, object], top: int = 1) -> dict:
    """One route in a fresh clone: the sweep, then the re-train of its best, or of its `top` best
    side by side keeping the lowest `val_loss`; times and figures."""
    make_clone(clone, settings)
    start = time.perf_counter()
    dvc(["repro", "sweep/dvc.yaml"], clone)
    sweep_wall = time.perf_counter() - start
    summary = json.loads((clone / "sweep/summary.json").read_text())
    ranked = [print_best(clone, rank) for rank in range(1, top + 1)]  # all there before any work
    start = time.perf_counter()
    if top == 1:
        dvc(["exp", "run", "-n", "route-best", *ranked[0]], clone)
    else:
        for rank, args in enumerate(ranked, 1):
            dvc(["exp", "run", "--queue", "-n", f"route-best-{rank}", *args, "-S", "train.threads=1"], clone)
        run_queue(clone, top)
    retrain_wall = time.perf_counter() - start
    confirm = summary.get("confirm_seconds") or 0.0
    found = results(clone)
    run = {
        "seconds": {"sweep": sweep_wall - confirm, "confirm": confirm, "retrain": retrain_wall},
        "sweep_wall": sweep_wall,
        "summary": summary,
        "best": read_yaml(clone / "sweep/best_params.yaml"),
        "retrain": found.get("route-best"),
    }
    if top > 1:
        run["retrained"] = {rank: found.get(f"route-best-{rank}") for rank in range(1, top + 1)}
        done = [rank for rank, row in run["retrained"].items() if row]
        if done:  # choose on validation
            kept = min(done, key=lambda rank: run["retrained"][rank]["val_loss"])
            run.update(kept=kept, best=summary["ranking"][kept - 1]["params"], retrain=run["retrained"][kept])
    return run


def shared_trainings(bests: dict[str, dict[str, object]]) -> dict[str, str]:
    """The route run that trains for each: runs whose bests are the same settings share one
    training on each fresh seed (the same seed gives the same numbers)."""
    return {
        name: next(other for other in bests if bests[other] == settings) for name, settings in bests.items()
    }


def queue_fresh(clone: Path, bests: dict[str, dict[str, object]], seeds: list[int]) -> None:
    """Each best on each fresh seed, one thread each, queued in `clone` seed by seed, so that a
    queue stopped early still covers every route run: train and evaluate, not plot, which no
    figure here reads."""
    for seed in seeds:
        for name, settings in bests.items():
            keys = {**settings, "train.seed": seed, "train.threads": 1}
            args = [arg for key, value in keys.items() for arg in ("-S", f"{key}={value}")]
            dvc(["exp", "run", "--queue", "-n", f"{name}-s{seed}", *args, "evaluate"], clone)


def fresh_settings(routes: dict[str, dict], runs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """What each route run's best trains with on the fresh seeds: its route's settings outside
    `tune:` (the trials and the re-train ran with them), then its best params."""
    return {
        name: {
            **{k: v for k, v in routes[run["route"]].items() if not k.startswith("tune.") and k != TOP},
            **run["best"],
        }
        for name, run in runs.items()
    }


def label(route: str, sampler_seed: int) -> str:
    return f"{route}-{sampler_seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--route", type=route_arg, action="append", default=[],
                        help="name[:key=value;key=value]; repeatable (default: params.yaml's)")  # fmt: skip
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=[100, 200],
                        help="tune.sampler_seed values: each route runs once with each")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[901, 902, 903],
                        help="train.seed values that chose nothing, for each route run's best")  # fmt: skip
    parser.add_argument("--tune", type=tune_setting, action="append", default=[],
                        help="key=value under tune: for every route; repeatable")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="re-trains' epochs (default: train.epochs)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--workdir", type=Path, help="keep the clones here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    routes = dict(options.route) or {"default": {}}
    if len(routes) < len(options.route):
        parser.error("--route: two routes have one name")
    if {ROUTE_SEED, ROUTE_SEED + 1, ROUTE_SEED + 2} & set(options.seeds):
        parser.error(f"--seeds: {ROUTE_SEED} to {ROUTE_SEED + 2} are the sweep's own seeds")
    cores = len(os.sched_getaffinity(0))
    for option in ("seeds", "sampler_seeds"):
        if len(set(getattr(options, option))) < len(getattr(options, option)):
            parser.error(f"--{option.replace('_', '-')}: a seed given twice")
    near = [(a, b) for a in options.sampler_seeds for b in options.sampler_seeds if 0 < b - a < cores]
    if near:  # worker k of a sweep draws with tune.sampler_seed + k, one worker per core
        parser.error(f"--sampler-seeds: {near[0]} share a worker's draw; keep them {cores} or more apart")

    budget = {"train.epochs": options.epochs, "data.train_size": options.train_size,
              "data.test_size": options.test_size, **dict(options.tune)}  # fmt: skip
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="route-") as scratch:
        work = options.workdir or Path(scratch)
        order = balanced_order(list(routes), options.sampler_seeds)
        for i, (route, sampler_seed) in enumerate(order, 1):
            name = label(route, sampler_seed)
            print(f"route run {i} of {len(order)}: {name}", file=sys.stderr, flush=True)
            own = {key: value for key, value in routes[route].items() if key != TOP}
            settings = {**budget, **own, "tune.sampler_seed": sampler_seed}
            top = routes[route].get(TOP, 1)
            runs[name] = {
                "route": route,
                "sampler_seed": sampler_seed,
                **run_route(work / name, settings, top),
            }
            if options.json:  # so far: a route run's figures outlast a later one's failure
                write_json(options.json, routes, runs)
        bests = fresh_settings(routes, runs)
        trains_for = shared_trainings(bests)
        unique = {name: settings for name, settings in bests.items() if trains_for[name] == name}
        count = len(unique) * len(options.seeds)
        print(f"fresh seeds {options.seeds}: {count} re-trains", file=sys.stderr, flush=True)
        fresh = work / "fresh"
        make_clone(fresh, budget)
        queue_fresh(fresh, unique, options.seeds)
        fresh_wall = run_queue(fresh, cores)
        found = results(fresh)
    for name, run in runs.items():
        run["fresh"] = {seed: found.get(f"{trains_for[name]}-s{seed}") for seed in options.seeds}
        run["fresh_trained_as"] = trains_for[name]
    report(routes, runs, options.seeds, cores, fresh_wall)
    if options.json:
        write_json(options.json, routes, runs)


def write_json(path: Path, routes: dict, runs: dict) -> None:
    path.write_text(json.dumps({"routes": routes, "runs": runs}, indent=2, default=str) + "\n")


def report(routes: dict, runs: dict, seeds: list[int], cores: int, fresh_wall: float) -> None:
    """Each route run's parts and figures, each route's means, and each route against the first."""
    print(
        f"{'route run':<16} {'sweep':>6} {'confirm':>8} {'re-train':>9} {'total':>6}  "
        "trials c/p/f  val(42) test(42)  best"
    )
    for name, run in runs.items():
        s, summary, retrain = run["seconds"], run["summary"], run["retrain"] or {}
        counts = "/".join(str(summary[f"trials_{state}"]) for state in ("complete", "pruned", "failed"))
        print(
            f"{name:<16} {s['sweep'] / 60:6.1f} {s['confirm'] / 60:8.1f} {s['retrain'] / 60:9.1f} "
            f"{sum(s.values()) / 60:6.1f}  {counts:>12} {retrain.get('val_loss', float('nan')):8.2f} "
            f"{retrain.get('test_loss', float('nan')):8.2f}  "
            + " ".join(f"{key}={value}" for key, value in run["best"].items())
        )
        if "retrained" in run:
            rows = run["retrained"].items()
            print(
                f"{'':<16} re-trained side by side, val(42) by rank: "
                + ", ".join(f"{k}: {r['val_loss']:.2f}" if r else f"{k}: failed" for k, r in rows)
                + f"; kept rank {run.get('kept')}, the lowest (a selection score); "
                "its test(42) is in the row above"
            )
    print(
        "minutes; the sweep is `dvc repro sweep/dvc.yaml` (DVC's and tune's start and the study's figures "
        "included) without its confirming; the re-train is the whole `dvc exp run`"
    )
    print(
        f"fresh seeds {seeds}, {cores} at a time with one thread each ({fresh_wall / 60:.1f} min, untimed):"
    )
    print(f"{'route run':<16} " + " ".join(f"{'s' + str(seed) + ' val':>10} {'test':>7}" for seed in seeds))
    for name, run in runs.items():
        cells = []
        for seed in seeds:
            row = run["fresh"][seed]
            cells.append(f"{row['val_loss']:10.2f} {row['test_loss']:7.2f}" if row else f"{'failed':>18}")
        print(f"{name:<16} " + " ".join(cells))

    first = next(iter(routes))
    by_route = {
        route: {r["sampler_seed"]: r for r in runs.values() if r["route"] == route} for route in routes
    }
    for route, draws in by_route.items():
        totals = [sum(r["seconds"].values()) / 60 for r in draws.values()]
        val = [draw_mean(r, seeds, "val_loss") for r in draws.values()]
        test = [draw_mean(r, seeds, "test_loss") for r in draws.values()]
        print(
            f"{route}: total {spread(totals)} min; each draw's mean over its fresh seeds: "
            f"val_loss {spread([v for v in val if v is not None])}, "
            f"test_loss {spread([t for t in test if t is not None])} (n = {sum(t is not None for t in test)} "
            f"of {len(draws)} draws, each {len(seeds)} seeds)"
        )
    for route, draws in by_route.items():
        if route == first:
            continue
        common = [seed for seed in draws if seed in by_route[first]]
        ratios = [
            sum(draws[s]["seconds"].values()) / sum(by_route[first][s]["seconds"].values()) for s in common
        ]
        pairs = [
            (draw_mean(by_route[first][s], seeds, "test_loss"), draw_mean(draws[s], seeds, "test_loss"))
            for s in common
        ]
        pairs = [pair for pair in pairs if None not in pair]
        difference = paired([a for a, _ in pairs], [b for _, b in pairs]) if pairs else "no pairs"
        print(
            f"{route} against {first}: wall time {', '.join(f'{r:.2f}x' for r in ratios)} by draw; "
            f"test_loss {route} - {first}, each draw's mean over its fresh seeds, by draw: {difference}"
        )


def draw_mean(run: dict, seeds: list[int], key: str) -> float | None:
    """A route run's mean over its fresh seeds; None if a seed failed, which leaves the draw out."""
    rows = [run["fresh"][seed] for seed in seeds]
    return None if None in rows else statistics.fmean(row[key] for row in rows)


if __name__ == "__main__":
    main()
