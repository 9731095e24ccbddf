"""A green CI run means the real components were tested: in CI a missing one fails its tests."""

from __future__ import annotations

import sys

import pytest

from tests.components import PRETEND_MISSING, components
from tests.helpers import ROOT, run

# A test of each component's that asks for it before any other slow set-up.
NEEDS = {
    "fashion-mnist": "tests/test_data.py::test_official_files_load_with_expected_shapes",
    "postgresql": "tests/test_team.py::test_no_password_reaches_any_store_file_or_console",
    "chromium": "tests/test_compare.py::test_system_metrics_tab_shows_charts",
}


def pytest_without(component: str, *, ci: str):
    """Run the test of `NEEDS` that uses `component`, with it taken as missing and `CI` set to `ci`.

    `-vv`: the summary lines, which hold the messages, in full.
    """
    env = {PRETEND_MISSING: component, "CI": ci}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", "-vv", NEEDS[component]]
    return run(command, ROOT, check=False, env=env)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_a_missing_component_fails_under_ci_naming_it_and_how_to_install_it(name):
    result = pytest_without(name, ci="true")
    component = components()[name]
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    message = f"CI needs every real component. {component.what} is not installed: {component.how}"
    assert message in result.stdout


def test_outside_ci_a_missing_component_is_a_skip_that_says_why():
    result = pytest_without("chromium", ci="")
    component = components()["chromium"]
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert f"{component.what} is not installed: {component.how}" in result.stdout
