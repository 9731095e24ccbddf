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


def champion(
    holder: Hashable | None, groups: Mapping[Hashable, Sequence[float]], margin: float
) -> tuple[Hashable | None, str]:
    """Which configuration holds the champion alias, given the one that holds it now and every
    configuration's validation losses (one per seed); and why, in words.

    The rule: another configuration takes the alias when its mean is below the holder's by more
    than `margin`, over at least as many seeds as the holder has, or at least two. So one lucky
    seed never overturns a configuration measured on two or more, and the alias moves back when
    the holder's own later seeds pull its mean behind another's.
    """
    if holder is None or holder not in groups:
        best = rank(groups)[0] if groups else None
        return best, "the first evaluated"
    held = groups[holder]
    needed = min(len(held), 2)
    rivals = {
        key: values
        for key, values in groups.items()
        if key != holder and len(values) >= needed and score(values) < score(held) - margin
    }
    if not rivals:
        return holder, f"no configuration's mean {SELECT_BY} is below the champion's by more than {margin:g}"
    best = rank(rivals)[0]
    return best, (
        f"mean {SELECT_BY} {score(rivals[best]):.3f} over {len(rivals[best])} seed(s) against the "
        f"champion's {score(held):.3f} over {len(held)}: better by more than the margin, {margin:g}"
    )
