"""What a person sees: light commands load no TensorFlow, and TensorFlow's start-up lines stay off stderr."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT, run

# TensorFlow's start-up notices: Abseil's, oneDNN's, the CUDA probe's on a machine without a GPU.
NOTICES = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "cuInit", "cpu_feature_guard")


def test_light_commands_import_no_tensorflow():
    loaded = "sorted({'tensorflow', 'keras'} & set(sys.modules))"
    probe = f"import sys, pipeline.compare, pipeline.tune; print({loaded})"
    assert run([sys.executable, "-c", probe], ROOT).stdout.strip() == "[]"
    result = run([sys.executable, "-m", "pipeline.tune", "--print-best"], ROOT)
    assert result.stdout.startswith("-S model.") and " -S model.latent_dim=" in result.stdout
    alone = run([sys.executable, "-m", "pipeline.tune", "--rank", "1"], ROOT, check=False)
    assert alone.returncode != 0 and "--rank: only with --print-best" in alone.stderr


def test_a_runner_starts_tensorflow_quietly_and_importing_the_package_does_not():
    count = "print(len(tf.config.list_physical_devices('CPU')))"
    quiet = (
        f"from pipeline.quiet import start_tensorflow; start_tensorflow(); import tensorflow as tf; {count}"
    )
    result = run([sys.executable, "-c", quiet], ROOT, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.stdout.strip() == "1"
    assert [notice for notice in NOTICES if notice in result.stderr] == []
    plain = f"import pipeline.model, tensorflow as tf; {count}"  # no runner: TensorFlow's own console
    result = run([sys.executable, "-c", plain], ROOT, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.stdout.strip() == "1"
    assert "oneDNN custom operations" in result.stderr


def test_keras_loads_without_its_optional_packages_which_then_import_as_usual():
    probe = (
        "import sys\n"
        "from pipeline.quiet import start_tensorflow\n"
        "start_tensorflow()\n"
        "print(sorted({'sklearn', 'matplotlib'} & set(sys.modules)))\n"  # hidden: nothing left behind
        "import sklearn.decomposition, matplotlib.pyplot\n"
        "print(sklearn.decomposition.PCA.__name__, matplotlib.pyplot.__name__)\n"
    )
    assert run([sys.executable, "-c", probe], ROOT).stdout.split("\n")[:2] == ["[]", "PCA matplotlib.pyplot"]


def filtered(lines: list[bytes], gpu_driver: bool) -> str:
    """What reaches stderr when `lines` are written to fd 2 inside the filter."""
    probe = (
        "import os\n"
        "from pipeline.quiet import filtered_stderr, notice_pattern\n"
        f"with filtered_stderr(notice_pattern(gpu_driver={gpu_driver})):\n"
        f"    for line in {lines!r}:\n"
        "        os.write(2, line)\n"
    )
    return run([sys.executable, "-c", probe], ROOT).stderr


NOTICE = b"I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on\n"
FATAL = b"F0000 00:00:1.0 cpu_feature_guard.cc:1] The TensorFlow library was compiled to use AVX\n"
NO_CUDA = b"E0000 00:00:1.0 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"


def test_other_stderr_lines_pass_through_the_filter():
    assert filtered([NOTICE, b"a real problem\n", NO_CUDA], gpu_driver=False) == "a real problem\n"


def test_a_cuda_error_passes_where_there_is_a_gpu_driver():
    assert filtered([NOTICE, NO_CUDA], gpu_driver=True) == NO_CUDA.decode()


def test_a_fatal_error_while_tensorflow_starts_reaches_the_console(tmp_path):
    # A TensorFlow that dies in its import, as a broken install or a bad CPU flag makes it:
    # Abseil's FATAL line, then abort(). Nothing runs after it in the process that printed it.
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        f"import os\nos.write(2, {NOTICE!r})\nos.write(2, {FATAL!r})\nos.abort()\n"
    )
    probe = "from pipeline.quiet import start_tensorflow; start_tensorflow()"
    result = run([sys.executable, "-c", probe], ROOT, check=False, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == -6  # SIGABRT
    assert result.stderr == FATAL.decode()  # the notice before it left out


COMMANDS = ("prepare", "train", "evaluate", "plot", "compare", "tune", "retag")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_and_refuses_an_argument_it_does_not_take(command, tmp_path):
    # From an empty folder: neither answer may start work or write anything.
    helped = run(
        [sys.executable, "-m", f"pipeline.{command}", "--help"], tmp_path, env={"PYTHONPATH": str(ROOT)}
    )
    assert helped.stdout.startswith(f"usage: python -m pipeline.{command}")
    description = (ROOT / "pipeline" / f"{command}.py").read_text().split('"""')[1].split("\n")[0]
    assert " ".join(description.split()[:4]) in " ".join(helped.stdout.split())
    refused = run([sys.executable, "-m", f"pipeline.{command}", "--bogus"], tmp_path, check=False,
                  env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert refused.returncode == 2 and "unrecognized arguments: --bogus" in refused.stderr
    assert list(tmp_path.iterdir()) == []
