"""Compare runs side by side in one self-contained HTML report, logged to MLflow.

    python -m pipeline.compare RUN_ID_OR_DVC_EXP [...]   # the runs named
    python -m pipeline.compare --best 3                  # the 3 configurations with the lowest mean val_loss
    python -m pipeline.compare --study vae-search        # that study's 4 best trials (--best N to change)

MLflow's compare view shows params, metrics and one chosen artifact per run; this report
pools runs that differ only in their training seed into one configuration: its n (a seed that
failed or diverged counted against it), mean, standard deviation and range. It calls one best
only when Welch's t-test on the primary metric (validation loss) says its difference to the
next is larger than the noise; other metrics' p values are adjusted for their number. Under
`--best`, validation's choice is named and the test set reports on it. Every image is
embedded, so the page opens with no network.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import re
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import markupsafe
import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import ttest_ind

from pipeline import configuration, selection
from pipeline.environment import PREFIX
from pipeline.figures import FIGURES
from pipeline.params import PipelineError, load_params
from pipeline.stage import run_stage
from pipeline.tracking import queries, registry, runs, store

REPORT = Path("reports/compare.html")
REDRAWN = "loss_curves.png"  # each run's own loss curves: the report draws them anew, overlaid
CURVES = ("loss", "reconstruction", "kl")
STUDY_TRIALS = 4
THREADS = "train.threads"  # not in the configuration id: a mix is named (docs/results.md, threads)
PER_CLASS = "reconstruction_by_class/"  # ten rows, folded away under the main metrics
ALPHA = 0.05  # Welch's t-test: a difference is shown when p (adjusted, off the primary row) is below this
# The metric a comparison is decided on: the first of these that every configuration has.
# Runs a user names are being chosen between, so validation first, as every choice is made (test
# for runs from before validation was logged). Runs that `--best` picked by their validation loss
# were chosen already: the test set reports on them, and a test on the very metric that picked
# them would be optimistic.
CHOOSING = (selection.SELECT_BY, selection.TRIAL_SELECT_BY, selection.REPORTED)
REPORTING = (selection.REPORTED, selection.SELECT_BY, selection.TRIAL_SELECT_BY)
SUMMARY = (
    "val_loss",
    "objective_val_loss",
    "test_loss",
    "test_iw_nll",
    "active_units",
)  # printed, where present


@dataclass
class RunView:
    """What the report shows of one run."""

    run_id: str
    name: str
    config: str  # the `pipeline.config_id` tag: replicates share it
    code: str  # the `pipeline.code_digest` tag: the code that shaped its numbers ("" before the tag)
    kind: str  # "trained model" or "sweep trial"
    description: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # e.g. "loss/val" -> per epoch
    figures: dict[str, bytes] = field(default_factory=dict)
    versions: list[dict[str, str]] = field(default_factory=list)  # registered: name, version, aliases
    environment: dict[str, str] = field(default_factory=dict)  # the `env.*` tags, prefix dropped
    replicate_of: str = ""  # a confirming sweep trial: the trial it repeats on another seed


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
        config=tags.get(queries.CONFIG_TAG) or run_id,  # runs before the tag: each its own
        code=tags.get(runs.CODE_TAG, ""),
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
        replicate_of=tags.get("optuna.replicate_of", ""),
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


@dataclass
class Group:
    """The runs of one configuration: the same params but for the training seed."""

    config: str
    runs: list[RunView]
    name: str = ""  # what sets it apart from the others compared: see `group_runs`
    failed: dict[int, str] = field(default_factory=dict)  # seed -> "diverged" or "failed"

    @property
    def seeds(self) -> str:
        """`n = 4 of 5; 1 diverged`: the runs shown, and the seeds that failed and count against it
        (once, whether or not their run is among those shown)."""
        failed = {str(seed) for seed in self.failed}
        trained = [run for run in self.runs if run.params.get("train.seed") not in failed]
        return selection.seeds_text(len(trained) + len(failed), Counter(self.failed.values()))

    @property
    def stable(self) -> bool:
        """No seed failed: only such a configuration can be marked best."""
        return not self.failed

    def values(self, key: str) -> list[float]:
        """The finite values of a metric over the runs; for a sweep trial confirmed on other seeds,
        over those seeds alone, as `tune` ranks it (the seed that selected it is optimistic)."""
        runs = [run for run in self.runs if run.replicate_of] or self.runs
        return [v for run in runs if (v := run.metrics.get(key)) is not None and math.isfinite(v)]


def group_runs(runs: list[RunView]) -> list[Group]:
    """Runs by configuration, in the order each configuration first appears, each named by every
    setting in which the configurations differ (`model.latent_dim 16, train.schedule cosine`). A single
    configuration, or one that differs only in its data or code, takes its first run's name
    without the seed."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(run.config, Group(run.config, [])).runs.append(run)
    found = list(groups.values())
    settings = [
        {k: v for k, v in group.runs[0].params.items() if not k.startswith(configuration.NO_EFFECT)}
        for group in found
    ]
    keys = sorted({k for params in settings for k in params if len({p.get(k) for p in settings}) > 1})
    for group, params in zip(found, settings, strict=True):
        named = ", ".join(f"{key} {params.get(key, '—')}" for key in keys)
        group.name = named or re.sub(r", seed \d+", "", group.runs[0].name).split(" · ")[0]
    return found


