"""Compare runs side by side in one self-contained HTML report, logged to MLflow.

    python -m pipeline.compare RUN_ID_OR_DVC_EXP [...]   # the runs named
    python -m pipeline.compare --best 3                  # the 3 trained models with the lowest test_loss
    python -m pipeline.compare --study vae-search        # that study's 4 best trials (--best N to change)

MLflow's UI compares params and metric curves but cannot put two runs' images side by
side; this report holds both, with every image embedded, so it opens with no network.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import markupsafe
import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.environment import PREFIX
from pipeline.figures import FIGURES
from pipeline.params import PipelineError, load_params
from pipeline.stage import run_stage
from pipeline.tracking import queries, registry, store

REPORT = Path("reports/compare.html")
REDRAWN = "loss_curves.png"  # each run's own loss curves: the report draws them anew, overlaid
CURVES = ("loss", "reconstruction", "kl")
HIGHER_IS_BETTER = ("knn_accuracy", "active_units")
# KL is a cost traded against reconstruction, so no run's KL is "best".
NO_BEST = ("test_kl", "kl/train", "kl/val", "kl", "val_kl")  # the last two: runs before grouping
STUDY_TRIALS = 4
PER_CLASS = "reconstruction_by_class/"  # ten rows, folded away under the main metrics


@dataclass
class RunView:
    """What the report shows of one run."""

    run_id: str
    name: str
    kind: str  # "trained model" or "sweep trial"
    description: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # e.g. "loss/val" -> per epoch
    figures: dict[str, bytes] = field(default_factory=dict)
    versions: list[dict[str, str]] = field(default_factory=list)  # registered: name, version, aliases
    environment: dict[str, str] = field(default_factory=dict)  # the `env.*` tags, prefix dropped


def collect(run) -> RunView:
    """Read one MLflow run's params, metrics, per-epoch curves and figures."""
    run_id, tags = run.info.run_id, run.data.tags
    curves = {}
    for name in CURVES:
        for split, legacy in (("train", name), ("val", f"val_{name}")):
            # Runs logged before metrics were grouped hold Keras' own names.
            logged = next((k for k in (f"{name}/{split}", legacy) if k in run.data.metrics), None)
            if logged:
                curves[f"{name}/{split}"] = queries.metric_history(run_id, logged)
    return RunView(
        run_id=run_id,
        name=run.info.run_name,
        kind="sweep trial" if "optuna.trial_number" in tags else "trained model",
        description=tags.get("mlflow.note.content", ""),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        curves=curves,
        figures=queries.run_figures(run_id),
        versions=[
            {
                "name": version.name,
                "version": str(version.version),
                "aliases": ", ".join(version.aliases) or "—",
                "promote": registry.promote_command(version.name, str(version.version), store.store_uri()),
            }
            for version in registry.versions_of_run(run_id)
        ],
        environment={k.removeprefix(PREFIX): v for k, v in tags.items() if k.startswith(PREFIX)},
    )


def data_uri(png: bytes) -> str:
    """A PNG embedded in the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def inline_code(text: str) -> markupsafe.Markup:
    """A run description's `code` spans as <code>; the rest escaped (descriptions are one-line Markdown)."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def overlaid_curves(runs: list[RunView]) -> Figure:
    """Every run's train (dashed) and validation (solid) curves, one panel per quantity."""
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, len(CURVES))
    colours = matplotlib.colormaps["tab10"]
    for ax, name in zip(axes, CURVES, strict=True):
        for i, run in enumerate(runs):
            for split, style in (("train", "--"), ("val", "-")):
                values = run.curves.get(f"{name}/{split}", [])
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, color=colours(i % 10), label=f"{run.name} ({split})")
        ax.set(title={"loss": "Negative ELBO", "reconstruction": "Reconstruction", "kl": "KL"}[name])
        ax.set(xlabel="epoch", ylabel="nats per image")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4) + 0.04, 1, 1))
    return fig


