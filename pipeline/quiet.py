"""TensorFlow started with its start-up notices kept off the console; every other line passes.

TensorFlow 2.21 logs its start-up notices (oneDNN, CPU features, missing CUDA drivers, the
failed `cuInit` on a machine without a GPU) through Abseil before Abseil's logging is set up,
and such lines reach stderr whatever `TF_CPP_MIN_LOG_LEVEL` says. So `start_tensorflow()`
imports TensorFlow and makes its first device query (the CUDA probe) with file descriptor 2
sent through a filter process that drops those notices and passes every other line as it
comes. Being a process of its own, the filter still passes what a fatal error in TensorFlow's
import printed when that error kills this one.

Only the stage and command runners call it; importing the package changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present where NVIDIA's kernel driver is loaded
NOTICES = (
    r"All log messages before absl::InitializeLog",
    r"^[IW]\d{4} ",  # Abseil's INFO and WARNING lines
    r"^To enable the following instructions: .*rebuild TensorFlow",
)
NO_GPU = r"failed call to cuInit"  # an error where a driver is, a notice where none is
# TensorFlow imports all of Keras' API, whose scikit-learn wrappers and image-gallery helper import
# these optional packages when they are installed (`try: import ... except ImportError`). The
# pipeline uses neither helper, so they are hidden while Keras loads: in a process started this
# way those two Keras helpers act as if the packages were missing, while the packages
# themselves import as usual, before or after (plot's figures, evaluate's k-NN).
KERAS_OPTIONAL = ("sklearn", "matplotlib")

# The filter: stdin to stdout, line by line, leaving out lines that match argv[1].
FILTER = """\
import re, sys
notice = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not notice.search(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def notice_pattern(gpu_driver: bool) -> str:
    """The lines to leave out: on a machine with a GPU driver, a failed `cuInit` is not one."""
    return "|".join(NOTICES if gpu_driver else (*NOTICES, NO_GPU))


@contextlib.contextmanager
def filtered_stderr(pattern: str) -> Iterator[None]:
    """Send file descriptor 2 through the filter for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    command = [sys.executable, "-c", FILTER, pattern]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=saved) as lines:
        os.dup2(lines.stdin.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            lines.stdin.close()  # the filter reads to the end, writes, exits: `with` waits for it


@contextlib.contextmanager
def hidden(packages: tuple[str, ...]) -> Iterator[None]:
    """Make `import` of those of `packages` not yet imported raise ImportError for the block:
    a None in `sys.modules` does that (Python's import system documents it)."""
    absent = [name for name in packages if name not in sys.modules]
    for name in absent:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in absent:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def start_tensorflow() -> None:
    """Import TensorFlow and probe its devices quietly; a no-op once TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr(notice_pattern(NVIDIA_DRIVER.exists())), hidden(KERAS_OPTIONAL):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe
