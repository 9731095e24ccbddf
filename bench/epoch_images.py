"""The cost of the pictures `train` logs by epoch (`plot.epoch_images`), as a share of training time.

    python bench/epoch_images.py                    # all 55,000 training images, 3 epochs
    python bench/epoch_images.py --train-size 2000  # a quick look

Trains the default model with the pictures logged at every epoch into a scratch MLflow store,
as `train` logs them (the same callback, synchronously), and times each epoch's training and
each epoch's pictures. The default run logs them at the epochs `EpochImages.due` names (7 of
30 at the defaults), so their share of the default run's training is

    (first set + (sets - 1) x later set) / (first epoch + (epochs - 1) x later epoch),

the first of each as measured (it carries the one-off costs: tracing, matplotlib's start), the
later ones the median over the other epochs timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.quiet import start_tensorflow  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (the first is left out)")
    parser.add_argument("--train-size", type=int, default=None, help="training images (default all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start_tensorflow()
    import mlflow

    from pipeline import data
    from pipeline.params import Params, Train, parse_params, with_overrides
    from pipeline.tracking.callbacks import EpochImages
    from pipeline.training import fit_vae

    defaults = Params()
    params = parse_params(with_overrides({}, {"data.train_size": args.train_size}))
    _, splits = data.load_splits(params.data, seed=params.base.seed)
    train, val = splits["train"], splits["val"]

    class Timed(EpochImages):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            trained = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            self.times.append((trained - self.began, time.perf_counter() - trained))

    plot = defaults.plot
    timed = Timed(val.images, val.labels, every=1, epochs=args.epochs, originals=plot.n_reconstructions,
                  prior_grid=plot.prior_grid, seed=defaults.base.seed)  # fmt: skip
    timed.times = []
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        experiment = mlflow.create_experiment("bench", artifact_location=Path(scratch, "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            fit_vae(train.images, val.images, model=defaults.model, train=Train(epochs=args.epochs),
                    seed=1, callbacks=[timed],
                    active_threshold=defaults.evaluate.active_threshold, verbose=0)  # fmt: skip
    (first_epoch, first_set), *later = timed.times
    later = later or timed.times
    epoch = statistics.median(t for t, _ in later)
    pictures = statistics.median(p for _, p in later)
    epochs = defaults.train.epochs
    schedule = EpochImages(val.images, val.labels, every=plot.epoch_images, epochs=epochs, originals=1,
                           prior_grid=1, seed=0)  # fmt: skip
    sets = sum(schedule.due(e) for e in range(epochs))
    share = (first_set + (sets - 1) * pictures) / (first_epoch + (epochs - 1) * epoch)
    print(
        f"training: {epoch:.2f} s per epoch on {len(train.images):,} images (median of {len(later)}, "
        f"{min(t for t, _ in later):.2f}..{max(t for t, _ in later):.2f}; the first {first_epoch:.2f})"
    )
    print(
        f"pictures: {pictures:.3f} s per set (latent dim {defaults.model.latent_dim}, with the scatter; "
        f"{min(p for _, p in later):.3f}..{max(p for _, p in later):.3f}; the first {first_set:.3f})"
    )
    print(
        f"epoch images: {share:.2%} of the default run's training ({sets} sets of {epochs} epochs at "
        f"plot.epoch_images {plot.epoch_images})"
    )


if __name__ == "__main__":
    main()
