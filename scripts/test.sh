#!/usr/bin/env bash
# Set up, then run the test suite; extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
