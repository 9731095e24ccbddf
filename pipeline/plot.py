"""Stage `plot`: figures a person reads at a glance, as DVC plots and MLflow artifacts."""

from __future__ import annotations

from statistics import NormalDist
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # the object API draws to files with no display or pyplot state
from scipy.special import expit

from pipeline import data
from pipeline.charts import latent_scatter, path_plane, tile
from pipeline.figures import NAMES
from pipeline.history import read_history
from pipeline.params import Plot, flatten, load_params
from pipeline.paths import FIGURES, HISTORY, MODEL, PREPARED
from pipeline.stage import run_stage
from pipeline.tracking import runs

if TYPE_CHECKING:
    from pipeline.model import VAE


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Bernoulli means from logits; SciPy's `expit` does not overflow for very negative logits."""
    return expit(logits)


def latent_grid(vae: VAE, mu: np.ndarray, config: Plot) -> Figure:
    """Decode a grid at normal quantiles over the two most active latent dims, the rest at 0."""
    n, latent_dim = config.grid_size, mu.shape[1]
    quantiles = np.linspace(config.quantile_low, config.quantile_high, n)
    values = np.array([NormalDist().inv_cdf(q) for q in quantiles], dtype=np.float32)
    # The seed's axes for a 2-D latent; otherwise the two dims whose means vary most.
    dims = np.arange(latent_dim) if latent_dim <= 2 else np.argsort(np.var(mu, axis=0))[::-1][:2]
    z = np.zeros((n, n, latent_dim), dtype=np.float32)
    z[:, :, dims[0]] = values[None, :]  # columns walk the first dim
    if latent_dim > 1:
        z[:, :, dims[1]] = values[::-1, None]  # rows walk the second, high at the top
    images = sigmoid(vae.decoder.predict(z.reshape(-1, latent_dim), verbose=0))
    fig = Figure(figsize=(9, 9))
    ax = fig.subplots()
    extent = (values[0], values[-1], values[0], values[-1])
    ax.imshow(tile(images, n, n), cmap="Greys_r", vmin=0, vmax=1, extent=extent)
    span = f"{config.quantile_low}..{config.quantile_high}"
    which = "" if latent_dim == 2 else f"\nthe two most active of {latent_dim} dims; the others at 0"
    ax.set(
        title=f"Decoded {n}x{n} grid at normal quantiles {span}{which}",
        xlabel=f"z[{dims[0]}]",
        ylabel=f"z[{dims[1]}]" if latent_dim > 1 else "",
    )
    fig.tight_layout()
    return fig


def reconstructions(vae: VAE, x: np.ndarray, labels: np.ndarray) -> Figure:
    """Originals (top row) above their reconstructions from the latent mean (bottom row)."""
    recon = vae.predict(x, verbose=0)
    n = len(x)
    fig = Figure(figsize=(1.3 * n, 3.2))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        for row, image in enumerate((x[i], recon[i])):
            ax = axes[row, i]
            ax.imshow(image[..., 0], cmap="Greys_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(data.CLASS_NAMES[labels[i]], fontsize=8)
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    fig.suptitle("Test images and their reconstructions")
    fig.tight_layout()
    return fig


def prior_samples(vae: VAE, rows: int, seed: int) -> Figure:
    """Bernoulli means decoded from z ~ N(0, I)."""
    latent_dim = vae.decoder.input_shape[-1]
    z = np.random.default_rng(seed).standard_normal((rows * rows, latent_dim), dtype=np.float32)
    images = sigmoid(vae.decoder.predict(z, verbose=0))
    fig = Figure(figsize=(6, 6.4))
    ax = fig.subplots()
    ax.imshow(tile(images, rows, rows), cmap="Greys_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{rows * rows} samples from the prior N(0, I)")
    fig.tight_layout()
    return fig


def loss_curves(history: dict[str, list[float]]) -> Figure:
    """Train and validation loss, reconstruction and KL per epoch."""
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    epochs = np.array(history["epoch"]) + 1
    for ax, name in zip(axes, ("loss", "reconstruction", "kl"), strict=True):
        ax.plot(epochs, history[name], marker="o", ms=3, label="train")
        ax.plot(epochs, history[f"val_{name}"], marker="o", ms=3, label="validation")
        ax.set(
            title={"loss": "Negative ELBO", "reconstruction": "Reconstruction", "kl": "KL"}[name],
            xlabel="epoch",
            ylabel="nats per image",
        )
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def kl_per_unit_curves(history: dict[str, list[float]], threshold: float) -> Figure:
    """Each latent unit's KL per epoch on the validation subset, and the active units: where a
    unit's curve falls to zero and stays, the unit has died (the posterior collapsed onto the prior)."""
    units = sorted(key for key in history if key.startswith("val_kl_unit_"))
    epochs = np.array(history["epoch"]) + 1
    fig = Figure(figsize=(11, 4.5))
    ax, count = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    colours = matplotlib.colormaps["viridis"]
    for i, key in enumerate(units):
        ax.plot(epochs, history[key], color=colours(i / max(1, len(units) - 1)), lw=1.2)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set(
        title=f"KL of each of the {len(units)} latent units (validation subset)",
        xlabel="epoch",
        ylabel="nats per image",
    )
    ax.grid(alpha=0.3)
    count.plot(epochs, history["val_active_units"], marker="o", ms=3)
    count.set(
        title="Active units",
        xlabel="epoch",
        ylabel=f"units whose mean varies by > {threshold:g}",
        ylim=(0, len(units) + 0.5),
    )
    count.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main() -> None:
    from pipeline.model import encode, load_vae  # TensorFlow, once `run_stage` has started it quietly

    params = load_params()
    config = params.plot
    with runs.resumed_run(params, "plot"):  # an error below ends the run FAILED, an interrupt KILLED
        runs.log_stage_params({k: v for k, v in flatten(params).items() if k.startswith("plot.")})
        test = data.load_prepared(PREPARED)["test"]
        runs.check_model_hash(MODEL)
        vae = load_vae(MODEL)
        images, labels = test.images[: config.scatter_points], test.labels[: config.scatter_points]
        mu, _ = encode(vae.encoder, images, batch_size=params.evaluate.batch_size)
        history = read_history(HISTORY)
        n = min(config.n_reconstructions, len(images))
        drawn = {  # by name, as `pipeline.figures` lists them
            "latent_scatter.png": latent_scatter(mu, labels),
            "latent_grid.png": latent_grid(vae, mu, config),
            "reconstructions.png": reconstructions(vae, data.to_model_input(images[:n]), labels[:n]),
            "prior_samples.png": prior_samples(vae, config.prior_grid, params.base.seed),
            "loss_curves.png": loss_curves(history),
            "kl_per_unit.png": kl_per_unit_curves(history, params.evaluate.active_threshold),
            "rate_distortion.png": path_plane(history),
        }
        FIGURES.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            drawn[name].savefig(FIGURES / name, dpi=config.dpi)
            runs.log_figure(drawn[name], name)
    print(f"plot: {len(NAMES)} figures in {FIGURES}")


if __name__ == "__main__":
    run_stage(main, keras=True)
