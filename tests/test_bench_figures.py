"""The figures the benchmark scripts print from their measurements, without running them."""

from __future__ import annotations

import math
import sys

import pytest
from scipy import stats

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their neighbours by name
import end_to_end


def test_one_round_has_no_interval():
    assert end_to_end.spread([3.2]) == "geometric mean 3.20x, no interval: n = 1"


def test_the_interval_is_a_t_interval_on_the_logs_of_the_ratios():
    ratios = [3.01, 3.44, 2.95, 2.95, 3.26, 2.99]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / len(logs)
    low, high = stats.t.interval(0.95, len(logs) - 1, mean, stats.sem(logs))
    assert (math.exp(low), math.exp(mean), math.exp(high)) == pytest.approx((2.89, 3.09, 3.31), abs=0.005)
    assert end_to_end.spread(ratios) == "geometric mean 3.09x, 95% t interval 2.89x..3.31x"
