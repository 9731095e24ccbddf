"""What a person sees: light commands load no TensorFlow, and TensorFlow's start-up lines stay off stderr."""

from __future__ import annotations

import sys

from tests.conftest import ROOT, run

# TensorFlow's start-up notices: Abseil's, oneDNN's, the CUDA probe's on a machine without a GPU.
NOTICES = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "cuInit", "cpu_feature_guard")


def test_light_commands_import_no_tensorflow():
    loaded = "sorted({'tensorflow', 'keras'} & set(sys.modules))"
    probe = f"import sys, pipeline.compare, pipeline.tune; print({loaded})"
    assert run([sys.executable, "-c", probe], ROOT).stdout.strip() == "[]"
    result = run([sys.executable, "-m", "pipeline.tune", "--print-best"], ROOT)
    assert result.stdout.startswith("-S model.latent_dim=")


def test_importing_tensorflow_through_the_package_is_quiet():
    probe = "import pipeline.model, tensorflow as tf; print(len(tf.config.list_physical_devices('CPU')))"
    result = run([sys.executable, "-c", probe], ROOT, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.stdout.strip() == "1"
    assert [notice for notice in NOTICES if notice in result.stderr] == []


def test_other_stderr_lines_pass_through_the_quiet_import():
    probe = (
        "import os, pipeline\n"
        "from pipeline.quiet import _filtered_stderr\n"
        "with _filtered_stderr():\n"
        "    os.write(2, b'I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on\\n')\n"
        "    os.write(2, b'a real problem\\n')\n"
    )
    assert run([sys.executable, "-c", probe], ROOT).stderr == "a real problem\n"
