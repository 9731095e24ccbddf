"""Stage `prepare`: verified Fashion-MNIST split into train, validation and test arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import data
from pipeline.params import load_params
from pipeline.paths import PREPARED, SUMMARY
from pipeline.stage import run_stage


def summarise(splits: dict[str, data.Split], *, source: Path) -> dict:
    """Counts, class balance and hashes: what a person checks before trusting the data."""
    return {
        "source": str(source),
        "counts": {name: len(split.labels) for name, split in splits.items()},
        "class_counts": {
            name: dict(zip(data.CLASS_NAMES, np.bincount(split.labels, minlength=10).tolist(), strict=True))
            for name, split in splits.items()
        },
        "source_sha256": data.SHA256,
        "digest": data.digest(splits),
    }


def main() -> None:
    params = load_params()
    source, splits = data.load_splits(params.data, seed=params.base.seed)
    data.save_prepared(splits, PREPARED)
    summary = summarise(splits, source=source)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"prepare: {summary['counts']} from {source}")


if __name__ == "__main__":
    run_stage(main)
