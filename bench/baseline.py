"""The obvious Keras 3 port of the seed: what `train_speed.py` measures the project against.

Written as a person would from the write-up: the same layers, loss, optimizer, learning
rate and batch size as the `train` stage, float32 NumPy arrays and `model.fit` defaults.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops


class Sampling(layers.Layer):
    def call(self, inputs):
        mu, logvar = inputs
        return mu + ops.exp(0.5 * logvar) * keras.random.normal(ops.shape(mu))


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampling = Sampling()
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def vae_loss(self, x):
        mu, logvar = self.encoder(x)
        logits = self.decoder(self.sampling([mu, logvar]))
        reconstruction = ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=(1, 2, 3))
        kl = 0.5 * ops.sum(ops.square(mu) + ops.exp(logvar) - logvar - 1.0, axis=1)
        return ops.mean(reconstruction + kl)

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self.vae_loss(x)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.loss_tracker.update_state(self.vae_loss(x))
        return {"loss": self.loss_tracker.result()}


def build_vae(latent_dim: int = 2, learning_rate: float = 1e-3) -> VAE:
    images = keras.Input(shape=(28, 28, 1))
    h = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(images)
    h = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    h = layers.Dense(32, activation="relu")(h)
    encoder = keras.Model(images, [layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)])

    z = keras.Input(shape=(latent_dim,))
    h = layers.Dense(7 * 7 * 32, activation="relu")(z)
    h = layers.Reshape((7, 7, 32))(h)
    h = layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(h)
    decoder = keras.Model(z, layers.Conv2DTranspose(1, 3, padding="same")(h))

    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Nadam(learning_rate))
    return vae
