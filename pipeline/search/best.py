"""A study's best: its trials grouped by configuration, the best re-trained on more seeds, the
ranking on those seeds, and the study's figures."""

from __future__ import annotations

import math
import statistics
import sys
import warnings
from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline import selection
from pipeline.params import Dimension
from pipeline.search.study import FINISHED, finished_count

# A confirming trial's user attributes: the trial it repeats, and its training seed.
REPLICATE_OF = "replicate_of"
SEED = "train.seed"
DIVERGED = "diverged"  # a failed trial's user attribute when its training diverged
RANKED = 5  # configurations the summary ranks, for re-training more than the best


def study_figures(study: optuna.Study, space: dict[str, Dimension]) -> dict[str, Any]:
    """Optuna's own figures, as far as the complete trials allow each one; none without one. With
    two objectives, the trials on the rate-distortion plane with their front, and the params'
    importance for the negative ELBO (their sum), in place of the one objective's history."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {}
    from optuna.visualization import matplotlib as vis

    if len(study.directions) > 1:
        return {
            "rate_distortion_front.png": front_figure(study),
            **_drawn({"param_importances.png": lambda: vis.plot_param_importances(
                study, target=loss, target_name="val_loss")}),
        }  # fmt: skip
    plots = {
        "optimization_history.png": lambda: vis.plot_optimization_history(study),
        "param_importances.png": lambda: vis.plot_param_importances(study),
        "intermediate_values.png": lambda: vis.plot_intermediate_values(study),
    }
    if {"model.latent_dim", "train.learning_rate"} <= set(space):
        plots["contour_latent_dim_learning_rate.png"] = lambda: vis.plot_contour(
            study, params=["model.latent_dim", "train.learning_rate"]
        )
    return _drawn(plots)


def _drawn(plots: dict[str, Any]) -> dict[str, Any]:
    """Optuna's matplotlib figures by name; one its trials cannot draw is left out, and said."""
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Importances of a target (two objectives' sum) come with a reminder that low is better.
        warnings.filterwarnings(
            "ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning
        )
        for name, draw in plots.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError) as exc:  # e.g. too few complete trials for importances
                print(f"tune: no {name}: {exc}", file=sys.stderr)
                continue
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
            figure.set_size_inches(8, 6)
            figure.tight_layout()
            figures[name] = figure
    return figures


def front_figure(study: optuna.Study):
    """`charts.front_plane` of a two-objective study: its searched trials, its front, and the
    member `best_configuration` chose."""
    from pipeline.charts import front_plane

    trials = study.get_trials(deepcopy=False)
    searched = [
        tuple(t.values) for t in trials if t.state == TrialState.COMPLETE and REPLICATE_OF not in t.user_attrs
    ]
    best = best_configuration(study)
    chosen = tuple(trials[best["best_trial"]].values) if best else None
    return front_plane(searched, [tuple(trials[number].values) for number in front(study)], chosen)


def loss(trial: optuna.trial.FrozenTrial) -> float:
    """A trial's validation negative ELBO: its value, or with two objectives (rate and
    distortion) their sum."""
    return math.fsum(trial.values)


def configurations(study: optuna.Study) -> dict[int, list[float]]:
    """`selection.sweep_groups` of the study: by searched trial, its negative ELBO, then its
    confirming seeds' (NaN for one whose training diverged)."""
    entries = []
    for trial in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        if REPLICATE_OF not in trial.user_attrs:
            if trial.state == TrialState.COMPLETE:
                entries.append((trial.number, None, loss(trial)))
        elif trial.state == TrialState.COMPLETE or trial.user_attrs.get(DIVERGED):
            value = loss(trial) if trial.state == TrialState.COMPLETE else math.nan
            entries.append((trial.user_attrs[REPLICATE_OF], trial.user_attrs[SEED], value))
        # Neither: a duplicate that stood down (pruned), or a worker stopped or killed: queued again.
    return selection.sweep_groups(entries)


def front(study: optuna.Study) -> list[int]:
    """A two-objective study's searched trials on the Pareto front of (rate, distortion), by rate;
    the trials that confirm them on other seeds are not candidates of their own. With one
    objective, every complete searched trial."""
    searched = {
        trial.number: tuple(trial.values)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if REPLICATE_OF not in trial.user_attrs
    }
    return selection.pareto_front(searched) if len(study.directions) > 1 else sorted(searched)


def candidates(study: optuna.Study) -> dict[int, list[float]]:
    """`configurations`, with two objectives only the front's: what the best is chosen from."""
    groups = configurations(study)
    if len(study.directions) == 1:
        return groups
    members = set(front(study))
    return {number: values for number, values in groups.items() if number in members}


def duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """An earlier trial queued for the same configuration and seed that has not failed: the one
    that runs it. Launchers on several machines can queue a confirming seed at the same moment."""
    key = (trial.user_attrs[REPLICATE_OF], trial.user_attrs[SEED])
    for other in study.get_trials(
        deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    ):
        if (
            other.number < trial.number
            and (other.user_attrs.get(REPLICATE_OF), other.user_attrs.get(SEED)) == key
        ):
            return other.number
    return None


def enqueue_replicates(study: optuna.Study, top: int, seeds: int, first_seed: int) -> int:
    """Queue `seeds` more trials, at seeds `first_seed + 1...`, of each of the `top` best searched
    trials (with two objectives, the front's `top` lowest negative ELBOs), unless the study
    already holds them; return how many finished trials the study will hold once they have run.

    Optuna's own queue: the workers take these first, with the trial's values as fixed params.
    """
    groups = candidates(study)
    trials = study.get_trials(deepcopy=False)
    searched = [trials[number] for number in sorted(groups, key=lambda n: groups[n][0])[:top]]
    standing = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    held = {  # a seed whose worker was stopped or killed, or that stood down, is queued again
        (t.user_attrs[REPLICATE_OF], t.user_attrs[SEED])
        for t in trials
        if REPLICATE_OF in t.user_attrs and (t.state in standing or t.user_attrs.get(DIVERGED))
    }
    waiting = sum(t.state not in FINISHED for t in trials if REPLICATE_OF in t.user_attrs)
    for trial in searched:
        for seed in range(first_seed + 1, first_seed + 1 + seeds):
            if (trial.number, seed) not in held:
                study.enqueue_trial(trial.params, user_attrs={REPLICATE_OF: trial.number, SEED: seed})
                held.add((trial.number, seed))
                waiting += 1
    return finished_count(study) + waiting


def best_configuration(study: optuna.Study) -> dict[str, Any] | None:
    """The searched trial whose values rank first by `selection.rank` over `selection.confirmed`
    (confirming seeds only, once any trial was confirmed; with two objectives, among the front's
    members): the lowest negative ELBO. None before any completes."""
    groups = candidates(study)
    if not groups:
        return None
    scored = selection.confirmed(groups)
    ranked = selection.rank(scored)
    number = ranked[0]
    values = list(scored[number])
    trials = study.get_trials(deepcopy=False)
    return {
        "best_trial": number,
        "best_params": trials[number].params,
        "best_value": selection.score(values),
        "best_values": values,
        "best_sd": statistics.stdev(values)
        if len(values) > 1 and math.isfinite(selection.score(values))
        else None,
        "best_confirmed": len(groups[number]) > 1,  # then best_values leave out the selecting seed
        "confirmed_trials": len([values for values in groups.values() if len(values) > 1]),
        "best_selected_by": groups[number][0],  # the searched trial's own value: optimistic for it
        "ranking": [  # the same ranking's first few that did not diverge: for `--print-best --rank K`
            {"trial": key, "value": selection.score(scored[key]), "params": trials[key].params}
            for key in ranked[:RANKED]
            if math.isfinite(selection.score(scored[key]))
        ],
    }


def summarise(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, and the best trial if any completed."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    summary: dict[str, Any] = {
        "trials_complete": counts["COMPLETE"],
        "trials_pruned": counts["PRUNED"],
        "trials_failed": counts["FAIL"],
    }
    ended = [t for t in trials if t.datetime_start and t.datetime_complete]
    if ended:  # across every session that worked on the study
        span = max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)
        summary["study_wall_seconds"] = round(span.total_seconds(), 1)
    summary.update(best_configuration(study) or {})
    if len(study.directions) > 1:
        summary["front"] = front_rows(study)
    return summary


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The front's members, by rate: the rate, distortion and negative ELBO of the searched trial
    (its one seed, which selected it), then, where it was confirmed, its confirming seeds' mean
    negative ELBO (infinite if one diverged) and their mean rate and distortion; and its params."""
    trials, groups = study.get_trials(deepcopy=False), configurations(study)
    rows = []
    for number in front(study):
        rate, distortion = trials[number].values
        confirming = groups[number][1:]
        again = [
            t.values
            for t in trials
            if t.user_attrs.get(REPLICATE_OF) == number and t.state == TrialState.COMPLETE
        ]
        rows.append(
            {
                "trial": number,
                "rate": rate,
                "distortion": distortion,
                "val_loss": rate + distortion,
                "confirmed_val_loss": selection.score(confirming) if confirming else None,
                "confirmed_rate": statistics.fmean(v[0] for v in again) if again else None,
                "confirmed_distortion": statistics.fmean(v[1] for v in again) if again else None,
                "confirming_seeds": len(confirming),
                "params": trials[number].params,
            }
        )
    return rows
