"""How the best of several configurations is chosen: on validation, with the test set kept for
reporting what was chosen; and which way each metric is better.

`train`, `tune`, `compare` and the registry's champion all choose through this module.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence

# What a configuration is chosen by: the validation negative ELBO of the model kept (the last
# epoch's, or the best epoch's under early stopping). A sweep trial records it as its objective.
SELECT_BY = "val_loss"
TRIAL_SELECT_BY = "objective_val_loss"
REPORTED = "test_loss"  # what is reported for the configuration chosen
# A two-objective sweep's trial records the two parts of its negative ELBO on validation: the
# rate (the KL) and the distortion (the reconstruction term), which sum to its `objective_val_loss`.
TRIAL_RATE = "objective_val_rate"
TRIAL_DISTORTION = "objective_val_distortion"

# Which way each metric is better. A metric not named here has no better side: KL and
# reconstruction are the two parts of the negative ELBO, each traded against the other, and the
# learning rate, the best epoch and MLflow's system metrics describe a run rather than grade it.
LOWER = ("val_loss", "objective_val_loss", "test_loss", "test_iw_nll", "loss/train", "loss/val")
HIGHER = ("knn_accuracy", "active_units", "active_units/val")


def direction(key: str) -> str | None:
    """`"lower"` or `"higher"` where one side of a metric is better, None where neither is."""
    if key in HIGHER:
        return "higher"
    return "lower" if key in LOWER else None


def score(values: Sequence[float]) -> float:
    """A configuration's mean over its seeds; a seed that diverged or failed (NaN, infinite)
    makes it infinite, so an unstable configuration ranks last instead of losing the seed."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf
    return statistics.fmean(values)


def rank(groups: Mapping[Hashable, Sequence[float]]) -> list[Hashable]:
    """Configurations by `score`, best (lowest) first; ties keep their given order."""
    return sorted(groups, key=lambda key: score(groups[key]))


def sweep_groups(entries: Iterable[tuple[Hashable, int | None, float]]) -> dict[Hashable, list[float]]:
    """A sweep's values by configuration, from `(searched trial, seed, value)` in trial order:
    seed None for the searched trial itself, whose value comes first, then its confirming seeds'
    in seed order. A confirming seed that failed is NaN, a completed retry replaces it, and a
    seed that ran twice counts once."""
    searched: dict[Hashable, float] = {}
    seeds: dict[Hashable, dict[int, float]] = {}
    for key, seed, value in entries:
        if seed is None:
            searched[key] = value
        else:
            by_seed = seeds.setdefault(key, {})
            if math.isnan(by_seed.get(seed, math.nan)):
                by_seed[seed] = value
    return {
        key: [value, *(seeds[key][seed] for seed in sorted(seeds.get(key, {})))]
        for key, value in searched.items()
    }


def confirmed(groups: Mapping[Hashable, Sequence[float]]) -> dict[Hashable, Sequence[float]]:
    """A sweep's configurations as they are ranked: each searched trial's value first, then its
    confirming seeds. The seed that selected a trial is optimistic for it (it was chosen for
    being low), so a configuration confirmed on other seeds is scored on those alone, and only
    confirmed configurations compete once any is; before that, the searched values."""
    repeated = {key: values[1:] for key, values in groups.items() if len(values) > 1}
    return repeated or dict(groups)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The groups' pooled sample sd and its degrees of freedom; (0, 0) with no group of two."""
    df = sum(len(values) - 1 for values in groups if len(values) > 1)
    if not df:
        return 0.0, 0
    squares = sum((len(values) - 1) * statistics.variance(values) for values in groups if len(values) > 1)
    return math.sqrt(squares / df), df


def beats(rival: Sequence[float], held: Sequence[float], *, sd: float, level: float) -> tuple[bool, str]:
    """Whether `rival`'s mean is below `held`'s beyond noise, by a one-sided test at `level` on
    the difference of means; and its statistic, in words. One seed's sd is `sd`, the spread
    measured, unless the two groups' pooled sample sd is larger: then that, and the test is
    Student's t on its degrees of freedom rather than a z-test."""
    pooled, df = pooled_sd([rival, held])
    scale = math.sqrt(1 / len(rival) + 1 / len(held))
    difference = statistics.fmean(held) - statistics.fmean(rival)
    if pooled > sd:
        from scipy.stats import t  # only here: a light command that never needs it never loads it

        statistic = difference / (pooled * scale)
        return statistic > t.ppf(1 - level, df), f"t = {statistic:.2f} on {df} df"
    statistic = difference / (sd * scale)
    return statistic > statistics.NormalDist().inv_cdf(1 - level), f"z = {statistic:.2f}"


