"""A sweep's ranking on a real Optuna study: confirming seeds decide, failures count, duplicates once."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from pipeline.search.best import (
    DIVERGED,
    REPLICATE_OF,
    SEED,
    best_configuration,
    configurations,
    duplicate_of,
    enqueue_replicates,
    front,
    front_rows,
)

SPACE = {"model.latent_dim": IntDistribution(2, 64)}


def add(study, latent_dim: int, value: float | None, state=TrialState.COMPLETE, **attrs) -> None:
    user_attrs = {REPLICATE_OF: attrs["of"], SEED: attrs["seed"]} if "of" in attrs else {}
    if attrs.get("diverged"):
        user_attrs[DIVERGED] = True
    study.add_trial(
        create_trial(
            params={"model.latent_dim": latent_dim},
            distributions=SPACE,
            value=value,
            state=state,
            user_attrs=user_attrs,
        )
    )


def test_the_best_is_scored_on_seeds_that_did_not_select_it_and_a_failed_seed_counts():
    study = optuna.create_study()
    add(study, 16, 240.0)  # 0: the lowest searched value, lucky
    add(study, 8, 244.0)  # 1
    add(study, 32, 243.0)  # 2
    add(study, 16, 250.0, of=0, seed=43)
    add(study, 8, 245.0, of=1, seed=43)
    add(study, 32, 241.0, of=2, seed=43)
    add(study, 32, None, TrialState.FAIL, of=2, seed=44, diverged=True)
    add(study, 8, 246.0, of=1, seed=44)
    add(study, 8, 999.0, of=1, seed=44)  # queued twice by two launchers: the first counts
    assert configurations(study) == {0: [240.0, 250.0], 1: [244.0, 245.0, 246.0], 2: [243.0, 241.0, math.nan]}
    best = best_configuration(study)
    assert best["best_trial"] == 1 and best["best_values"] == [245.0, 246.0] and best["best_confirmed"]
    assert best["best_value"] == 245.5 and best["best_selected_by"] == 244.0


def test_a_seed_whose_worker_was_stopped_is_left_out_and_queued_again():
    study = optuna.create_study()
    add(study, 16, 240.0)
    add(study, 16, None, TrialState.FAIL, of=0, seed=43)  # stopped: not the settings' fault
    add(study, 16, None, TrialState.FAIL, of=0, seed=44, diverged=True)
    assert configurations(study) == {0: [240.0, math.nan]}
    assert enqueue_replicates(study, top=1, seeds=2, first_seed=42) == 3 + 1  # 43 again, not 44
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs == {REPLICATE_OF: 0, SEED: 43}


def test_a_confirming_trial_queued_twice_runs_once():
    study = optuna.create_study()
    add(study, 16, 240.0)
    for _ in range(2):
        study.enqueue_trial({"model.latent_dim": 16}, user_attrs={REPLICATE_OF: 0, SEED: 43})
    first, second = (study.ask(SPACE) for _ in range(2))
    assert duplicate_of(study, first) is None
    assert duplicate_of(study, second) == first.number


def test_two_objectives_confirm_and_choose_among_the_fronts_members_on_their_other_seeds():
    study = optuna.create_study(directions=["minimize", "minimize"])

    def add_two(latent_dim: int, values: list[float] | None, state=TrialState.COMPLETE, **attrs) -> None:
        user_attrs = {REPLICATE_OF: attrs["of"], SEED: attrs["seed"]} if "of" in attrs else {}
        study.add_trial(create_trial(params={"model.latent_dim": latent_dim}, distributions=SPACE,
                                     values=values, state=state, user_attrs=user_attrs))  # fmt: skip

    add_two(4, [5.0, 240.0])  # 0: the lowest sum, 245
    add_two(6, [6.0, 240.0])  # 1: sum 246, second lowest, but beaten by 0 on both: not on the front
    add_two(32, [20.0, 228.0])  # 2: sum 248, on the front
    add_two(64, [30.0, 229.0])  # 3: beaten by 2
    add_two(2, [3.0, 260.0])  # 4: sum 263, on the front
    assert front(study) == [4, 0, 2]  # by rate
    enqueue_replicates(study, top=2, seeds=1, first_seed=42)
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs[REPLICATE_OF] for t in queued) == [0, 2]  # the front's two lowest sums
    # The other seeds reverse the selecting seed's order: 0 was lucky.
    add_two(4, [5.5, 249.5], of=0, seed=43)
    add_two(32, [19.0, 228.0], of=2, seed=43)
    add_two(64, [1.0, 200.0], of=3, seed=43)  # a stray trial off the front (queued by hand): no candidate
    best = best_configuration(study)
    assert best["best_trial"] == 2 and best["best_value"] == 247.0 and best["best_selected_by"] == 248.0
    rows = {row["trial"]: row for row in front_rows(study)}
    assert list(rows) == [4, 0, 2] and rows[4]["confirmed_val_loss"] is None
    assert (rows[2]["confirmed_rate"], rows[2]["confirmed_distortion"], rows[2]["confirmed_val_loss"]) == (
        19.0,
        228.0,
        247.0,
    )
