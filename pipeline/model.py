"""The convolutional VAE: loss math, a registered sampling layer, encoder, decoder; its input batches,
encoding, saving and loading.

Written with `keras.ops` and trained by Keras' own `fit`, which takes the gradients of
`VAE.compute_loss`: the same model on every Keras backend (`pipeline.backend`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from pipeline.data import to_model_input
from pipeline.params import IMAGE_SIDE, Model, Train

OPTIMIZERS = {
    "nadam": keras.optimizers.Nadam,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


def reconstruction_loss(x, logits):
    """Per-image summed sigmoid cross-entropy: `(batch, 28, 28, 1)` x2 -> `(batch,)` nats."""
    # max(l, 0) - l * x + log(1 + exp(-|l|)) is the overflow-free form of -log Bernoulli(x | sigmoid(l)).
    per_pixel = ops.relu(logits) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=1)


def _twice_kl(mu, logvar):
    """Twice the analytic KL(N(mu, sigma^2) || N(0, 1)) of each unit of each row."""
    return ops.square(mu) + ops.exp(logvar) - logvar - 1.0


def kl_divergence(mu, logvar):
    """Analytic KL(N(mu, sigma^2) || N(0, I)) per row: `(batch, latent)` -> `(batch,)`."""
    return 0.5 * ops.sum(_twice_kl(mu, logvar), axis=-1)


def kl_per_unit(mu, logvar):
    """The analytic KL of each latent unit, averaged over the rows: `(batch, latent)` -> `(latent,)`."""
    return 0.5 * ops.mean(_twice_kl(mu, logvar), axis=0)


def active_units(mu: np.ndarray, threshold: float) -> int:
    """Latent dims whose posterior mean varies across images: Var_x(E[z_u | x]) > threshold."""
    return int(np.sum(np.var(mu, axis=0) > threshold))


def negative_elbo(x, logits, mu, logvar):
    """Per-image negative ELBO, the training loss: reconstruction + KL."""
    return reconstruction_loss(x, logits) + kl_divergence(mu, logvar)


@keras.saving.register_keras_serializable(package="pipeline")
class Sampling(layers.Layer):
    """Reparameterisation: z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mu, logvar = inputs
        eps = keras.random.normal(ops.shape(mu), seed=self.seed_generator)
        return mu + ops.exp(0.5 * logvar) * eps

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


