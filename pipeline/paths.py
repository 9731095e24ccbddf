"""The files one stage writes and another reads, relative to the project root (as in `dvc.yaml`)."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared/fashion_mnist.npz")  # prepare -> train, evaluate, plot
SUMMARY = Path("data/prepared/summary.json")  # prepare -> train: counts and the data's digest
MODEL = Path("models/vae.keras")  # train -> evaluate, plot
HISTORY = Path("plots/history.csv")  # train -> plot: one row per epoch
RUN_FILE = Path("outputs/mlflow_run.json")  # train -> evaluate, plot: the MLflow run they extend
FIGURES = Path("plots/figures")  # plot's output; see `pipeline.figures`