@dataclass
class Spread:
    """A metric over one configuration's runs."""

    n: int
    mean: float
    sd: float | None  # None for a single run
    low: float
    high: float

    def __str__(self) -> str:
        if self.sd is None:
            return f"{self.mean:.5g}"
        return f"{self.mean:.5g} ± {self.sd:.2g}"


def spread(values: list[float]) -> Spread | None:
    """n, mean, sample standard deviation and range; None for no value."""
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return Spread(len(values), statistics.fmean(values), sd, min(values), max(values))


def welch(
    key: str, samples: list[list[float]], eligible: list[bool] | None = None
) -> tuple[int | None, float | None, str]:
    """The configuration with the best mean at a metric, the p of Welch's t-test between it and
    the runner-up, and why there is no test where there is none. No best where the metric has no
    better side (`selection.direction`) or fewer than two configurations have it. Only `eligible`
    configurations (by default all) compete: one with a failed seed ranks after every other."""
    eligible = eligible or [True] * len(samples)
    present = [(statistics.fmean(v), i) for i, v in enumerate(samples) if v and eligible[i]]
    better = selection.direction(key)
    if better is not None and len(present) < 2 and sum(bool(v) for v in samples) > 1:
        if present:
            return None, None, "no test: every other configuration has a failed seed"
        return None, None, "no test: every configuration has a failed seed"
    if better is None or len(present) < 2:
        return None, None, ""
    present.sort(reverse=better == "higher")
    (_, best), (_, second) = present[:2]
    a, b = samples[best], samples[second]
    if len(a) < 2 or len(b) < 2:
        return best, None, "no test: n = 1"
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return best, None, "no test: no spread"
    with warnings.catch_warnings():  # nearly equal samples (a system metric) warn of lost precision
        warnings.simplefilter("ignore", RuntimeWarning)
        return best, float(ttest_ind(a, b, equal_var=False).pvalue), ""


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the family-wise error rate of m tests held at the level each
    adjusted p is compared with. (statsmodels' `multipletests(method="holm")`, in five lines.)"""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdicts(
    keys: list[str], groups: list[Group], primary_order: tuple[str, ...] = CHOOSING
) -> dict[str, tuple[int | None, str]]:
    """For each metric, the configuration marked best (or None) and the row's verdict.

    One primary metric (the first of `primary_order` that every group has) carries the
    comparison at p < ALPHA. Every other metric with a
    better side is tested too, but its p is adjusted for the number of them (`holm`), so that
    among twenty rows none is "shown" by chance more than one time in twenty.
    """
    primary = next((key for key in primary_order if all(group.values(key) for group in groups)), None)
    stable = [group.stable for group in groups]
    tested = {key: welch(key, [group.values(key) for group in groups], stable) for key in keys}
    others = [key for key, (_, p, _) in tested.items() if p is not None and key != primary]
    adjusted = dict(zip(others, holm([tested[k][1] for k in others]), strict=True))
    result = {}
    for key, (best, p, why) in tested.items():
        if p is None:
            result[key] = (None, why)
            continue
        shown = (
            f"p = {p:.2g}" if key == primary else f"p = {adjusted[key]:.2g}, adjusted over {len(others)} rows"
        )
        if key == primary:
            shown = f"primary: {shown}"
        if (p if key == primary else adjusted[key]) < ALPHA:
            result[key] = (best, shown)
        else:
            result[key] = (None, f"not shown to differ ({shown})")
    return result


