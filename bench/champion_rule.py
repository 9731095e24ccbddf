"""The champion rule's two errors: how often it hands the alias to a configuration no better than
the champion's, and how often it keeps it from one that is better.

    python bench/champion_rule.py                  # the rule in params.yaml, 20,000 histories per row
    python bench/champion_rule.py --sd 1.0 --level 0.01 --histories 100000 --json rule.json
    python bench/champion_rule.py --margin 2 --sd 0.74    # the rule before: a fixed margin of 2 nats

Every seed's validation loss is drawn from a normal distribution whose sd is one seed's spread
(`--sd`, by default `base.tracking.champion_sd`, the spread the project measured). The
champion's configuration is evaluated on `n` seeds; then the challenger's seeds arrive one at a
time, and after each the registry's own rule (`selection.champion`) decides who holds the alias.

- A false switch: the two are equally good, and the challenger holds the alias at any point.
  Printed for each pair of seed counts; the last line gives the worst of them.
- A missed switch: the challenger is better by `--better` of one seed's sds (2 by default), and
  it does not hold the alias once both have five seeds.

Each rate comes with its 95% interval (Wilson's, from SciPy's `binomtest`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
CONFIRMED = 5  # seeds each before a missed switch is counted


def history(rule, rng, *, n: int, m: int, sd: float, shift: float) -> tuple[bool, bool]:
    """One history: the champion's `n` seeds, then the challenger's `m` one at a time, its mean
    `shift` below the champion's; whether the challenger held the alias at any point, and at the end."""
    held, rival = list(rng.normal(0.0, sd, n)), list(rng.normal(-shift, sd, m))
    holder, ever = "held", False
    for seen in range(1, m + 1):
        holder, _ = rule(holder, {"held": held, "rival": rival[:seen]})
        ever |= holder == "rival"
    return ever, holder == "rival"


def interval(k: int, n: int) -> str:
    """`3.1% (2.9..3.4)`: a rate and its 95% Wilson interval."""
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{100 * k / n:.2f}% ({100 * ci.low:.2f}..{100 * ci.high:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", type=float, default=None, help="one seed's sd (default: champion_sd)")
    parser.add_argument(
        "--level", type=float, default=None, help="the test's level (default: champion_level)"
    )
    parser.add_argument(
        "--margin", type=float, default=None, help="simulate instead the old rule: a fixed margin in nats"
    )
    parser.add_argument("--better", type=float, default=2.0, help="the better challenger's lead, in sds")
    parser.add_argument("--histories", type=int, default=20_000, help="simulated histories per row")
    parser.add_argument("--champion-seeds", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--challenger-seeds", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from pipeline.params import load_params
    from pipeline.selection import champion

    tracking = load_params().base.tracking
    sd = args.sd if args.sd is not None else tracking.champion_sd
    level = args.level if args.level is not None else tracking.champion_level

    def rule(holder, groups):  # the registry's rule with these settings
        return champion(holder, groups, sd=tracking.champion_sd, level=level)

    def margin_rule(holder, groups):  # the rule before: mean lower by more than a margin, 2+ seeds
        other = "rival" if holder == "held" else "held"
        held, rival = groups[holder], groups[other]
        wins = len(rival) >= min(len(held), 2) and np.mean(rival) < np.mean(held) - args.margin
        return (other if wins else holder), ""

    simulated = rule if args.margin is None else margin_rule

    rng = np.random.default_rng(args.seed)
    how = (
        f"a fixed margin of {args.margin:g} nats"
        if args.margin is not None
        else f"one-sided test at {level:g}, z on sd {tracking.champion_sd:g} or t on a larger pooled sd"
    )
    print(f"one seed's sd {sd:g} nats; the rule: {how}; {args.histories:,} histories per row")
    print(f"{'champion seeds':>14} {'challenger seeds':>16}   false switches")
    rows = []
    for n in args.champion_seeds:
        for m in args.challenger_seeds:
            switched = sum(
                history(simulated, rng, n=n, m=m, sd=sd, shift=0.0)[0] for _ in range(args.histories)
            )
            rows.append({"champion_seeds": n, "challenger_seeds": m, "false_switches": switched})
            print(f"{n:14d} {m:16d}   {interval(switched, args.histories)}")
    worst = max(rows, key=lambda row: row["false_switches"])
    missed = sum(
        not history(simulated, rng, n=CONFIRMED, m=CONFIRMED, sd=sd, shift=args.better * sd)[1]
        for _ in range(args.histories)
    )
    print(
        f"champion rule: false switches {interval(worst['false_switches'], args.histories)} at worst "
        f"({worst['champion_seeds']} champion seeds, {worst['challenger_seeds']} challenger seeds); "
        f"missed switches {interval(missed, args.histories)} for a challenger better by "
        f"{args.better:g} sd, {CONFIRMED} seeds each"
    )
    if args.json:
        figures = {"sd": sd, "level": level, "floor_sd": tracking.champion_sd, "better": args.better,
                   "histories": args.histories, "rows": rows, "missed_switches": missed}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
