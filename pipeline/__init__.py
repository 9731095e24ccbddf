"""Experiment-tracking pipeline for a convolutional VAE on Fashion-MNIST."""

from pipeline import quiet

quiet.install()  # before any module imports TensorFlow: see `quiet`