def build_encoder(config: Model) -> keras.Model:
    """Image `(28, 28, 1)` -> latent mean and log-variance, each `(latent_dim,)`."""
    images = keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1), name="image")
    h = images
    for filters in config.encoder_filters:
        h = layers.Conv2D(filters, config.kernel_size, strides=2, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    h = layers.Dense(config.dense_units, activation="relu")(h)
    mu = layers.Dense(config.latent_dim, name="z_mean")(h)
    logvar = layers.Dense(config.latent_dim, name="z_log_var")(h)
    return keras.Model(images, [mu, logvar], name="encoder")


def build_decoder(config: Model) -> keras.Model:
    """Latent `(latent_dim,)` -> Bernoulli logits `(28, 28, 1)`."""
    z = keras.Input(shape=(config.latent_dim,), name="z")
    side = config.decoder_side
    h = layers.Dense(side * side * config.decoder_channels, activation="relu")(z)
    h = layers.Reshape((side, side, config.decoder_channels))(h)
    for filters in config.decoder_filters:
        h = layers.Conv2DTranspose(filters, config.kernel_size, strides=2, padding="same", activation="relu")(
            h
        )
    logits = layers.Conv2DTranspose(1, config.kernel_size, padding="same", name="logits")(h)
    return keras.Model(z, logits, name="decoder")


@keras.saving.register_keras_serializable(package="pipeline")
class VAE(keras.Model):
    """Encoder + sampling + decoder, trained on the batch mean of the negative ELBO.

    Against a collapsed latent space, training can optimise another objective (Keras' `loss`
    stays the negative ELBO; the objective is logged as `objective`): a KL term weighted from 0
    up to 1 over the first `kl_warmup_steps` optimizer steps (Bowman et al. 2016), and each
    unit's batch-mean KL counted as at least `free_bits` nats (Kingma et al. 2016). Any of them
    times `kl_weight`, the beta of a beta-VAE (Higgins et al. 2017): below 1 the model codes more
    and reconstructs better, above 1 the reverse, a point elsewhere on the rate-distortion plane.
    Calling the model returns the deterministic reconstruction sigmoid(decode(mu)); training
    minimises `compute_loss`, which samples z itself, so `fit` runs on every backend.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        seed: int | None = None,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        kl_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.seed = seed
        self.kl_warmup_steps = kl_warmup_steps
        self.free_bits = free_bits
        self.kl_weight = kl_weight
        self.sampling = Sampling(seed=seed, name="sampling")
        if kl_warmup_steps:
            # The warm-up's clock, a variable of the model so that every backend's training
            # step updates it (and a checkpoint carries it): the optimizer steps taken so far.
            self.kl_steps = self.add_weight(
                name="kl_steps", shape=(), initializer="zeros", trainable=False, dtype="float32"
            )
        self.logs_objective = False  # whether the step being traced trains (and logs `objective`)
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.objective_tracker = keras.metrics.Mean(name="objective")

    @property
    def reshaped(self) -> bool:
        """Whether training optimises something other than the negative ELBO."""
        return bool(self.kl_warmup_steps or self.free_bits or self.kl_weight != 1)

    @property
    def metrics(self) -> list:
        trackers = [self.reconstruction_tracker, self.kl_tracker]
        return [*trackers, self.objective_tracker] if self.reshaped else trackers

    def build(self, input_shape) -> None:
        # The encoder and decoder are built functional models; only the sampling layer is not.
        self.sampling.build([self.encoder.output_shape[0]] * 2)
        self.built = True

    def call(self, x, training: bool = False):
        mu, _ = self.encoder(x, training=training)
        return ops.sigmoid(self.decoder(mu, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The batch mean of what training minimises, with one sampled z: the negative ELBO, or
        the objective when `reshaped`. It updates the trackers that `compute_metrics` reports.

        `y_pred`, the deterministic reconstruction, is not used: the loss decodes a sampled z.
        """
        mu, logvar = self.encoder(x, training=training)
        logits = self.decoder(self.sampling([mu, logvar]), training=training)
        reconstruction = ops.mean(reconstruction_loss(x, logits))
        kl = ops.mean(kl_divergence(mu, logvar))
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        self.logs_objective = training and self.reshaped
        if not self.reshaped:
            return reconstruction + kl
        counted = ops.sum(ops.maximum(kl_per_unit(mu, logvar), self.free_bits)) if self.free_bits else kl
        weight = self.kl_weight
        if self.kl_warmup_steps:
            weight = self.kl_weight * ops.minimum(1.0, self.kl_steps / float(self.kl_warmup_steps))
            if training:
                self.kl_steps.assign_add(1.0)
        objective = reconstruction + weight * counted
        if training:
            self.objective_tracker.update_state(objective)
        return objective

    def compute_metrics(self, x, y, y_pred, sample_weight=None) -> dict:
        """The logs of a step: the running means of the negative ELBO and its parts, and in
        training the objective's where it differs."""
        # The reported loss is the sum of the two running means: the same number as a running
        # mean of the totals, but a separate tracker for it wobbled by one ulp between runs.
        reconstruction, kl = self.reconstruction_tracker.result(), self.kl_tracker.result()
        logs = {"loss": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}
        if self.logs_objective:
            logs["objective"] = self.objective_tracker.result()
        return logs

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "seed": self.seed,
            "kl_warmup_steps": self.kl_warmup_steps,
            "free_bits": self.free_bits,
            "kl_weight": self.kl_weight,
        }

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)


