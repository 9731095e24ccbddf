"""Figures that more than one command draws: image sheets and the latent scatter (`plot`, and
`train` every few epochs), the rate-distortion plane (`plot`, the comparison report, a
two-objective sweep) and curves over seeds (the report).

The plane: a VAE's negative ELBO is the sum of its rate (the KL, what the code carries about an
image) and its distortion (the reconstruction term). Two models with the same sum can trade one
for the other; lines of equal sum run across the plane with a slope of -1.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API draws to files with no display or pyplot state
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline.data import CLASS_NAMES

RATE = "rate: KL (nats per image)"
DISTORTION = "distortion: reconstruction (nats per image)"
CURVES = ("loss", "reconstruction", "kl")
TITLES = {"loss": "Negative ELBO", "reconstruction": "Reconstruction", "kl": "KL"}


def tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """`(rows * cols, 28, 28, 1)` -> one `(rows * 28, cols * 28)` sheet, row-major."""
    side = images.shape[1]
    sheet = images[..., 0].reshape(rows, cols, side, side)
    return sheet.transpose(0, 2, 1, 3).reshape(rows * side, cols * side)


def figure_png(figure: Figure, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def latent_scatter(
    mu: np.ndarray,
    labels: np.ndarray,
    title: str = "Test-set latent means",
    size: tuple[float, float] = (8, 6.5),
) -> Figure:
    """Latent means coloured by class; a PCA projection when latent_dim > 2. One scatter call and a
    fixed layout: `train` draws it every few epochs, where matplotlib's layout engine would cost
    more than the points."""
    if mu.shape[1] == 1:
        points, axes = np.column_stack([mu[:, 0], np.zeros(len(mu))]), ("z[0]", "")
        title = f"{title} (1-D latent)"
    elif mu.shape[1] == 2:
        points, axes = mu, ("z[0]", "z[1]")
    else:
        from sklearn.decomposition import PCA  # imported only here: it takes seconds to import

        pca = PCA(n_components=2).fit(mu)
        points = pca.transform(mu)
        share = pca.explained_variance_ratio_ * 100
        axes = (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")
        title = f"{title}, PCA of {mu.shape[1]}-D latent"
    fig = Figure(figsize=size)
    ax = fig.add_axes((0.11, 0.1, 0.64, 0.8))
    colours = matplotlib.colormaps["tab10"](np.arange(len(CLASS_NAMES)))
    ax.scatter(points[:, 0], points[:, 1], s=3, c=colours[labels], alpha=0.6, linewidths=0)
    classes = [
        Line2D([], [], ls="", marker="o", ms=4, color=c, label=n)
        for c, n in zip(colours, CLASS_NAMES, strict=True)
    ]
    ax.legend(handles=classes, title="Class", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set(title=title, xlabel=axes[0], ylabel=axes[1])
    return fig


def equal_elbo_lines(ax: Axes) -> None:
    """Dotted lines of equal negative ELBO (rate + distortion) across the axes' current view,
    each labelled with its sum where it leaves the view at the bottom or right; then the axes'
    labels. A point below and left of another's line has the lower negative ELBO."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for level in MaxNLocator(6).tick_values(x0 + y0, x1 + y1):
        if not x0 + y0 < level < x1 + y1:
            continue
        ax.plot([x0, x1], [level - x0, level - x1], ls=":", lw=0.9, color="0.6", zorder=0)
        x = min(x1, level - y0)  # the line's lower-right end in the view
        ax.annotate(
            f"{level:g}", (x, level - x), xytext=(-2, 2), textcoords="offset points",
            ha="right", va="bottom", fontsize=7, color="0.45",
        )  # fmt: skip
    ax.plot([], [], ls=":", lw=0.9, color="0.6", label="equal negative ELBO (nats)")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel=RATE, ylabel=DISTORTION)
    ax.grid(alpha=0.2)


def configurations_plane(points: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> Figure:
    """Each configuration, `(name, rates, distortions)` over its seeds, at its mean with bars of
    one standard deviation each way (none for one seed), and each seed as a faint point."""
    fig = Figure(figsize=(9, 6.5))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for i, (name, rates, distortions) in enumerate(points):
        colour = colours(i % 10)
        ax.scatter(rates, distortions, s=22, color=colour, alpha=0.35, linewidths=0)
        sd = [statistics.stdev(v) if len(v) > 1 else None for v in (rates, distortions)]
        ax.errorbar(
            statistics.fmean(rates), statistics.fmean(distortions), xerr=sd[0], yerr=sd[1],
            fmt="o", ms=7, capsize=3, color=colour, label=f"{name} (n = {len(rates)})",
        )  # fmt: skip
    ax.margins(0.12)
    ax.autoscale_view()
    equal_elbo_lines(ax)
    ax.set_title("Validation rate and distortion: mean ± sd over seeds, each seed faint")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def path_plane(history: dict[str, list[float]]) -> Figure:
    """A run's rate and distortion at each epoch's end, on the training and validation splits,
    joined in order: where training went on the plane, and where it stopped."""
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    for split, prefix in (("train", ""), ("validation", "val_")):
        rates, distortions = history[f"{prefix}kl"], history[f"{prefix}reconstruction"]
        ax.plot(rates, distortions, marker="o", ms=3, lw=1, label=split)
    rates, distortions = history["val_kl"], history["val_reconstruction"]
    for at in sorted({0, len(rates) - 1}):
        ax.annotate(
            f"epoch {at + 1}", (rates[at], distortions[at]), xytext=(5, 5), textcoords="offset points"
        )
    ax.margins(0.1)
    ax.autoscale_view()
    equal_elbo_lines(ax)
    ax.set_title("Rate and distortion at each epoch's end")
    ax.legend()
    fig.tight_layout()
    return fig


def front_plane(
    trials: Sequence[tuple[float, float]],
    front: Sequence[tuple[float, float]],
    chosen: tuple[float, float] | None,
) -> Figure:
    """A two-objective sweep: every searched trial, its Pareto front joined by rate, and the
    member chosen to re-train (its searched trial's point)."""
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    ax.scatter(*zip(*trials, strict=True), s=18, color="0.55", alpha=0.6, label="searched trials")
    ax.plot(*zip(*front, strict=True), marker="o", ms=6, color="tab:blue", label="Pareto front")
    if chosen is not None:
        ax.scatter(*chosen, s=160, facecolors="none", edgecolors="tab:red", linewidths=2,
                   label="chosen: lowest confirmed negative ELBO")  # fmt: skip
    ax.margins(0.08)
    ax.autoscale_view()
    equal_elbo_lines(ax)
    ax.set_title("The sweep's trials on the rate-distortion plane (validation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def band_curves(groups: Sequence) -> Figure:
    """Each configuration's train (dashed) and validation (solid) curves, one panel per quantity:
    the mean over its runs (`group.runs[i].curves`), with a band of one standard deviation where
    it has more than one."""
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, len(CURVES))
    colours = matplotlib.colormaps["tab10"]
    for ax, name in zip(axes, CURVES, strict=True):
        for i, group in enumerate(groups):
            for split, style in (("train", "--"), ("val", "-")):
                curves = [run.curves[key] for run in group.runs if (key := f"{name}/{split}") in run.curves]
                epochs = min((len(c) for c in curves), default=0)  # a shorter run bounds the mean
                if not epochs:
                    continue
                rows = [c[:epochs] for c in curves]
                mean = [statistics.fmean(column) for column in zip(*rows, strict=True)]
                label = f"{group.name} ({split}{f', n = {len(rows)}' if len(rows) > 1 else ''})"
                ax.plot(range(1, epochs + 1), mean, style, color=colours(i % 10), label=label)
                if len(rows) > 1:
                    sd = [statistics.stdev(column) for column in zip(*rows, strict=True)]
                    ax.fill_between(
                        range(1, epochs + 1),
                        [m - s for m, s in zip(mean, sd, strict=True)],
                        [m + s for m, s in zip(mean, sd, strict=True)],
                        color=colours(i % 10),
                        alpha=0.15,
                        linewidth=0,
                    )
        ax.set(title=TITLES[name], xlabel="epoch", ylabel="nats per image")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4) + 0.04, 1, 1))
    return fig
