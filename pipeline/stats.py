"""The statistics of a comparison: a metric's spread over seeds, Welch's t-test between the best
configuration and the next, Holm's adjustment over many rows, and how sure an absolute figure is
(the seeds' and the test images' standard errors). What is chosen, and how: `selection`."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scipy.stats import ttest_ind

from pipeline import selection


class Replicates(Protocol):
    """One configuration's runs, as the statistics read them (`report.Group`)."""

    stable: bool  # no seed failed: only such a configuration can be marked best

    def values(self, key: str) -> list[float]: ...


ALPHA = 0.05  # Welch's t-test: a difference is shown when p (adjusted, off the primary row) is below this
# The metric a comparison is decided on: the first of these that every configuration has.
# Runs a user names are being chosen between, so validation first, as every choice is made (test
# for runs from before validation was logged). Runs that `--best` picked by their validation loss
# were chosen already: the test set reports on them, and a test on the very metric that picked
# them would be optimistic.
CHOOSING = (selection.SELECT_BY, selection.TRIAL_SELECT_BY, selection.REPORTED)
REPORTING = (selection.REPORTED, selection.SELECT_BY, selection.TRIAL_SELECT_BY)


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
    keys: list[str], groups: Sequence[Replicates], primary_order: tuple[str, ...] = CHOOSING
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


def uncertainty(group: Replicates, key: str) -> Uncertainty | None:
    """`key`'s mean with its standard errors over seeds and images, where its runs logged
    `<key>_se`; None otherwise."""
    values, errors = group.values(key), group.values(f"{key}_se")
    if not values or len(errors) != len(values):
        return None
    seeds = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return Uncertainty(key, statistics.fmean(values), seeds, statistics.fmean(errors), len(values))
