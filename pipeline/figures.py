"""The `plot` stage's figures, in the order a person reads them: what `plot` draws and `compare` shows."""

from __future__ import annotations

from typing import NamedTuple


class Figure(NamedTuple):
    name: str  # the file: `plots/figures/<name>` and the MLflow artifact `figures/<name>`
    caption: str
    in_trial: bool  # whether a sweep trial makes it too (trials train only: they draw none)


FIGURES = (
    Figure("latent_scatter.png", "Latent means of the test set", in_trial=False),
    Figure("latent_grid.png", "Decoded grid at normal quantiles", in_trial=False),
    Figure("reconstructions.png", "Reconstructions", in_trial=False),
    Figure("prior_samples.png", "Samples from the prior", in_trial=False),
    Figure("loss_curves.png", "Loss per epoch", in_trial=False),
    Figure("kl_per_unit.png", "KL of each latent unit, and active units, per epoch", in_trial=False),
    Figure("rate_distortion.png", "Rate and distortion at each epoch's end", in_trial=False),
)
NAMES = tuple(figure.name for figure in FIGURES)
