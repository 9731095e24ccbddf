"""Time the importance-weighted bound on -log p(x) for k = 1, 100, 1000 samples.

    python bench/iw_bound.py                      # the trained models/vae.keras, whole test set
    python bench/iw_bound.py --test-size 1000 --k 1 100

Run it in the repository after `dvc repro` (it reads `models/vae.keras` and the prepared
data). The peak resident memory is the process's so far, so with k rising it belongs to
the largest k timed yet.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 100, 1000], help="samples per image")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from pipeline.quiet import start_tensorflow

    start_tensorflow()  # as the stage does: its start-up notices off the console
    import numpy as np

    from pipeline import data
    from pipeline.measures import importance_weighted_nll
    from pipeline.model import encode, load_vae
    from pipeline.params import load_params
    from pipeline.paths import MODEL, PREPARED

    params = load_params(ROOT / "params.yaml")
    images = data.load_prepared(ROOT / PREPARED)["test"].images[: args.test_size]
    vae = load_vae(ROOT / MODEL)
    batch_size = params.evaluate.batch_size
    x = data.to_model_input(images)
    mu, logvar = encode(vae.encoder, images, batch_size)
    print(f"{len(images):,} test images, evaluate.batch_size {batch_size}")
    print(f"{'k':>6} {'seconds':>8} {'images/s':>9} {'latents/s':>10} {'bound':>8} {'peak RSS':>9}")
    for k in sorted(args.k):
        rng = np.random.default_rng(params.base.seed)
        start = time.perf_counter()
        bound = importance_weighted_nll(vae.decoder, x, mu, logvar, k=k, rng=rng, batch_size=batch_size)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"{k:6d} {seconds:8.1f} {len(x) / seconds:9.0f} {len(x) * k / seconds:10.0f} "
            f"{float(np.mean(bound)):8.2f} {peak:6.2f} GiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
