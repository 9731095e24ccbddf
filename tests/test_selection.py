"""How the best is chosen: scores, the sweep's confirmed ranking, the champion rule, directions."""

from __future__ import annotations

import json
import math
import sys

from pipeline.selection import champion, confirmed, direction, pareto_front, rank, score, seeds_text
from tests.helpers import ROOT, run


def test_a_seed_that_diverged_counts_against_its_configuration():
    assert score([250.0, 252.0]) == 251.0
    assert score([240.0, math.nan]) == math.inf and score([240.0, math.inf]) == math.inf
    assert rank({"steady": [251.0, 252.0], "unstable": [240.0, math.nan], "one": [251.0]}) == [
        "one",
        "steady",
        "unstable",
    ]


def test_a_confirmed_configuration_is_scored_without_the_seed_that_selected_it():
    groups = {0: [240.0, 250.0, 252.0], 1: [245.0, 246.0, 247.0], 2: [239.0]}
    assert confirmed(groups) == {0: [250.0, 252.0], 1: [246.0, 247.0]}  # 2: never confirmed
    assert rank(confirmed(groups)) == [1, 0]  # by the selecting seeds, 0 would have won
    assert confirmed({2: [239.0], 3: [241.0]}) == {2: [239.0], 3: [241.0]}  # none confirmed yet


RULE = {"sd": 0.5, "level": 0.02}  # a one-sided z-test at 2%: z above 2.05


def test_a_better_configuration_takes_the_alias_beyond_noise_and_not_within_it():
    held = {"a": [240.0, 240.5, 239.5, 240.2, 239.8]}  # mean 240.0
    better = [239.0, 238.6, 239.4, 238.8, 239.2]  # mean 239.0: z = 1.0 / (0.5 * sqrt(2/5)) = 3.2
    now, why = champion("a", {**held, "b": better}, **RULE)
    assert now == "b" and "lower beyond noise (z = 3.16, one-sided at 0.02)" in why
    close = [239.6, 239.2, 240.0, 239.4, 239.8]  # mean 239.6: z = 1.26
    assert champion("a", {**held, "b": close}, **RULE)[0] == "a"


def test_a_noisy_configuration_is_judged_by_its_own_spread():
    held = {"a": [240.0, 242.0, 238.0, 241.0, 239.0]}  # sd 1.58, three times the floor
    rival = [239.0, 237.5, 240.5, 238.0, 239.0]  # 1.2 lower: z = 3.8 on the floor, 1.3 on their own sd
    assert champion("a", {**held, "b": rival}, **RULE)[0] == "a"
    assert champion("a", {**held, "b": rival}, sd=2.0, level=0.02)[0] == "a"


def test_a_noisy_rival_is_tested_with_students_t_and_several_rivals_share_the_level():
    held = [240.0, 240.3, 239.7, 240.1, 239.9]
    noisy = [236.0, 239.0, 237.0, 235.0, 238.0]  # sd 1.58, pooled with a's 1.13: t = 4.2 on 8 df
    now, why = champion("a", {"a": held, "b": noisy}, **RULE)
    assert now == "b" and "(t = 4.20 on 8 df, one-sided at 0.02)" in why
    # 1.64 lower: t = 2.3, above the normal's 2.05 but below t(0.98, 8 df) = 2.45.
    assert champion("a", {"a": held, "b": [v + 1.36 for v in noisy]}, **RULE)[0] == "a"
    close = [239.3, 239.6, 239.0, 239.4, 239.225]  # 0.695 lower: z = 2.2, above 2.05
    assert champion("a", {"a": held, "b": close}, **RULE)[0] == "b"
    # With a second rival each is tested at 0.01 (z above 2.33), so the same lead is not enough.
    other = [240.0, 240.1, 239.9, 240.05, 239.95]
    now, why = champion("a", {"a": held, "b": close, "c": other}, **RULE)
    assert now == "a" and why.endswith("(one-sided at 0.02 / 2 rivals)")


