"""TensorFlow's start-up lines kept off the console, whichever module imports TensorFlow first.

TensorFlow 2.21 logs its start-up notices (oneDNN, CPU features, missing CUDA drivers, the
failed `cuInit` on a machine without a GPU) through Abseil before Abseil's logging is set up,
and such lines reach stderr whatever `TF_CPP_MIN_LOG_LEVEL` says. So `install()` sets that
level, and makes the first `import tensorflow` (Keras' too) run with stderr captured at the
file-descriptor level, together with the first device query, which is what probes CUDA.
Captured lines that are not such notices are passed on to stderr.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOTICE = re.compile(
    r"All log messages before absl::InitializeLog|^[IW]\d{4} |failed call to cuInit"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
)


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Capture fd 2 for the block; pass on every line that is not a start-up notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not NOTICE.search(line):
                    sys.stderr.write(line)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _filtered_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe, inside the capture


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders locate TensorFlow
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet TensorFlow's start-up, if it is not imported yet; a no-op otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
