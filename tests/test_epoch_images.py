"""Pictures of the model as it learns, logged to MLflow by key and step: when, what, and once."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.params import Model, Train
from pipeline.tracking.callbacks import EpochImages, logged_images
from pipeline.training import fit_vae


@pytest.fixture(scope="module")
def small(official_dir):
    splits = data.split_data(
        data.load_official(official_dir), val_size=200, train_size=600, test_size=50, seed=0
    )
    return splits["train"], splits["val"]


def pictures(client, run_id: str) -> dict[tuple[str, int], np.ndarray]:
    """The run's full-size pictures by (key, step), read back as arrays."""
    found = {}
    for item in client.list_artifacts(run_id, "images"):
        if item.path.endswith(".png"):
            key, _, step, *_ = item.path.removeprefix("images/").split("+")
            path = client.download_artifacts(run_id, item.path)
            found[(key, int(step))] = np.asarray(Image.open(path))
    return found


def callback(val, *, every: int, epochs: int, logged=frozenset()) -> EpochImages:
    return EpochImages(
        val.images, val.labels, every=every, epochs=epochs, originals=4, prior_grid=3, seed=0, logged=logged
    )


@pytest.mark.parametrize("latent_dim", [2, 3])
def test_pictures_are_logged_at_the_first_every_nth_and_last_epoch_and_change_as_it_learns(
    small, tmp_path, latent_dim
):
    train, val = small
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("pictures", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        fit_vae(train.images, val.images, model=Model(latent_dim=latent_dim), train=Train(epochs=4),
                seed=1, callbacks=[callback(val, every=3, epochs=4)], verbose=0)  # fmt: skip
    client = mlflow.MlflowClient()
    found = pictures(client, run.info.run_id)
    keys = ["prior_samples", "reconstructions"] + (["latent_scatter"] if latent_dim == 2 else [])
    assert sorted(found) == sorted((key, step) for key in keys for step in (0, 2, 3))  # 1 is not due
    # Four originals above their reconstructions, each pixel 3 x 3; a 3 x 3 sheet of samples.
    assert found[("reconstructions", 0)].shape == (2 * 28 * 3, 4 * 28 * 3)
    assert found[("prior_samples", 3)].shape == (3 * 28 * 3, 3 * 28 * 3)
    originals = slice(0, 28 * 3)
    np.testing.assert_array_equal(
        found[("reconstructions", 0)][originals], found[("reconstructions", 3)][originals]
    )
    assert not np.array_equal(found[("reconstructions", 0)], found[("reconstructions", 3)])  # it learned
    assert not np.array_equal(found[("prior_samples", 0)], found[("prior_samples", 3)])
    assert client.get_run(run.info.run_id).data.tags["mlflow.loggedImages"] == "True"

    # A resumed attempt logs none of the pictures the run has, and those it lacks.
    logged = logged_images(run.info.run_id)
    assert logged == frozenset(found)
    resumed = callback(val, every=3, epochs=4, logged=logged - {("prior_samples", 3)})
    with mlflow.start_run(run_id=run.info.run_id):
        fit_vae(train.images, val.images, model=Model(latent_dim=latent_dim), train=Train(epochs=4),
                seed=1, callbacks=[resumed], verbose=0)  # fmt: skip
    files = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert len(files) == len(found) + 1 and sum("prior_samples+step+3+" in f for f in files) == 2