def param_rows(runs: list[RunView], attribute: str = "params") -> tuple[list[dict], list[dict]]:
    """Params (or another of the runs' tables, say `environment`) as rows `{key, values}`:
    those that differ between runs, then those that do not."""
    tables = [getattr(run, attribute) for run in runs]
    keys = sorted({key for table in tables for key in table})
    rows = [{"key": key, "values": [table.get(key, "—") for table in tables]} for key in keys]
    differ = [row for row in rows if len(set(row["values"])) > 1]
    same = [row for row in rows if len(set(row["values"])) == 1]
    return differ, same


def best_index(key: str, values: list[float | None]) -> int | None:
    """Which run holds the best value of a metric, or None where no direction is better."""
    present = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if key in NO_BEST or len({v for v, _ in present}) < 2:  # no direction, or nothing to choose
        return None
    pick = max if key in HIGHER_IS_BETTER else min
    return pick(present)[1]


def metric_rows(runs: list[RunView]) -> tuple[list[dict], list[dict]]:
    """Metrics as rows `{key, values, best}`: the main ones (test, then the final epoch's), and per class."""
    keys = sorted({key for run in runs for key in run.metrics}, key=lambda k: ("/" in k, k))
    rows = []
    for key in keys:
        values = [run.metrics.get(key) for run in runs]
        rows.append({"key": key, "values": values, "best": best_index(key, values)})
    per_class = [row for row in rows if row["key"].startswith(PER_CLASS)]
    return [row for row in rows if row not in per_class], per_class


def render(runs: list[RunView], *, title: str) -> str:
    """The whole report as one HTML page."""
    differ, same = param_rows(runs)
    env_differ, env_same = param_rows(runs, "environment")
    metrics, per_class = metric_rows(runs)
    figures = [
        {"title": figure.caption, "cells": [run.figures.get(figure.name) for run in runs]}
        for figure in FIGURES
        if figure.name != REDRAWN and any(figure.name in run.figures for run in runs)
    ]
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["data_uri"] = data_uri
    environment.filters["inline_code"] = inline_code
    return environment.get_template("compare.html").render(
        title=title,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        runs=runs,
        differ=differ,
        same=same,
        env_differ=env_differ,
        env_same=env_same,
        metrics=metrics,
        per_class=per_class,
        curves=data_uri(figure_png(overlaid_curves(runs))),
        figures=figures,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="MLflow run ids or DVC experiment names")
    parser.add_argument("--best", type=int, metavar="N", help="the N runs with the lowest test_loss")
    parser.add_argument("--study", metavar="NAME", help=f"an Optuna study's best trials ({STUDY_TRIALS})")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"the HTML file (default {REPORT})")
    args = parser.parse_args(argv)
    chosen = [bool(args.runs), args.study is not None, args.best is not None and args.study is None]
    if sum(chosen) != 1:
        parser.error("name runs, or give --best N, or --study NAME (with --best N for N trials)")
    if args.best is not None and args.best < 1:
        parser.error(f"--best must be at least 1 (got {args.best})")
    return args


def select(args: argparse.Namespace, experiment_id: str) -> tuple[list, str]:
    """The runs the command line names, and how they were chosen."""
    if args.runs:
        return queries.runs_named(experiment_id, args.runs), "named runs"
    if args.study is not None:
        n = args.best or STUDY_TRIALS
        runs = queries.best_trials(experiment_id, args.study, n)
        if not runs:
            raise PipelineError(f"study {args.study!r} has no complete trial in the MLflow store")
        return runs, f"the {n} best trials of study {args.study}"
    runs = queries.best_runs(experiment_id, args.best)
    if not runs:
        raise PipelineError("no finished trained model in the MLflow store; run `dvc repro` first")
    return runs, f"the {args.best} runs with the lowest test_loss"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run's figures
    params = load_params()
    experiment_id = store.configure(params.base.tracking.experiment)
    runs, how = select(args, experiment_id)
    views = [collect(run) for run in runs]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(views, title=f"Comparing {len(views)} runs: {how}"))
    run_id = queries.log_comparison(experiment_id, args.output, runs, how)
    print(
        f"compare: {len(views)} run{'' if len(views) == 1 else 's'} in {args.output}\n"
        f"compare: logged to MLflow run {run_id}: {store.run_link(run_id)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main)
