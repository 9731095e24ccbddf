"""The logged model in MLflow's own tools, in fresh processes: pyfunc and Keras loaders, the
scoring server, and the registry's `champion` alias."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from keras import ops

from pipeline import data
from pipeline.model import load_vae
from pipeline.params import load_params
from pipeline.tracking.store import default_store_uri
from tests.helpers import ROOT, config_of, free_port, run, serving, set_param, store

# One worker runs them all (pytest-xdist's loadgroup), so the module's project is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("logged_model")]

NAME = "fashion-mnist-vae"  # base.tracking.registered_model


@pytest.fixture(scope="module")
def repo(reproduced) -> Path:
    """A project copy after one full `dvc repro` on small real data."""
    return reproduced("logged_model")


def trained(repo: Path) -> dict[str, str]:
    """The run file: run id, model id, registered name and version."""
    return json.loads((repo / "outputs/mlflow_run.json").read_text())


def sample_images(repo: Path, n: int = 5) -> np.ndarray:
    """A few test images as the model takes them, `(n, 28, 28, 1)` in [0, 1]."""
    return data.to_model_input(
        data.load_prepared(repo / "data/prepared/fashion_mnist.npz")["test"].images[:n]
    )


def consume(repo: Path, uri: str, folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """Run `tests/mlflow_consumer.py` in a fresh process outside the repository."""
    images = sample_images(repo)
    z = np.random.default_rng(0).standard_normal((4, 2)).astype("float32")
    np.savez(folder / "inputs.npz", images=images, z=z)
    result = run(
        [sys.executable, str(ROOT / "tests/mlflow_consumer.py"), uri, "inputs.npz", "outputs.npz"],
        folder,
        env={"MLFLOW_TRACKING_URI": default_store_uri(repo)},
    )
    return {**np.load(folder / "inputs.npz"), **np.load(folder / "outputs.npz")}, result.stdout


def test_fresh_process_loads_by_uri_and_matches_the_trained_vae(repo, tmp_path):
    arrays, stdout = consume(repo, f"models:/{trained(repo)['model_id']}", tmp_path)
    vae = load_vae(repo / "models/vae.keras")
    mean, log_variance = vae.encoder.predict(arrays["images"], verbose=0)
    np.testing.assert_allclose(arrays["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays["log_variance"], log_variance, rtol=1e-5, atol=1e-5)
    generated = ops.convert_to_numpy(ops.sigmoid(vae.decoder.predict(arrays["z"], verbose=0)))
    np.testing.assert_allclose(arrays["generate"], generated, atol=1e-6)
    assert arrays["generate"].shape == (4, 28, 28, 1)
    reconstructed = vae.predict(arrays["images"], verbose=0)
    np.testing.assert_allclose(arrays["reconstruct"], reconstructed, atol=1e-6)
    np.testing.assert_allclose(arrays["keras"], reconstructed, atol=1e-6)
    # No bogus progress bar: the training's steps_per_execution (2 batches here, 50 by default)
    # is not saved with the logged model, so one batch reads 1/1.
    assert "steps_per_execution 1" in stdout and "1/1" in stdout
    assert "2/1" not in stdout and "50/1" not in stdout


def post(address: str, body: object) -> tuple[int, dict]:
    """POST JSON to the scoring server's `/invocations`; the status and the parsed answer."""
    request = urllib.request.Request(
        f"{address}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_good_and_bad_requests(repo, tmp_path):
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    model = f"models:/{trained(repo)['model_id']}"
    command = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1"]
    env = {"MLFLOW_TRACKING_URI": default_store_uri(repo)}
    images = sample_images(repo, 2)
    vae = load_vae(repo / "models/vae.keras")
    with serving(
        [*command, "--port", str(port)], f"{address}/ping", "mlflow models serve", tmp_path, env=env
    ):
        status, answer = post(address, {"inputs": images.tolist()})
        assert status == 200
        np.testing.assert_allclose(answer["predictions"], vae.predict(images, verbose=0), atol=1e-5)

        status, answer = post(address, {"inputs": images[..., 0].tolist(), "params": {"mode": "encode"}})
        assert status == 200 and set(answer["predictions"]) == {"mean", "log_variance"}
        np.testing.assert_allclose(
            answer["predictions"]["mean"], vae.encoder.predict(images, verbose=0)[0], atol=1e-5
        )

        status, answer = post(address, {"inputs": [[0.0, 0.0]], "params": {"mode": "generate"}})
        assert status == 200 and np.shape(answer["predictions"]) == (1, 28, 28, 1)

        for bad, expected in (
            ({"inputs": np.zeros((2, 27, 27)).tolist()}, "(n, 28, 28, 1)"),  # wrong shape
            ({"inputs": [[["a"] * 28] * 28]}, "(n, 28, 28, 1)"),  # wrong type
            ({"inputs": (images * 255).tolist()}, "pixels in [0, 1]"),  # 0..255, not [0, 1]
            ({"inputs": [[0.0, 0.0, 0.0]], "params": {"mode": "generate"}}, "(n, 2)"),
            ({"inputs": images.tolist(), "params": {"mode": "dream"}}, "reconstruct, encode, generate"),
        ):
            status, answer = post(address, bad)
            assert 400 <= status < 500, (bad, status)
            assert expected in answer["message"] and "Traceback" not in json.dumps(answer)


def champion(repo: Path):
    return store(repo).get_model_version_by_alias(NAME, "champion")


def test_logged_models_are_named_and_carry_their_test_metrics(repo):
    client = store(repo)
    model = client.get_logged_model(trained(repo)["model_id"])
    params = load_params(repo / "params.yaml")
    assert model.name == f"vae-latent2-seed{params.train.seed}-{config_of(repo)}"
    assert model.params["model.latent_dim"] == "2" and model.params["train.seed"] == str(params.train.seed)
    metrics = {m.key: m.value for m in model.metrics}
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())
    assert {key: metrics[key] for key in evaluated} == pytest.approx(evaluated)
    by_loss = client.search_logged_models(
        experiment_ids=[model.experiment_id],
        order_by=[{"field_name": "metrics.test_loss", "ascending": True}],
    )
    assert [m.model_id for m in by_loss] == [model.model_id]


