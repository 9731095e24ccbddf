"""The real components the tests use, and what a test does when one is missing.

In CI (`CI` set to true, as `.ci/run` does) a missing component fails the test, so that a
green run means the real thing was tested; elsewhere the test is skipped. Either way the
message names the component and how to install it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline import data

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, which scripts/test.sh installs
POSTGRESQL = Path("/usr/lib/postgresql")  # Debian's server binaries: <version>/bin/initdb
UV = Path(__file__).resolve().parents[1] / ".uv/bin/uv"  # the uv that scripts/setup.sh installs
# Names listed here are treated as missing, so that a test can show the rule on a machine that has them.
PRETEND_MISSING = "TESTS_PRETEND_MISSING"


class Component(NamedTuple):
    installed: bool
    what: str
    how: str


def components() -> dict[str, Component]:
    """Each real component: whether it is installed, what it is, and how to install it."""
    return {
        "fashion-mnist": Component(
            all((data.DEBIAN_DIR / f"{name}.gz").is_file() for name in data.SHA256),
            f"Fashion-MNIST in {data.DEBIAN_DIR}",
            "apt-get install dataset-fashion-mnist (scripts/setup.sh does, as root)",
        ),
        "postgresql": Component(
            any(POSTGRESQL.glob("*/bin/initdb")),
            f"PostgreSQL's server ({POSTGRESQL}/*/bin/initdb)",
            "apt-get install postgresql (scripts/test.sh does, as root)",
        ),
        "chromium": Component(
            CHROMIUM.is_file(),
            f"Chromium ({CHROMIUM})",
            "apt-get install chromium (scripts/test.sh does, as root)",
        ),
        "uv": Component(
            UV.is_file(),
            f"uv ({UV})",
            "bash scripts/setup.sh installs it, at the version that script names",
        ),
    }


def in_ci() -> bool:
    """Whether this is a CI run, by the `CI` variable CI services set."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(name: str) -> None:
    """Return if component `name` is installed; otherwise fail in CI and skip elsewhere."""
    component = components()[name]
    if component.installed and name not in os.environ.get(PRETEND_MISSING, "").split(","):
        return
    message = f"{component.what} is not installed: {component.how}"
    if in_ci():
        pytest.fail(f"CI needs every real component. {message}", pytrace=False)
    pytest.skip(message)
