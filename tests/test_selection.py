"""How the best is chosen: scores, the sweep's confirmed ranking, the champion rule, directions."""

from __future__ import annotations

import json
import math
import sys

from pipeline.selection import champion, confirmed, direction, rank, score
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


def test_one_lucky_seed_never_overturns_a_configuration_on_two_or_more():
    held = {"a": [250.0, 251.0, 252.0]}
    assert champion("a", {**held, "b": [200.0]}, margin=2)[0] == "a"
    assert champion("a", {**held, "b": [200.0, 240.0]}, margin=2)[0] == "b"
    assert champion("a", {**held, "b": [249.5, 249.0]}, margin=2)[0] == "a"  # within the margin
    assert champion("a", {"a": [250.0], "b": [247.0]}, margin=2)[0] == "b"  # one seed each
    assert champion(None, {"a": [250.0], "b": [247.0]}, margin=2)[0] == "b"
    assert champion(None, {}, margin=2) == (None, "the first evaluated")


def test_every_metric_states_which_way_is_better_or_that_neither_is():
    assert direction("val_loss") == direction("test_loss") == direction("loss/val") == "lower"
    assert direction("knn_accuracy") == direction("active_units") == direction("active_units/val") == "higher"
    # The ELBO's two parts trade against each other; the rest describe a run.
    described = ("test_kl", "kl/val", "test_reconstruction", "reconstruction_by_class/bag", "learning_rate")
    for neutral in (*described, "best_epoch", "system/cpu_utilization_percentage"):
        assert direction(neutral) is None


def test_the_false_switch_simulation_runs_the_rule_and_never_exceeds_the_margin_alone(tmp_path):
    figures = tmp_path / "rule.json"
    printed = run(
        [sys.executable, "bench/champion_rule.py", "--histories", "300", "--champion-seeds", "1", "3",
         "--challenger-seeds", "1", "2", "--json", str(figures)],
        ROOT,
    ).stdout  # fmt: skip
    report = json.loads(figures.read_text())
    assert [(r["champion_seeds"], r["challenger_seeds"]) for r in report["rows"]] == [
        (1, 1),
        (1, 2),
        (3, 1),
        (3, 2),
    ]
    for row in report["rows"]:
        assert 0 <= row["rule"] <= row["margin_alone"] <= 300  # the rule adds a condition to the margin
    assert report["rows"][2]["rule"] == 0  # one seed never overturns three
    assert "one seed's sd 0.74 nats, margin 2," in printed
