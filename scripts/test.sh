#!/usr/bin/env bash
# Set up, then run the test suite; extra arguments go to pytest.
# The sweep tests start a real PostgreSQL server on loopback; the comparison tests drive
# Debian's Chromium headless. The jax extra: the tests run the model on Keras' JAX backend too.
SETUP_EXTRAS="jax ${SETUP_EXTRAS:-}" SETUP_APT_PACKAGES="postgresql chromium" source "$(dirname "$0")/setup.sh"
# One worker per core, at most four (pytest-xdist): much of a test's time is a stage's
# single-threaded start or a wait on a server, which the other worker fills. Tests that share a
# module's project carry one xdist_group and run in one worker. `-n 0` runs them in this process.
python -m pytest --numprocesses auto --maxprocesses 4 --dist loadgroup "$@"