def build_vae(model: Model, train: Train, seed: int, learning_rate=None, steps_per_epoch: int = 1) -> VAE:
    """A compiled VAE for the given settings; `learning_rate` (a number or a Keras schedule)
    replaces `train.learning_rate`; `steps_per_epoch` turns `train.kl_warmup_epochs` into steps."""
    vae = VAE(
        build_encoder(model),
        build_decoder(model),
        seed=seed,
        kl_warmup_steps=round(train.kl_warmup_epochs * steps_per_epoch),
        free_bits=train.free_bits,
        kl_weight=train.kl_weight,
        name="vae",
    )
    vae.compile(
        optimizer=OPTIMIZERS[train.optimizer](
            learning_rate=train.learning_rate if learning_rate is None else learning_rate
        ),
        steps_per_execution=train.steps_per_execution,
    )
    vae(keras.ops.zeros((1, IMAGE_SIDE, IMAGE_SIDE, 1)))  # build, so the model saves and loads whole
    return vae


def inference_model(vae: VAE) -> keras.Model:
    """The trained encoder and decoder as one model of built-in layers: image -> sigmoid(decode(mean)).

    What MLflow logs and serves: it loads wherever Keras does, without this package, and
    carries no compile settings (so no `steps_per_execution` in a loaded model's `predict`).
    Its layers `encoder` and `decoder` are the trained sub-models.
    """
    images = keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1), name="image")
    mu, _ = vae.encoder(images)
    reconstruction = layers.Activation("sigmoid", name="reconstruction")(vae.decoder(mu))
    return keras.Model(images, reconstruction, name="vae")


def load_vae(path) -> VAE:
    """Load a saved VAE; `safe_mode=True` refuses any code smuggled into the file."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def save_vae(vae: VAE, path: Path) -> None:
    """Save atomically: a reader never sees a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.keras")
    try:
        vae.save(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class Batches(keras.utils.PyDataset):
    """uint8 images `(n, 28, 28)` -> float32 batches `(b, 28, 28, 1)` in [0, 1], for any backend.

    With `shuffle_seed`, epoch e's order is a permutation drawn from (seed, e): a training's
    callback sets `epoch` as each begins, so a resumed fit goes on in the same order.
    """

    def __init__(self, images: np.ndarray, batch_size: int, *, shuffle_seed: int | None = None):
        super().__init__()
        self.images, self.batch_size, self.shuffle_seed = images, batch_size, shuffle_seed
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def order(self) -> np.ndarray:
        """This epoch's permutation of the rows."""
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.shuffle_seed, self.epoch])
            self._order = (self.epoch, rng.permutation(len(self.images)))
        return self._order[1]

    def __getitem__(self, index: int) -> np.ndarray:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.shuffle_seed is not None:
            rows = self.order()[rows]
        return to_model_input(self.images[rows])


def batches(images: np.ndarray, batch_size: int, *, shuffle_seed: int | None = None):
    """uint8 images `(n, 28, 28)` -> float32 batches `(b, 28, 28, 1)` in [0, 1].

    The data set stays uint8, a quarter of its float size; each batch is gathered and scaled
    when it is needed. With `shuffle_seed`, every pass draws a new seeded order.

    On TensorFlow, a `tf.data` pipeline, which the committed numbers used; on another backend,
    `Batches`.
    """
    if keras.backend.backend() != "tensorflow":
        return Batches(images, batch_size, shuffle_seed=shuffle_seed)
    import tensorflow as tf

    stored = tf.constant(images)
    indices = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        indices = indices.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)

    def gather(rows):
        return tf.cast(tf.gather(stored, rows), tf.float32)[..., None] / 255.0  # as data.to_model_input

    return indices.batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


def encode(encoder: keras.Model, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latent means and log-variances of uint8 images, `(n, latent_dim)` each."""
    mu, logvar = encoder.predict(batches(images, batch_size), verbose=0)
    return mu, logvar