def band_curves(groups: list[Group]) -> Figure:
    """Each configuration's train (dashed) and validation (solid) curves, one panel per quantity:
    the mean over its runs, with a band of one standard deviation where it has more than one."""
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, len(CURVES))
    colours = matplotlib.colormaps["tab10"]
    for ax, name in zip(axes, CURVES, strict=True):
        for i, group in enumerate(groups):
            for split, style in (("train", "--"), ("val", "-")):
                curves = [run.curves[key] for run in group.runs if (key := f"{name}/{split}") in run.curves]
                epochs = min((len(c) for c in curves), default=0)  # a shorter run bounds the mean
                if not epochs:
                    continue
                rows = [c[:epochs] for c in curves]
                mean = [statistics.fmean(column) for column in zip(*rows, strict=True)]
                label = f"{group.name} ({split}{f', n = {len(rows)}' if len(rows) > 1 else ''})"
                ax.plot(range(1, epochs + 1), mean, style, color=colours(i % 10), label=label)
                if len(rows) > 1:
                    sd = [statistics.stdev(column) for column in zip(*rows, strict=True)]
                    ax.fill_between(
                        range(1, epochs + 1),
                        [m - s for m, s in zip(mean, sd, strict=True)],
                        [m + s for m, s in zip(mean, sd, strict=True)],
                        color=colours(i % 10),
                        alpha=0.15,
                        linewidth=0,
                    )
        ax.set(title={"loss": "Negative ELBO", "reconstruction": "Reconstruction", "kl": "KL"}[name])
        ax.set(xlabel="epoch", ylabel="nats per image")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4) + 0.04, 1, 1))
    return fig


def param_rows(groups: list[Group], attribute: str = "params") -> tuple[list[dict], list[dict]]:
    """Params (or another of the runs' tables, say `environment`) as rows `{key, values}`, one value
    per configuration (its runs' values joined where they differ, as the seed does): the rows that
    differ between or within configurations, then those that do not."""
    keys = sorted({key for group in groups for run in group.runs for key in getattr(run, attribute)})
    differ, same = [], []
    for key in keys:
        seen = [dict.fromkeys(getattr(run, attribute).get(key, "—") for run in g.runs) for g in groups]
        row = {"key": key, "values": [", ".join(values) for values in seen]}
        varies = any(len(values) > 1 for values in seen) or len(set(row["values"])) > 1
        (differ if varies else same).append(row)
    return differ, same


def metric_rows(
    groups: list[Group], primary_order: tuple[str, ...] = CHOOSING
) -> tuple[list[dict], list[dict]]:
    """Metrics as rows `{key, better, cells, best, verdict}`, one cell (a `Spread`) per
    configuration: the main ones (test, then the final epoch's), and per class."""
    keys = sorted(
        {key for group in groups for run in group.runs for key in run.metrics}, key=lambda k: ("/" in k, k)
    )
    decided = verdicts(keys, groups, primary_order)
    rows = [
        {
            "key": key,
            "better": selection.direction(key) or "—",
            "cells": [spread(group.values(key)) for group in groups],
            "best": decided[key][0],
            "verdict": decided[key][1],
        }
        for key in keys
    ]
    per_class = [row for row in rows if row["key"].startswith(PER_CLASS)]
    return [row for row in rows if row not in per_class], per_class


