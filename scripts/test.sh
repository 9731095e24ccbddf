#!/usr/bin/env bash
# Set up, then run the test suite; extra arguments go to pytest.
# The sweep tests start a real PostgreSQL server on loopback; the comparison tests drive
# Debian's Chromium headless.
SETUP_APT_PACKAGES="postgresql chromium" source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
