"""What a run ran on: the code's commit, the locked packages, and the machine, as run tags."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from pipeline.params import read_yaml

LOCK = Path("uv.lock")
PREFIX = "env."  # of the tags `environment_tags` makes
# The packages whose versions can change a run's numbers, or how it was recorded.
PACKAGES = ("tensorflow", "jax", "keras", "mlflow", "dvc", "optuna", "numpy")
# Instruction sets that decide which kernels TensorFlow's oneDNN runs, and so the last digits.
ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info() -> dict[str, str]:
    """The CPU's model name and which instruction sets of `ISA` it has (Linux's /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "isa": " ".join(f for f in ISA if f in flags) or "unknown"}


def gpu_names() -> list[str]:
    """NVIDIA GPUs through NVML (nvidia-ml-py, the `gpu` extra, as MLflow's GPU monitor uses); [] if none."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver: no GPU to name
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


def keras_backend() -> str:
    """The backend Keras runs on in this process, or will start on (`KERAS_BACKEND`, as
    `pipeline.backend.start` sets it from `base.backend`)."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def visible_gpus() -> list[str]:
    """The CUDA ids of the NVIDIA GPUs this process may use: of those NVML finds (none without
    the `gpu` or `jax-cuda` extra, or without a driver), the ones CUDA_VISIBLE_DEVICES names
    where it is set, else all."""
    return _visible_of(len(gpu_names()))


def _visible_of(found: int) -> list[str]:
    """`visible_gpus` where NVML found `found` GPUs."""
    if not found:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(found)]
    return [device.strip() for device in visible.split(",") if device.strip() not in ("", "-1")]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def environment_tags(lock: Path = LOCK) -> dict[str, str]:
    """`env.*` tags: Python and package versions, the lock file's SHA-256, and the machine."""
    import psutil

    tags = {
        "python": platform.python_version(),
        "keras_backend": keras_backend(),
    }
    for package in PACKAGES:
        try:
            tags[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[package] = "not installed"
    cpu = cpu_info()
    names = gpu_names()
    # The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES gives (in PCI order, which
    # `backend.start` sets); the machine's others are not its.
    gpus = [names[int(i)] if i.isdigit() and int(i) < len(names) else i for i in _visible_of(len(names))]
    tags.update(
        {
            "lock_sha256": file_sha256(lock) if lock.is_file() else f"no {lock}",
            "cpu": cpu["model"],
            "cpu_isa": cpu["isa"],
            "cores": str(os.cpu_count()),
            "cores_usable": str(len(os.sched_getaffinity(0))),
            "memory_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
            "os": platform.platform(),
            "gpu": ", ".join(gpus) if gpus else "none",
        }
    )
    return {f"{PREFIX}{key}": value for key, value in tags.items()}


def dvc_paths(root: Path) -> tuple[set[str], set[str]]:
    """What the stages of `root/dvc.yaml` and `root/*/dvc.yaml` read and write, as paths relative
    to `root`: (inputs, outputs). Inputs are the dvc.yaml files and every stage's deps and
    params files; outputs are its outs, metrics and plots."""
    root = root.resolve()
    inputs, outputs = set(), set()
    for dvc_yaml in [root / "dvc.yaml", *root.glob("*/dvc.yaml")]:
        if not dvc_yaml.is_file():
            continue
        inputs.add(dvc_yaml.relative_to(root).as_posix())
        for stage in (read_yaml(dvc_yaml) or {}).get("stages", {}).values():
            wdir = dvc_yaml.parent / stage.get("wdir", ".")

            def relative(name: str, wdir: Path = wdir) -> str:
                return Path(os.path.relpath(os.path.normpath(wdir / name), root)).as_posix()

            inputs.update(relative(entry) for entry in stage.get("deps", []))
            for entry in stage.get("params", []):  # a key of params.yaml, or {file: [keys]}
                inputs.add(relative(next(iter(entry)) if isinstance(entry, dict) else "params.yaml"))
            for section in ("outs", "metrics", "plots"):
                for entry in stage.get(section, []):
                    outputs.add(relative(entry if isinstance(entry, str) else next(iter(entry))))
    return inputs, outputs


def _under(path: str, places: set[str]) -> bool:
    return any(path == place or path.startswith(f"{place}/") for place in places)


def git_state(root: Path) -> dict[str, str]:
    """The commit checked out, and whether what the stages read differs from it.

    `git.dirty` counts changes to the stages' inputs (`dvc_paths`): their modules, params and
    `uv.lock`. Not to other files (a README, the tests), nor to those the pipeline writes itself
    (`dvc.lock`, metrics, plots), which `dvc repro` on a fresh clone deletes and rewrites before
    the run is tagged.
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "-z", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return {}
    changed, entries = [], iter(status.split("\0"))
    for entry in entries:  # -z: "XY path", a rename's or copy's source path an entry of its own
        if entry:
            changed.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)
    inputs, outputs = dvc_paths(root)
    dirty = any(_under(path, inputs) and not _under(path, outputs) for path in changed)
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}
