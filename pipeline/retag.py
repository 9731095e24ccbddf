"""Re-tag the runs already in the MLflow store with their configuration id as defined now.

    python -m pipeline.retag

Each trained model's and sweep trial's `pipeline.config_id` tag, and its registered versions'
`config_id`, are computed again from the params it logged and its data digest, so that runs made
before the definition changed group with new runs of the same settings (`compare`, the champion).
"""

from __future__ import annotations

import argparse

from pipeline.params import load_params
from pipeline.stage import run_stage
from pipeline.tracking import runs, store


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m pipeline.retag", description=__doc__.split("\n")[0]).parse_args(
        argv
    )
    tracking = load_params().base.tracking
    experiment_id = store.configure(tracking.experiment)
    done = runs.retag_runs(experiment_id, tracking.registered_model)
    counts = ", ".join(f"{n} {what}" for what, n in done.items()) or "no trained model or trial"
    print(f"retag: {counts}, in {store.store_uri()}")


if __name__ == "__main__":
    run_stage(main)
