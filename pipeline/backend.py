"""Keras' backend, chosen by `base.backend` and started before anything imports Keras.

TensorFlow is the default, what the lock installs and what every committed number used. JAX
comes from the `jax` extra (its CPU build) or `jax-cuda` (an NVIDIA GPU). Keras fixes a
process's backend when it is first imported, so the runners (a stage, a sweep's worker) call
`start` before they import the modules that use Keras.

On a GPU, neither backend takes the whole memory when several processes share it: TensorFlow
grows its share as it needs it, and JAX takes `gpu_share` of it (its own default, 0.75, when
one process has the GPU alone).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from pipeline.params import PipelineError
from pipeline.quiet import start_tensorflow

BACKENDS = ("tensorflow", "jax")
TAGS: dict[str, str] = {}  # what `start` returned in this process, for its runs' tags
JAX_EXTRA = "SETUP_EXTRAS=jax bash scripts/setup.sh (jax-cuda on an NVIDIA GPU)"


def start(
    name: str, *, threads: int = 0, cores: set[int] | None = None, gpu_share: float | None = None
) -> dict[str, str]:
    """Start Keras' backend `name`; return what a run records of it, as tags.

    `threads` sizes TensorFlow's thread pools (0: its default). JAX has no such setting: its
    CPU threads follow the cores the process may use, which `cores` narrows (a sweep's worker
    gets cores of its own).
    """
    if name not in BACKENDS:
        raise PipelineError(f"base.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    started = sys.modules["keras"].backend.backend() if "keras" in sys.modules else name
    if started != name:
        raise PipelineError(
            f"base.backend is {name}, but this process has already started Keras on {started}"
        )
    os.environ["KERAS_BACKEND"] = name
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's device ids in NVML's order
    if cores:
        os.sched_setaffinity(0, cores)
    if name == "tensorflow":
        return _start_tensorflow(threads)
    return _start_jax(gpu_share)


def _start_tensorflow(threads: int) -> dict[str, str]:
    start_tensorflow()
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)  # several trials can share one GPU
    return {
        "keras.backend": "tensorflow",
        "tensorflow.intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
        "tensorflow.inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
    }


def _start_jax(gpu_share: float | None) -> dict[str, str]:
    # Keras and MLflow import TensorFlow wherever it is installed (Keras to seed it and to save a
    # model, MLflow to read a metric's value), so it starts here first, quietly and growing its
    # GPU memory. Where it is not installed, training runs without it (`bench/train_speed.py
    # --variants jax`), though the stages log their model for a TensorFlow environment.
    if importlib.util.find_spec("tensorflow") is not None:
        _start_tensorflow(0)
    if gpu_share is not None:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{gpu_share:.3f}"
    # On a GPU, the same seed gives the same numbers and a resumed training those of one never
    # stopped only with XLA's deterministic kernels (TensorFlow's op determinism, for JAX).
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
    try:
        import jax
    except ImportError:
        raise PipelineError(f"base.backend: jax is not installed here; install it with {JAX_EXTRA}") from None
    return {
        "keras.backend": "jax",
        "jax.platform": jax.default_backend(),  # cpu, or gpu where JAX found one
        "jax.cores": str(len(os.sched_getaffinity(0))),
    }


def compiled(function):
    """`function` of arrays compiled by the backend Keras runs on: `jax.jit` or `tf.function`."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, reduce_retracing=True)