@dataclass
class Uncertainty:
    """How sure a configuration's mean of a split's loss is as an absolute figure ("below 240"):
    the seeds' standard error and the images' (the split's own noise, which no number of seeds
    removes), combined as independent errors."""

    key: str
    mean: float
    seeds: float | None  # sd / sqrt(n) over the seeds; None for one seed
    images: float  # the mean over the runs of each run's standard error over the images

    n: int  # seeds

    @property
    def combined(self) -> float:
        return math.hypot(self.seeds or 0.0, self.images)

    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the mean: Student's t on the Welch-Satterthwaite degrees of
        freedom (the images' error, over thousands of images, counts as known); None for one
        seed, whose spread is unknown."""
        if self.seeds is None:
            return None
        from scipy.stats import t

        df = (self.n - 1) * (self.combined / self.seeds) ** 4 if self.seeds else math.inf
        half = t.ppf(0.975, df) * self.combined
        return self.mean - half, self.mean + half

    def __str__(self) -> str:
        if (bounds := self.interval()) is None:
            return f"{self.key} {self.mean:.2f}, images' standard error {self.images:.2f}; n = 1, no interval"
        return (
            f"{self.key} {self.mean:.2f}, standard error {self.combined:.2f} (seeds {self.seeds:.2f}, "
            f"images {self.images:.2f}); 95% interval {bounds[0]:.2f}..{bounds[1]:.2f}"
        )


def uncertainty(group: Group, key: str) -> Uncertainty | None:
    """`key`'s mean with its standard errors over seeds and images, where its runs logged
    `<key>_se`; None otherwise."""
    values, errors = group.values(key), group.values(f"{key}_se")
    if not values or len(errors) != len(values):
        return None
    seeds = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return Uncertainty(key, statistics.fmean(values), seeds, statistics.fmean(errors), len(values))


def summary_lines(groups: list[Group], *, chosen: bool = False) -> list[str]:
    """One line per configuration: n, then mean ± sd and range of the summary metrics, and the
    test loss's standard error; then, for each summary metric, which configuration is best or
    why none is. With `chosen` (the groups are `--best`'s, ranked on validation), the first is
    named as validation's choice and the test rows report on it."""
    lines = []
    for group in groups:
        parts = [f"{group.name} [{group.config[:12]}], {group.seeds}"]
        for key in SUMMARY:
            cell = spread(group.values(key))
            if cell is not None:
                parts.append(f"{key} {cell}" + (f" ({cell.low:.4g}..{cell.high:.4g})" if cell.n > 1 else ""))
        if (error := uncertainty(group, selection.REPORTED)) is not None:
            parts.append(str(error))
        lines.append("; ".join(parts))
    for group in groups:
        codes = sorted({run.code for run in group.runs if run.code})
        if len(codes) > 1:
            lines.append(
                f"{group.name} [{group.config[:12]}]: its runs come from {len(codes)} versions of the code "
                f"that shapes the numbers ({', '.join(codes)}), so its spread includes their difference"
            )
        threads = sorted({run.params[THREADS] for run in group.runs if THREADS in run.params})
        if len(threads) > 1:
            lines.append(
                f"{group.name} [{group.config[:12]}]: its runs mix {THREADS} ({', '.join(threads)}), which "
                "rounds differently as another seed would, so its spread includes that too"
            )
    keys = sorted({key for group in groups for run in group.runs for key in run.metrics})
    decided = verdicts(keys, groups, REPORTING if chosen else CHOOSING)
    if chosen:
        lines.append(choice_line(groups))
    for key in SUMMARY:
        best, why = decided.get(key, (None, ""))
        if chosen and key in (selection.SELECT_BY, selection.TRIAL_SELECT_BY):
            continue  # what chose: the line above
        label = f"reported on test, {key}" if chosen else f"best {key}"
        if best is not None:
            lines.append(f"{label}: {groups[best].name} ({why})")
        elif why:
            lines.append(f"{label}: none, {why}")
    return lines


def choice_line(groups: list[Group]) -> str:
    """What validation chose among `--best`'s configurations: the first, ranked by mean val_loss
    with failed seeds counted against (`selection.rank`)."""
    first = groups[0]
    cell = spread(first.values(selection.SELECT_BY))
    return (
        f"validation chose: {first.name} [{first.config[:12]}], mean {selection.SELECT_BY} {cell} "
        f"({first.seeds}), the lowest of every configuration in the experiment, failed seeds "
        f"counted against; the test set reports on that choice"
    )


def render(groups: list[Group], *, title: str, chosen: bool = False) -> str:
    """The whole report as one HTML page; with `chosen`, as `summary_lines` says."""
    primary_order = REPORTING if chosen else CHOOSING
    runs = [run for group in groups for run in group.runs]
    differ, same = param_rows(groups)
    env_differ, env_same = param_rows(groups, "environment")
    metrics, per_class = metric_rows(groups, primary_order)
    shown = [next((run for run in group.runs if run.figures), group.runs[0]) for group in groups]
    figures = [
        {"title": figure.caption, "cells": [run.figures.get(figure.name) for run in shown]}
        for figure in FIGURES
        if figure.name != REDRAWN and any(figure.name in run.figures for run in shown)
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
        choice=choice_line(groups) if chosen else "",
        uncertainties=[uncertainty(group, selection.REPORTED) for group in groups],
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        alpha=ALPHA,
        groups=groups,
        runs=runs,
        shown=shown,
        differ=differ,
        same=same,
        env_differ=env_differ,
        env_same=env_same,
        metrics=metrics,
        per_class=per_class,
        per_run=[
            {"key": row["key"], "values": [run.metrics.get(row["key"]) for run in runs]} for row in metrics
        ],
        curves=data_uri(figure_png(band_curves(groups))),
        figures=figures,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="MLflow run ids or DVC experiment names")
    parser.add_argument(
        "--best",
        type=int,
        metavar="N",
        help="the N configurations with the lowest mean val_loss (test_loss is reported)",
    )
    parser.add_argument("--study", metavar="NAME", help=f"an Optuna study's best trials ({STUDY_TRIALS})")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"the HTML file (default {REPORT})")
    args = parser.parse_args(argv)
    chosen = [bool(args.runs), args.study is not None, args.best is not None and args.study is None]
    if sum(chosen) != 1:
        parser.error("name runs, or give --best N, or --study NAME (with --best N for N trials)")
    if args.best is not None and args.best < 1:
        parser.error(f"--best must be at least 1 (got {args.best})")
    return args


def select(
    args: argparse.Namespace, experiment_id: str, failed: dict[str, dict[int, str]]
) -> tuple[list, str]:
    """The runs the command line names, and how they were chosen (`--best` counting the `failed`
    seeds against their configurations)."""
    if args.runs:
        return queries.runs_named(experiment_id, args.runs), "named runs"
    if args.study is not None:
        n = args.best or STUDY_TRIALS
        runs = queries.best_trials(experiment_id, args.study, n)
        if not runs:
            raise PipelineError(f"study {args.study!r} has no complete trial in the MLflow store")
        return runs, f"the {n} best trials of study {args.study}"
    runs = queries.best_configurations(experiment_id, args.best, failed)
    if not runs:
        raise PipelineError("no finished trained model in the MLflow store; run `dvc repro` first")
    return runs, f"the {args.best} configurations with the lowest mean val_loss"


def plural(n: int, noun: str) -> str:
    """`1 run`, `3 runs`."""
    return f"{n} {noun}{'s' * (n != 1)}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run's figures
    params = load_params()
    experiment_id = store.configure(params.base.tracking.experiment)
    # A seed that failed or diverged counts against its configuration; a study ranks its own.
    failed = queries.failed_seeds(experiment_id) if args.study is None else {}
    runs, how = select(args, experiment_id, failed)
    groups = group_runs([collect(run) for run in runs])
    for group in groups:
        group.failed = failed.get(group.config, {})
    counts = f"{plural(len(runs), 'run')} of {plural(len(groups), 'configuration')}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    chosen = args.best is not None and args.study is None
    args.output.write_text(render(groups, title=f"Comparing {counts}: {how}", chosen=chosen))
    run_id = queries.log_comparison(experiment_id, args.output, runs, how)
    for line in summary_lines(groups, chosen=chosen):
        print(f"compare: {line}")
    print(
        f"compare: {counts} in {args.output}\n"
        f"compare: logged to MLflow run {run_id}: {store.run_link(run_id)}{store.ui_hint()}"
    )


if __name__ == "__main__":
    run_stage(main)
