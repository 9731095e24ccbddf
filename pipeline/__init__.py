"""Experiment-tracking pipeline for a convolutional VAE on Fashion-MNIST."""
