"""The figures the benchmark scripts print from their measurements, without running them."""

from __future__ import annotations

import math
import sys

import pytest
from scipy import stats

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their neighbours by name
import collapse
import end_to_end
import route


def test_one_round_has_no_interval():
    assert end_to_end.spread([3.2]) == "geometric mean 3.20x, no interval: n = 1"


def test_the_interval_is_a_t_interval_on_the_logs_of_the_ratios():
    ratios = [3.01, 3.44, 2.95, 2.95, 3.26, 2.99]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / len(logs)
    low, high = stats.t.interval(0.95, len(logs) - 1, mean, stats.sem(logs))
    assert (math.exp(low), math.exp(mean), math.exp(high)) == pytest.approx((2.89, 3.09, 3.31), abs=0.005)
    assert end_to_end.spread(ratios) == "geometric mean 3.09x, 95% t interval 2.89x..3.31x"


def row(val_loss: float, val_active: int, test_loss: float, test_active: int) -> dict:
    return {
        "val_loss": val_loss,
        "active_units/val": val_active,
        "test_loss": test_loss,
        "active_units": test_active,
    }


def test_the_collapse_benchmark_chooses_a_lever_on_validation_alone():
    # Each case's test figures point the other way, so a choice that read them would differ.
    table = {
        "none": {1: row(250.0, 2, 251.0, 2), 2: row(241.0, 9, 242.0, 9)},
        "warm": {1: row(240.2, 11, 242.5, 11), 2: row(240.4, 12, 242.7, 12)},  # lower val, higher test
        "free": {1: row(240.6, 12, 241.0, 12), 2: row(240.8, 12, 241.2, 12)},
        # a unit count that holds on the test images but not on validation
        "thin": {1: row(239.0, 4, 240.0, 8), 2: row(239.1, 4, 240.1, 8)},
        "defaults": {1: row(262.0, 2, 263.0, 2), 2: row(262.5, 2, 263.5, 2)},
    }
    assert collapse.stable_variants(table, bar=262.25, min_active=5) == ["warm", "free"]
    assert collapse.choose(table, bar=262.25, min_active=5) == "warm"
    assert collapse.choose(table, bar=240.3, min_active=5) is None  # warm's seed 2 is above the bar
    table["warm"][2] = None  # a seed that failed: not stable
    assert collapse.choose(table, bar=262.25, min_active=5) == "free"


def test_routes_alternate_which_goes_first():
    assert route.balanced_order(["a", "b"], [1, 2]) == [("a", 1), ("b", 1), ("b", 2), ("a", 2)]
    assert route.balanced_order(["a", "b", "c"], [5]) == [("a", 5), ("b", 5), ("c", 5)]


def test_a_routes_settings_may_hold_commas():
    name, settings = route.route_arg(
        "short:tune.overrides={train.epochs: 3, data.train_size: 500};tune.confirm_seeds=1"
    )
    assert name == "short"
    assert settings == {
        "tune.overrides": {"train.epochs": 3, "data.train_size": 500},
        "tune.confirm_seeds": 1,
    }
    assert route.route_arg("today") == ("today", {})
    with pytest.raises(Exception, match="a route's name"):
        route.route_arg("a b:train.epochs=3")


def test_routes_are_compared_by_a_paired_t_test_on_the_differences():
    first, second = [240.1, 239.6, 240.4], [239.8, 239.9, 239.7]
    differences = [b - a for a, b in zip(first, second, strict=True)]
    low, high = stats.t.interval(0.95, 2, sum(differences) / 3, stats.sem(differences))
    p = stats.ttest_rel(second, first).pvalue
    assert route.paired(first, second) == (
        f"-0.23 ± 0.50, 95% t interval {low:+.2f}..{high:+.2f}, paired t-test p = {p:.2g}, n = 3"
    )
    assert route.paired([1.0, 2.0], [1.5, 2.5]) == "+0.50 on each of 2 (no test)"
