"""A training's per-epoch history as a CSV file: what `train` writes and `plot` draws."""

from __future__ import annotations

import csv
from pathlib import Path


def read_history(path: Path) -> dict[str, list[float]]:
    """Keras CSVLogger's file as columns, one row per epoch (a re-run epoch's last row wins)."""
    with open(path, newline="") as handle:
        rows = {int(row["epoch"]): row for row in csv.DictReader(handle)}
    ordered = [rows[epoch] for epoch in sorted(rows)]
    return {key: [float(row[key]) for row in ordered] for key in ordered[0]}


def write_history(history: dict[str, list[float]], path: Path) -> None:
    """Columns back to CSV, with `epoch` first as `dvc plots` reads it."""
    keys = ["epoch", *sorted(k for k in history if k != "epoch")]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for i in range(len(history["epoch"])):
            writer.writerow([int(history["epoch"][i]), *(history[k][i] for k in keys[1:])])
