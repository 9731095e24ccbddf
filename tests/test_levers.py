"""The time-to-quality levers on small real data: Keras' learning-rate schedules and early stopping,
as `train` keys, and their state carried across a kill."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from pipeline import data
from pipeline.params import Model, Train
from pipeline.training import LeverState, fit_vae

STEPS = 6  # 600 training images, batch 100


@pytest.fixture(scope="module")
def small_data(official_dir):
    splits = data.split_data(
        data.load_official(official_dir), val_size=200, train_size=600, test_size=50, seed=0
    )
    return {name: split.images for name, split in splits.items()}


def fit(small_data, callbacks=(), state_dir=None, model=None, active_threshold=None, **train):
    return fit_vae(
        small_data["train"],
        small_data["val"],
        model=model or Model(),
        train=Train(batch_size=100, **train),
        seed=3,
        callbacks=callbacks,
        state_dir=state_dir,
        active_threshold=active_threshold,
        verbose=0,
    )


def test_cosine_warms_up_then_decays_to_its_floor(small_data):
    _, history = fit(small_data, epochs=4, learning_rate=0.004, schedule="cosine", warmup_epochs=1,
                     final_lr_fraction=0.1)  # fmt: skip
    # At each epoch's end: after the 1-epoch warm-up the peak, then a cosine over the other 3 epochs.
    expected = [0.004] + [
        0.004 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * epoch / 3))) for epoch in (1, 2, 3)
    ]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-5)


def test_a_constant_rate_can_warm_up(small_data):
    _, history = fit(small_data, epochs=3, learning_rate=0.004, warmup_epochs=1.5)
    np.testing.assert_allclose(history["learning_rate"], [0.004 / 1.5, 0.004, 0.004], rtol=1e-5)


def test_the_defaults_keep_a_constant_rate_and_their_history(small_data):
    _, history = fit(small_data, epochs=2)
    assert "learning_rate" not in history  # the defaults' history.csv keeps its columns


def test_plateau_lowers_the_rate_by_its_factor(small_data):
    _, history = fit(small_data, epochs=5, learning_rate=0.05, schedule="plateau", plateau_factor=0.5,
                     plateau_patience=1)  # fmt: skip
    rates, losses = history["learning_rate"], history["val_loss"]
    # Keras logs the rate in force during the epoch; it halves after an epoch without a new best.
    for epoch in range(1, 5):
        stalled = losses[epoch - 1] >= min(losses[: epoch - 1], default=math.inf)
        assert rates[epoch] == pytest.approx(rates[epoch - 1] * (0.5 if stalled else 1.0))
    assert rates[0] == pytest.approx(0.05)


def test_early_stopping_keeps_the_best_epochs_weights(small_data):
    weights = []  # at each epoch's end
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: weights.append([w.copy() for w in record.model.get_weights()])
    )
    # Every weight zeroed before epoch 3: a dead network, far worse than epoch 2's, so the best
    # epoch comes before the last and keeping the last epoch's weights would fail this test.
    zero = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: (
            epoch == 3 and zero.model.set_weights([np.zeros_like(w) for w in zero.model.get_weights()])
        )
    )
    vae, history = fit(small_data, [zero, record], epochs=8, learning_rate=0.004, early_stopping=2)
    best = int(np.argmin(history["val_loss"]))
    assert best == 2 and len(history["val_loss"]) == 5  # stopped 2 epochs after the best
    for kept, at_best in zip(vae.get_weights(), weights[best], strict=True):
        np.testing.assert_array_equal(kept, at_best)
    assert any(
        not np.array_equal(kept, last) for kept, last in zip(vae.get_weights(), weights[-1], strict=True)
    )


class Interrupt(keras.callbacks.Callback):
    """Stop the fit after an epoch's checkpoint, as a kill would between epochs."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt("killed")


def test_a_killed_fit_resumes_its_schedule_and_its_early_stopping(small_data, tmp_path):
    settings = dict(epochs=4, learning_rate=0.004, schedule="cosine", warmup_epochs=1, early_stopping=3)
    _, whole = fit(small_data, **settings)

    backup = lambda: keras.callbacks.BackupAndRestore(str(tmp_path / "state"))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        fit(small_data, [backup(), Interrupt(after=1)], state_dir=tmp_path, **settings)
    first = json.loads((tmp_path / "levers.json").read_text())
    _, rest = fit(small_data, [backup()], state_dir=tmp_path, **settings)

    assert len(rest["loss"]) == 2  # epochs 2 and 3 only
    # The same data order and sampling noise as the fit never killed: the same numbers.
    assert rest["loss"] == whole["loss"][2:] and rest["val_loss"] == whole["val_loss"][2:]
    # The schedule follows the optimizer's step, which the checkpoint restored.
    np.testing.assert_allclose(rest["learning_rate"], whole["learning_rate"][2:], rtol=1e-6)
    # Early stopping went on counting from the state it had after epoch 1, not from nothing.
    saved = json.loads((tmp_path / "levers.json").read_text())
    (after_1,) = first["1"]
    (after_3,) = saved["3"]
    seen = [after_1["best"], *rest["val_loss"]]
    assert after_3["best"] == pytest.approx(min(seen))
    if after_3["best_epoch"] < 2:  # no better epoch since the kill: the count reaches back across it
        assert after_3["best_epoch"] == after_1["best_epoch"] and after_3["wait"] == 3 - after_1["best_epoch"]


