"""The comparison report: runs read from MLflow, grouped by configuration, summarised in lines
and rendered as one self-contained HTML page (`templates/compare.html`)."""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jinja2
import markupsafe

from pipeline import charts, configuration, selection
from pipeline.environment import PREFIX
from pipeline.figures import FIGURES
from pipeline.stats import ALPHA, CHOOSING, REPORTING, spread, uncertainty, verdicts
from pipeline.tracking import queries, registry, runs, store

REDRAWN = "loss_curves.png"  # each run's own loss curves: the report draws them anew, overlaid
# Not in the configuration id, as they change how the numbers are computed: a mix is named
# (docs/results.md, the thread count; docs/gpu.md).
HOW_COMPUTED = {
    "train.threads": "rounds differently as another seed would",
    "base.backend": "draws other random streams and rounds differently",
}
PER_CLASS = "reconstruction_by_class/"  # ten rows, folded away under the main metrics
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

    def plane_point(self) -> tuple[float, float] | None:
        """The validation rate (KL) and distortion (reconstruction) of the model kept: the last
        epoch's, or the best epoch's under early stopping; None if either is missing or not finite."""
        if selection.TRIAL_RATE in self.metrics:  # a two-objective sweep's trial: its kept epoch's
            point = (self.metrics[selection.TRIAL_RATE], self.metrics[selection.TRIAL_DISTORTION])
            return point if all(math.isfinite(v) for v in point) else None
        rates, distortions = self.curves.get("kl/val"), self.curves.get("reconstruction/val")
        if not rates or not distortions:
            return None
        at = int(self.metrics.get("best_epoch", len(rates) - 1))
        point = (rates[at], distortions[at])
        return point if all(math.isfinite(v) for v in point) else None


def collect(run) -> RunView:
    """Read one MLflow run's params, metrics, per-epoch curves and figures."""
    run_id, tags = run.info.run_id, run.data.tags
    curves = {}
    for name in charts.CURVES:
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
        return [v for run in self.ranked() if (v := run.metrics.get(key)) is not None and math.isfinite(v)]

    def ranked(self) -> list[RunView]:
        """The runs its figures come from: for a sweep trial confirmed on other seeds, those."""
        return [run for run in self.runs if run.replicate_of] or self.runs

    def plane(self) -> tuple[list[float], list[float]]:
        """The rates and the distortions of `ranked` runs that have both."""
        points = [point for run in self.ranked() if (point := run.plane_point())]
        return [rate for rate, _ in points], [distortion for _, distortion in points]


def plane_rows(groups: list[Group]) -> list[dict]:
    """Where each configuration sits on the rate-distortion plane: its rate and distortion over its
    seeds (`Spread`s), by rate, highest first; configurations without the curves are left out."""
    rows = []
    for group in groups:
        rates, distortions = group.plane()
        if rates:
            rows.append({"group": group, "rate": spread(rates), "distortion": spread(distortions)})
    return sorted(rows, key=lambda row: -row["rate"].mean)


def plane_line(rows: list[dict]) -> str:
    """Which configuration is where: the one that codes most (the highest rate) and the one that
    codes least, with how much each gives up in distortion; one line."""
    if len(rows) < 2:
        return ""
    most, least = rows[0], rows[-1]
    return (
        f"{most['group'].name} codes the most (rate {most['rate']} nats, distortion {most['distortion']}); "
        f"{least['group'].name} the least (rate {least['rate']}, distortion {least['distortion']}), "
        f"{most['rate'].mean - least['rate'].mean:.1f} nats less rate for "
        f"{least['distortion'].mean - most['distortion'].mean:+.1f} nats of distortion "
        f"(means ± sd over n = {most['rate'].n} and {least['rate'].n} seeds; validation, the models kept)"
    )


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
        rates, distortions = group.plane()
        if rates:
            parts.append(f"validation rate {spread(rates)}, distortion {spread(distortions)}")
        lines.append("; ".join(parts))
    if where := plane_line(plane_rows(groups)):
        lines.append(f"rate-distortion: {where}")
    for group in groups:
        codes = sorted({run.code for run in group.runs if run.code})
        if len(codes) > 1:
            lines.append(
                f"{group.name} [{group.config[:12]}]: its runs come from {len(codes)} versions of the code "
                f"that shapes the numbers ({', '.join(codes)}), so its spread includes their difference"
            )
        for key, how in HOW_COMPUTED.items():
            values = sorted({run.params[key] for run in group.runs if key in run.params})
            if len(values) > 1:
                lines.append(
                    f"{group.name} [{group.config[:12]}]: its runs mix {key} ({', '.join(values)}), which "
                    f"{how}, so its spread includes that too"
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
    plane = plane_rows(groups)
    points = [(row["group"].name, *row["group"].plane()) for row in plane]
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
        curves=data_uri(charts.figure_png(charts.band_curves(groups))),
        plane=plane,
        plane_line=plane_line(plane),
        plane_png=data_uri(charts.figure_png(charts.configurations_plane(points))) if points else "",
        figures=figures,
    )