def test_champion_alias_moves_only_to_a_better_configuration(repo, tmp_path):
    """Slow: trains two more models through `dvc repro evaluate` (a worse configuration and a
    better one), the least that shows the alias staying and moving; tests/test_registry.py holds
    the rule's other cases on versions made directly."""
    client = store(repo)
    first = client.get_model_version(NAME, "1")
    assert first.tags["run_id"] == trained(repo)["run_id"]
    assert first.tags["git.commit"] == run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert first.tags["config_id"] == config_of(repo)
    # Chosen by validation, reported on test.
    assert float(first.tags["val_loss"]) == json.loads((repo / "metrics/train.json").read_text())["val_loss"]
    assert float(first.tags["test_loss"]) == pytest.approx(
        json.loads((repo / "metrics/evaluate.json").read_text())["test_loss"]
    )
    assert str(champion(repo).version) == "1"

    set_param(repo, "train", "learning_rate", 1e-6)  # a much worse model
    set_param(repo, "train", "epochs", 1)
    output = run(["dvc", "repro", "evaluate"], repo).stdout
    assert trained(repo)["model_version"] == "2" and str(champion(repo).version) == "1"
    level = load_params(repo / "params.yaml").base.tracking.champion_level
    assert (
        f"the champion is {NAME} version 1, not version 2: no configuration's mean val_loss is below "
        f"the champion's beyond noise (one-sided at {level:g})"
    ) in output
    assert client.get_model_version(NAME, "2").tags["protocol"] == first.tags["protocol"]

    set_param(repo, "train", "learning_rate", 3e-3)  # a clearly better one
    set_param(repo, "train", "epochs", 4)
    output = run(["dvc", "repro", "evaluate"], repo).stdout
    assert str(champion(repo).version) == "3" and "version 3 is the champion" in output
    # Two rivals evaluated (the worse one too), so each is tested at half the level.
    assert "lower beyond noise (z = " in output and f"one-sided at {level:g} / 2 rivals)" in output

    arrays, _ = consume(repo, f"models:/{NAME}@champion", tmp_path)
    np.testing.assert_allclose(
        arrays["reconstruct"],
        load_vae(repo / "models/vae.keras").predict(arrays["images"], verbose=0),
        atol=1e-6,
    )
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 3


def test_stages_print_the_link_to_their_run(repo):
    link = f"#/experiments/1/runs/{trained(repo)['run_id']}?workflowType=machine_learning"
    output = run(["python", "-m", "pipeline.evaluate"], repo).stdout
    assert f"evaluate: run http://127.0.0.1:5000/{link}" in output