def test_lever_state_puts_back_counters_and_best_weights(tmp_path):
    """Keras' own callbacks, stepped by hand through a kill after epoch 2: the new ones carry on."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")

    def callbacks():
        stopping = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
        plateau = keras.callbacks.ReduceLROnPlateau(patience=5)
        state = LeverState(tmp_path, [plateau, stopping])
        for callback in (plateau, stopping, state):
            callback.set_model(model)
            callback.on_train_begin()
        return plateau, stopping, state

    plateau, stopping, state = callbacks()
    best_weights = None
    for epoch, val_loss in enumerate([5.0, 3.0, 4.0]):
        state.on_epoch_begin(epoch)
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        for callback in (plateau, stopping, state):
            callback.on_epoch_end(epoch, {"val_loss": val_loss})
        if epoch == 1:
            best_weights = model.get_weights()

    plateau, stopping, state = callbacks()  # a new process: Keras' counters start again
    assert stopping.best is None
    state.on_epoch_begin(3)
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (3.0, 1, 1)
    assert (plateau.best, plateau.wait) == (3.0, 1)
    for restored, expected in zip(stopping.best_weights, best_weights, strict=True):
        np.testing.assert_array_equal(restored, expected)


def test_each_epoch_records_the_latent_use_and_changes_no_number(small_data):
    _, watched = fit(small_data, epochs=2, model=Model(latent_dim=4), active_threshold=0.01)
    _, same = fit(small_data, epochs=2, model=Model(latent_dim=4))
    assert watched["val_loss"] == same["val_loss"] and watched["loss"] == same["loss"]  # only watched
    assert "val_active_units" not in same
    units = [f"val_kl_unit_{u:02d}" for u in range(4)]
    assert sorted(k for k in watched if k.startswith("val_kl_unit_")) == units
    assert all(0 <= count <= 4 for count in watched["val_active_units"])
    assert all(watched[unit][-1] >= 0 for unit in units)
    # The units' KL adds up to the validation KL (on a subset, with the analytic term: close).
    assert sum(watched[unit][-1] for unit in units) == pytest.approx(watched["val_kl"][-1], rel=0.15)


def test_kl_warm_up_and_free_bits_change_the_objective_but_not_the_reported_elbo(small_data):
    _, plain = fit(small_data, epochs=2)
    assert "objective" not in plain  # the defaults' history keeps its columns
    _, warmed = fit(small_data, epochs=2, kl_warmup_epochs=1)
    # During the warm-up the KL weighs less than 1, so the objective lies below the negative ELBO;
    # Keras' `loss` stays reconstruction + KL, the figure every stage reports.
    assert warmed["objective"][0] < warmed["loss"][0]
    np.testing.assert_allclose(warmed["loss"], np.add(warmed["reconstruction"], warmed["kl"]), rtol=1e-5)
    _, floored = fit(small_data, epochs=2, free_bits=5.0)  # far above any unit's KL in 2 epochs
    # Each of the 2 units counts as at least 5 nats, so the objective is above the ELBO.
    assert floored["objective"][-1] >= floored["reconstruction"][-1] + 2 * 5.0 - 1e-3
    assert floored["loss"] != plain["loss"]  # the gradient changed, so the model did


def test_the_kl_weight_moves_the_model_along_the_rate_distortion_trade_off(small_data):
    _, plain = fit(small_data, epochs=3)
    _, light = fit(small_data, epochs=3, kl_weight=0.2)
    _, heavy = fit(small_data, epochs=3, kl_weight=5.0)
    # The objective weighs the KL by beta; the reported loss stays reconstruction + KL.
    weighed = np.add(light["reconstruction"], 0.2 * np.array(light["kl"]))
    np.testing.assert_allclose(light["objective"], weighed, rtol=1e-4)
    np.testing.assert_allclose(heavy["loss"], np.add(heavy["reconstruction"], heavy["kl"]), rtol=1e-5)
    # A light KL codes more (a higher rate) and reconstructs better; a heavy one the reverse.
    assert light["val_kl"][-1] > plain["val_kl"][-1] > heavy["val_kl"][-1]
    assert light["val_reconstruction"][-1] < plain["val_reconstruction"][-1] < heavy["val_reconstruction"][-1]