def test_one_lucky_seed_never_overturns_a_configuration_on_two_or_more():
    held = {"a": [250.0, 251.0, 252.0]}
    assert champion("a", {**held, "b": [200.0]}, **RULE)[0] == "a"
    assert champion("a", {**held, "b": [239.0, 240.0]}, **RULE)[0] == "b"
    assert champion("a", {"a": [250.0], "b": [247.0]}, **RULE)[0] == "b"  # one seed each: z = 4.2
    assert champion("a", {"a": [250.0], "b": [249.0]}, **RULE)[0] == "a"  # z = 1.4
    assert champion(None, {"a": [250.0], "b": [247.0]}, **RULE)[0] == "b"
    assert champion(None, {}, **RULE) == (None, "the first evaluated")


def test_a_failed_seed_counts_against_its_configuration_in_the_champion_rule():
    # A champion with a failed seed loses to any configuration with none and enough seeds,
    # however much worse its mean.
    now, why = champion("a", {"a": [240.0, math.nan], "b": [245.0, 246.0]}, **RULE)
    assert now == "b" and "has a failed seed (n = 1 of 2; 1 failed or diverged)" in why
    assert champion("a", {"a": [240.0, math.nan], "b": [245.0]}, **RULE)[0] == "a"  # one seed is not two
    assert (
        champion("a", {"a": [240.0, math.nan], "b": [245.0, 246.0, math.nan]}, **RULE)[0] == "a"
    )  # both failed
    # A challenger with one never takes it, however low its other seeds.
    assert champion("a", {"a": [240.0, 241.0], "b": [200.0, 201.0, math.nan]}, **RULE)[0] == "a"
    assert champion(None, {"a": [240.0, 241.0], "b": [200.0, math.nan]}, **RULE)[0] == "a"


def test_the_seed_count_names_what_failed():
    assert seeds_text(5, {}) == "n = 5"
    assert seeds_text(5, {"diverged": 1}) == "n = 4 of 5; 1 diverged"
    assert seeds_text(6, {"diverged": 1, "failed": 2}) == "n = 3 of 6; 1 diverged, 2 failed"


def test_every_metric_states_which_way_is_better_or_that_neither_is():
    assert direction("val_loss") == direction("test_loss") == direction("loss/val") == "lower"
    assert direction("knn_accuracy") == direction("active_units") == direction("active_units/val") == "higher"
    # The ELBO's two parts trade against each other; the rest describe a run.
    described = ("test_kl", "kl/val", "test_reconstruction", "reconstruction_by_class/bag", "learning_rate")
    for neutral in (*described, "best_epoch", "system/cpu_utilization_percentage"):
        assert direction(neutral) is None


def test_the_rule_simulation_runs_the_registrys_rule_and_prints_both_errors(tmp_path):
    figures = tmp_path / "rule.json"
    printed = run(
        [sys.executable, "bench/champion_rule.py", "--histories", "300", "--champion-seeds", "1", "3",
         "--challenger-seeds", "1", "2", "--better", "8", "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    report = json.loads(figures.read_text())
    assert [(r["champion_seeds"], r["challenger_seeds"]) for r in report["rows"]] == [
        (1, 1),
        (1, 2),
        (3, 1),
        (3, 2),
    ]
    assert report["rows"][2]["false_switches"] == 0  # one seed never overturns three
    assert 0 < report["rows"][0]["false_switches"] < 30  # one against one: about 2%, not never
    assert report["missed_switches"] == 0  # eight sds better, five seeds each: z = 12.6, never missed
    last = printed.splitlines()[-1]
    assert last.startswith("champion rule: false switches ") and "; missed switches 0.00% " in last


def test_the_front_keeps_the_points_no_other_beats_on_both_rate_and_distortion():
    points = {
        "low rate": (4.0, 250.0),
        "dominated": (6.0, 251.0),  # beaten on both by "low rate"
        "middle": (8.0, 240.0),
        "same rate, worse": (8.0, 241.0),  # beaten by "middle" on distortion at the same rate
        "high rate": (15.0, 232.0),
        "tie": (15.0, 232.0),
        "more rate, no gain": (20.0, 232.0),  # beaten by "high rate": more rate, the same distortion
    }
    assert pareto_front(points) == ["low rate", "middle", "high rate", "tie"]
    assert pareto_front({}) == []
