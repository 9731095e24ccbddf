"""One model on every Keras backend: TensorFlow (the default) and JAX give the same numbers for the
same weights, data and noise; the pipeline runs, records and resumes on JAX through `dvc repro`;
a sweep places its workers on GPUs where there are some."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest

from pipeline import data
from pipeline.history import read_history
from pipeline.model import Batches
from pipeline.params import ParamsError, Tune, load_params, parse_params
from pipeline.tracking.store import default_store_uri
from pipeline.tune import WORKER_MEMORY, placements, plan
from tests.helpers import ROOT, SMALL, config_of, make_repo, run, run_env, store

# Relative: the negative ELBO is a sum of 784 pixels' terms, rounded apart by each backend's
# kernels (measured: 2e-7 on a 2-core AMD EPYC).
PARITY_RTOL = 1e-5
# An SGD step's change to a weight tensor, against the tensor's largest change: the float32
# subtraction of the weights before and after rounds at about 2e-4 of it (measured).
STEP_RTOL = 1e-3


def numbers_on(backend: str, weights: Path, inputs: Path, out: Path) -> dict[str, np.ndarray]:
    subprocess.run(
        [sys.executable, str(ROOT / "tests/backend_elbo.py"), backend, str(weights), str(inputs), str(out)],
        check=True,
        env={**run_env(), "PYTHONPATH": str(ROOT)},
    )
    with np.load(out) as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_same_weights_data_and_noise_give_the_same_negative_elbo_on_both_backends(tmp_path, official_dir):
    images = data.load_official(official_dir)["test"].images[:200]
    eps = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=data.to_model_input(images), eps=eps)
    weights = tmp_path / "vae.weights.h5"  # written by the first, read by the second
    tf, jax = (
        numbers_on(b, weights, tmp_path / "inputs.npz", tmp_path / f"{b}.npz") for b in ("tensorflow", "jax")
    )

    np.testing.assert_allclose(jax["elbo"], tf["elbo"], rtol=PARITY_RTOL)
    for name in ("objective", "loss", "logged_objective"):
        np.testing.assert_allclose(jax[name], tf[name], rtol=PARITY_RTOL, err_msg=name)
    assert jax["kl_steps"] == tf["kl_steps"] == 5  # `compute_loss` in training advanced the warm-up's clock
    # The objective (free bits, a part-way warm-up) differs from the negative ELBO by far more
    # than the tolerance, so a backend that dropped a lever would fail above.
    assert abs(tf["objective"] - tf["loss"]) > 100 * PARITY_RTOL * tf["loss"]
    np.testing.assert_allclose(tf["loss"], tf["elbo"].mean(), rtol=PARITY_RTOL)

    # Through Keras' own compiled steps: the noise moves on at every step, and one SGD step with
    # the same noise changes every weight alike (the gradients agree, not only the loss).
    assert jax["noise_moved"] and tf["noise_moved"]
    deltas = sorted(name for name in tf if name.startswith("delta_"))
    assert len(deltas) == 18  # every weight tensor of the encoder and decoder
    for name in deltas:
        largest = np.abs(tf[name]).max()
        assert largest > 0, name
        np.testing.assert_allclose(jax[name], tf[name], rtol=0, atol=STEP_RTOL * largest, err_msg=name)


def test_batches_for_other_backends_hold_every_image_once_in_an_order_drawn_from_seed_and_epoch():
    images = np.arange(10 * 28 * 28, dtype=np.uint32).reshape(10, 28, 28).astype(np.uint8)
    in_order = np.concatenate([Batches(images, 4)[i] for i in range(len(Batches(images, 4)))])
    np.testing.assert_array_equal(in_order, data.to_model_input(images))

    def epoch(number: int, seed: int = 1) -> np.ndarray:
        batches = Batches(images, 4, shuffle_seed=seed)
        batches.epoch = number
        return np.concatenate([batches[i] for i in range(len(batches))])

    first = epoch(0)
    assert sorted(first[:, 0, 0, 0].tolist()) == sorted(in_order[:, 0, 0, 0].tolist())  # each image once
    np.testing.assert_array_equal(first, epoch(0))  # a resumed epoch: the same order
    assert not np.array_equal(first, epoch(1)) and not np.array_equal(first, epoch(0, seed=2))


def test_the_backend_is_a_setting_checked_before_any_work():
    assert load_params(ROOT / "params.yaml").base.backend == "tensorflow"
    with pytest.raises(ParamsError, match=r"base\.backend"):
        parse_params({"base": {"backend": "torch"}})
    with pytest.raises(ParamsError, match=r"tune\.space: base\.backend is the sweep"):
        parse_params({"tune": {"space": {"base.backend": {"choices": ["tensorflow", "jax"]}}}})


def test_jax_missing_is_named_with_the_extra_that_installs_it():
    probe = "import sys\nsys.modules['jax'] = None  # as where the extra is not installed\n" + (
        "from pipeline.backend import start\nstart('jax')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=run_env(), cwd=ROOT
    )
    assert result.returncode != 0
    assert "base.backend: jax is not installed here; install it with SETUP_EXTRAS=jax" in result.stderr


def test_a_sweep_counts_gpus_and_gives_each_worker_one():
    usable = len(os.sched_getaffinity(0))
    fits = psutil.virtual_memory().available // WORKER_MEMORY
    tune = Tune(trials_per_gpu=3)
    assert plan(tune, trials_left=100, gpus=0)[0] == max(1, min(usable, fits))  # no GPU: one per core
    # Three per GPU, as many as the cores and the memory allow.
    assert plan(tune, trials_left=100, gpus=1)[0] == max(1, min(3, usable, fits))
    assert plan(Tune(trials_per_gpu=1), trials_left=100, gpus=1)[0] == 1
    assert plan(tune, trials_left=1, gpus=2)[0] == 1
    placed = placements(5, 1, ["0", "1"])
    assert [p["gpu"] for p in placed] == ["0", "1", "0", "1", "0"]
    # GPU 0 holds three workers and GPU 1 two: each JAX worker takes its share of its GPU's memory.
    assert [round(p["gpu_share"], 3) for p in placed] == [0.3, 0.45, 0.3, 0.45, 0.3]
    if usable >= 2:  # on the CPU, with a thread each: cores of their own
        assert [p["cores"] for p in placements(2, 1, [])] == [
            {c} for c in sorted(os.sched_getaffinity(0))[:2]
        ]
    assert placements(2, 0, []) == [{}, {}]  # threads left to the backend: cores left to it too


# On JAX: the lever whose state is new to this backend (the warm-up's clock, over three of the
# four epochs, so that a kill after two lands inside it), a schedule and early stopping, whose
# state must survive a kill.
ON_JAX = {
    **SMALL,
    "base": {"backend": "jax"},
    "train": {
        "epochs": 4,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "early_stopping": 3,
        "kl_warmup_epochs": 3,
        "free_bits": 0.1,
    },
}


@pytest.fixture(scope="module")
def on_jax(reproduced) -> Path:
    """An uninterrupted `dvc repro` with Keras on JAX."""
    return reproduced("jax", ON_JAX)


def training_run(repo: Path):
    run_id = json.loads((repo / "outputs/mlflow_run.json").read_text())["run_id"]
    return store(repo).get_run(run_id)


@pytest.mark.slow
@pytest.mark.xdist_group("jax")
def test_dvc_repro_on_jax_records_its_backend_and_its_model_loads_on_tensorflow(on_jax):
    tracked = training_run(on_jax)
    assert tracked.info.status == "FINISHED"
    tags, params = tracked.data.tags, tracked.data.params
    assert tags["env.keras_backend"] == "jax" and tags["keras.backend"] == "jax"
    assert tags["jax.platform"] == "cpu" and tags["env.jax"] != "not installed"
    assert params["base.backend"] == "jax"
    # The backend, like the thread count, is not part of what a configuration is.
    assert tags["pipeline.config_id"] == config_of(on_jax)
    history = read_history(on_jax / "plots/history.csv")
    assert "objective" in history and "val_objective" not in history
    # The warm-up's clock runs inside the compiled step: the KL counts less than in the negative
    # ELBO at first, and in full once the three warm-up epochs are done (every unit's KL then
    # above the free bits, so the objective is the negative ELBO). A clock stuck at 0 leaves the
    # KL uncounted: it grows unchecked, and the two end thousands of nats apart.
    assert history["objective"][0] < history["loss"][0]
    assert history["objective"][-1] == pytest.approx(history["loss"][-1], rel=1e-6)
    evaluated = json.loads((on_jax / "metrics/evaluate.json").read_text())
    assert 100 < evaluated["test_loss"] < 700 and evaluated["test_iw_nll"] <= evaluated["test_loss"] + 1.0
    assert tracked.data.metrics["test_loss"] == pytest.approx(evaluated["test_loss"])

    # Trained on JAX, served on TensorFlow: this process's backend, through MLflow's own loader.
    mlflow.set_tracking_uri(default_store_uri(on_jax))
    (logged,) = mlflow.search_logged_models(experiment_ids=[tracked.info.experiment_id], output_format="list")
    model = mlflow.keras.load_model(logged.model_uri)
    assert model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 28, 28, 1)


@pytest.mark.slow
@pytest.mark.xdist_group("jax")
def test_a_killed_training_on_jax_resumes_to_the_numbers_of_one_never_killed(on_jax, tmp_path, processes):
    repo = make_repo(tmp_path / "killed", ON_JAX)
    history = repo / "checkpoints/train/history.csv"
    process = processes(["dvc", "repro"], repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # two epochs done
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "timed out waiting for two epochs"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = run(["dvc", "repro"], repo)
    assert "resuming run" in result.stdout
    for name in ("plots/history.csv", "metrics/train.json", "metrics/evaluate.json"):
        assert (repo / name).read_text() == (on_jax / name).read_text(), name