def champion(
    holder: Hashable | None, groups: Mapping[Hashable, Sequence[float]], *, sd: float, level: float
) -> tuple[Hashable | None, str]:
    """Which configuration holds the champion alias, given the one that holds it now and every
    configuration's validation losses (one per seed, NaN for a seed that failed or diverged);
    and why, in words.

    The rule: another configuration takes the alias when a one-sided test at `level` (divided
    among the rivals) says its mean is below the holder's (`beats`): a z-test with one seed's sd
    `sd`, or Student's t where the two configurations' pooled sample sd is larger. It needs at
    least as many seeds as the holder, up to two, so one lucky seed never overturns a
    configuration measured on two or more; and no failed seed, while a holder with one loses to
    any configuration with none. The alias moves back when the holder's own later seeds pull
    its mean behind another's.
    """
    if holder is None or holder not in groups:
        best = rank(groups)[0] if groups else None
        return best, "the first evaluated"
    held = groups[holder]
    needed = min(len(held), 2)
    eligible = {
        key: values
        for key, values in groups.items()
        if key != holder and len(values) >= needed and math.isfinite(score(values))
    }
    if not math.isfinite(score(held)):
        if not eligible:
            return holder, f"the champion's configuration has a failed seed, but no other has {needed}+ seeds"
        best = rank(eligible)[0]
        return best, (
            f"the champion's configuration has a failed seed ({lost(held)}); mean {SELECT_BY} "
            f"{score(eligible[best]):.3f} over {len(eligible[best])} seed(s), none failed"
        )
    # Several rivals are several tests: each at level / their number (Bonferroni), so that an
    # equally good champion loses the alias to one of them no more often than to a single one.
    each = level / max(1, len(eligible))
    at = f"one-sided at {level:g}" + (f" / {len(eligible)} rivals" if len(eligible) > 1 else "")
    tested = {key: beats(values, held, sd=sd, level=each) for key, values in eligible.items()}
    rivals = {key: eligible[key] for key, (better, _) in tested.items() if better}
    if not rivals:
        return holder, f"no configuration's mean {SELECT_BY} is below the champion's beyond noise ({at})"
    best = rank(rivals)[0]
    return best, (
        f"mean {SELECT_BY} {score(rivals[best]):.3f} over {len(rivals[best])} seed(s) against the "
        f"champion's {score(held):.3f} over {len(held)}: lower beyond noise ({tested[best][1]}, {at})"
    )


def lost(values: Sequence[float]) -> str:
    """`n = 4 of 5; 1 failed or diverged`, for values with NaN where a seed failed."""
    return seeds_text(len(values), {"failed or diverged": sum(not math.isfinite(v) for v in values)})


def seeds_text(ran: int, failed: Mapping[str, int]) -> str:
    """`n = 4 of 5; 1 diverged`: the seeds that count, of those that ran, and why the others do not."""
    counted = ran - sum(failed.values())
    if counted == ran:
        return f"n = {ran}"
    return f"n = {counted} of {ran}; " + ", ".join(f"{count} {why}" for why, count in failed.items() if count)


def pareto_front(points: Mapping[Hashable, tuple[float, float]]) -> list[Hashable]:
    """The keys of the points that no other point beats on both coordinates (both lower is
    better), in order of the first coordinate: the rate-distortion front. Optuna's own
    `Study.best_trials` does this for a study; this takes any points, so that a study's searched
    trials can be separated from the trials that confirm them. A tie keeps both."""
    front: list[Hashable] = []
    for key in sorted(points, key=lambda k: points[k]):
        if not front or points[key][1] < points[front[-1]][1] or points[key] == points[front[-1]]:
            front.append(key)
    return front
