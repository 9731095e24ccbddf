"""The champion rule's false-switch rate: how often a configuration no better than the champion's
takes the alias.

    python bench/champion_rule.py                  # sd 0.74 nats, margin 2, 20,000 histories each
    python bench/champion_rule.py --sd 1.2 --margin 1 --histories 100000 --json rule.json

Two configurations are equally good: every seed's validation loss is drawn from one normal
distribution whose sd is the spread measured between seeds. The champion's configuration is
evaluated on `n` seeds; then the challenger's seeds arrive one at a time, and after each the
registry's own rule (`selection.champion`) decides. A false switch is the challenger holding the
alias at any point. Beside it, the margin alone (the challenger's mean below the champion's by
more than the margin, whatever its number of seeds) shows what the seed requirement adds. Each
rate comes with its 95% interval (Wilson's, from SciPy's `binomtest`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]


def simulate(champion, *, n: int, m: int, sd: float, margin: float, histories: int, rng) -> tuple[int, int]:
    """False switches over `histories`: under the rule, and under the margin alone."""
    rule = alone = 0
    for _ in range(histories):
        held, rival = list(rng.normal(0.0, sd, n)), list(rng.normal(0.0, sd, m))
        switched = switched_alone = False
        for seen in range(1, m + 1):
            holder, _ = champion("held", {"held": held, "rival": rival[:seen]}, margin)
            switched |= holder == "rival"
            switched_alone |= np.mean(rival[:seen]) < np.mean(held) - margin
        rule += int(switched)
        alone += int(switched_alone)
    return rule, alone


def interval(k: int, n: int) -> str:
    """`3.1% (2.9..3.4)`: a rate and its 95% Wilson interval."""
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{100 * k / n:.2f}% ({100 * ci.low:.2f}..{100 * ci.high:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", type=float, default=0.74, help="sd of one seed's validation loss, in nats")
    parser.add_argument("--margin", type=float, default=None, help="default: base.tracking.champion_margin")
    parser.add_argument("--histories", type=int, default=20_000, help="simulated histories per row")
    parser.add_argument("--champion-seeds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--challenger-seeds", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from pipeline.params import load_params
    from pipeline.selection import champion

    margin = args.margin if args.margin is not None else load_params().base.tracking.champion_margin
    rng = np.random.default_rng(args.seed)
    print(
        f"two equally good configurations, one seed's sd {args.sd:g} nats, margin {margin:g}, "
        f"{args.histories:,} histories per row"
    )
    print(f"{'champion seeds':>14} {'challenger seeds':>16}   {'the rule':<24} {'the margin alone':<24}")
    rows = []
    for n in args.champion_seeds:
        for m in args.challenger_seeds:
            rule, alone = simulate(
                champion, n=n, m=m, sd=args.sd, margin=margin, histories=args.histories, rng=rng
            )
            rows.append({"champion_seeds": n, "challenger_seeds": m, "rule": rule, "margin_alone": alone})
            rates = f"{interval(rule, args.histories):<24} {interval(alone, args.histories):<24}"
            print(f"{n:14d} {m:16d}   {rates}")
    if args.json:
        figures = {"sd": args.sd, "margin": margin, "histories": args.histories, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
