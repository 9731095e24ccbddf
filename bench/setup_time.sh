#!/usr/bin/env bash
# Time the set-up of a fresh clone: `source scripts/setup.sh` at each revision given (default
# HEAD), with an empty package cache (cold), then the cache the cold run filled (warm), then
# again with everything in place. Rounds interleave the revisions. The Debian packages are
# taken as installed (their time is the same either way).
#   bash bench/setup_time.sh [--rounds N] [REVISION ...]     e.g. adbcd81 HEAD
set -euo pipefail
rounds=2
if [ "${1:-}" = "--rounds" ]; then rounds=$2; shift 2; fi
revisions=("${@:-HEAD}")
project=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

timed() {  # seconds the set-up takes in folder $1
  local start end
  start=$(date +%s.%N)
  (cd "$1" && bash -c 'source scripts/setup.sh' >"$1.log" 2>&1) || { echo "set-up failed: $1.log" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

echo "revision round cold_s warm_s again_s"
for round in $(seq "$rounds"); do
  for revision in "${revisions[@]}"; do
    commit=$(git -C "$project" rev-parse --short "$revision")
    export PIP_CACHE_DIR="$scratch/cache-$round-$commit/pip" UV_CACHE_DIR="$scratch/cache-$round-$commit/uv"
    times=()
    for run in cold warm; do
      clone="$scratch/clone-$round-$commit-$run"
      git clone -q "$project" "$clone" && git -C "$clone" checkout -q "$commit"
      times+=("$(timed "$clone")")
    done
    times+=("$(timed "$clone")")  # the warm clone again: everything in place
    rm -rf "$scratch/clone-$round-$commit-"* "$scratch/cache-$round-$commit"
    printf '%s %s %.1f %.1f %.2f\n' "$commit" "$round" "${times[@]}"
  done
done
