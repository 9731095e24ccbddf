#!/usr/bin/env bash
# Set up, then run the test suite; extra arguments go to pytest.
# The sweep tests start a real PostgreSQL server on loopback.
SETUP_APT_PACKAGES="postgresql" source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
