#!/usr/bin/env bash
# Set up, then run the whole pipeline: prepare -> train -> evaluate -> plot.
source "$(dirname "$0")/setup.sh"
dvc repro "$@"
dvc metrics show
