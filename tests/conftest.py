"""The fixtures: the real data set, a project reproduced by `dvc repro`, started processes, a browser
and its pages."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import mlflow
import pytest

from pipeline import data
from tests.components import CHROMIUM, require
from tests.helpers import CHROMIUM_ARGS, ROOT, SMALL, make_repo, run, run_env


@pytest.fixture(autouse=True)
def tracking_uri_restored():
    """`mlflow.set_tracking_uri`, which a test calls to use MLflow's fluent API, lasts for the rest
    of the process and writes MLFLOW_TRACKING_URI into os.environ, so a later test's own store and
    the processes it starts would see it. This puts both back after every test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Debian's Fashion-MNIST, which the README's set-up installs."""
    require("fashion-mnist")
    return data.DEBIAN_DIR


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium, driven by Playwright, as a person's browser."""
    require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser):
    """Opens browser pages that record uncaught script errors, which a broken page shows first;
    every page it opened is closed after the test, so none goes on polling its server."""
    opened = []

    def open_page(errors: list[str], **options):
        page = browser.new_page(**options)
        page.on("pageerror", lambda error: errors.append(str(error)))
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests leave screenshots for a person to look at."""
    folder = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, official_dir):
    """The project after `dvc repro`: `reproduced(name, overrides)` copies the project with its
    `params.yaml` sections overridden and runs `dvc repro` there, once per name in the session.

    A name is one test module's repository, or one test's when that test damages it: no test
    reads a repository that another module changes.
    """
    made: dict[str, tuple[dict, Path]] = {}

    def build(name: str, overrides: dict[str, dict] = SMALL) -> Path:
        if name not in made:
            path = make_repo(tmp_path_factory.mktemp(name), overrides)
            run(["dvc", "repro"], path)
            made[name] = (overrides, path)
        assert made[name][0] == overrides, f"repository {name!r} was made with other params"
        return made[name][1]

    return build


@pytest.fixture
def processes():
    """Starts commands as a terminal would, each in a process group of its own; after the test,
    whatever is left of a group is killed, so that no process outlives the test that started it."""
    started = []

    def start(args: list[str], cwd: Path, env: dict[str, str] | None = None, **options) -> subprocess.Popen:
        process = subprocess.Popen(
            args, cwd=cwd, env={**run_env(), **(env or {})}, start_new_session=True, **options
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()  # reaps it and closes its pipes
