# Sourced by repro.sh and test.sh: everything a fresh Debian/Ubuntu machine needs.
# Safe to run again: each step is skipped when already done. Any install that fails stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The uv that installs uv.lock; upgrading it is a change to this line.
UV_VERSION=0.13.9

setup_error() {
  echo "setup: error: $*" >&2
  exit 1
}

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing+=(dataset-fashion-mnist)
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  command -v git >/dev/null || missing+=(git)
  # Extra Debian packages a caller asks for, e.g. test.sh's PostgreSQL server.
  for package in ${SETUP_APT_PACKAGES:-}; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq || setup_error "apt-get update failed; Debian's package index is needed for ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || setup_error "apt-get install ${missing[*]} failed; install them by hand and run this again"
  fi
fi

# uv lives in a venv of its own: `uv sync` keeps .venv to exactly what uv.lock holds.
if [ "$(.uv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "setup: installing uv $UV_VERSION into .uv"
  rm -rf .uv
  python3 -m venv .uv || setup_error "python3 -m venv failed (Debian: apt-get install python3-venv)"
  .uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" \
    || setup_error "pip install uv==$UV_VERSION failed; is PyPI reachable?"
fi
# Exactly the locked versions, the dev extra's included; --locked refuses a uv.lock that no
# longer matches pyproject.toml (run `.uv/bin/uv lock` to update it).
export UV_PYTHON_DOWNLOADS=never
# --seed: pip in .venv too (outside the lock, and kept by sync), so that a logged MLflow model's
# environment names its version.
[ -x .venv/bin/python ] || .uv/bin/uv venv --seed --python python3 --quiet .venv \
  || setup_error "uv venv failed (see above)"
extras=(--extra dev)
for extra in ${SETUP_EXTRAS:-}; do  # more extras of pyproject.toml, e.g. SETUP_EXTRAS=gpu
  extras+=(--extra "$extra")
done
# --compile-bytecode: every installed module compiled once, here, rather than at each import
# where Python may not write bytecode (PYTHONDONTWRITEBYTECODE set, or site-packages read-only),
# which made each stage's start several times slower (docs/results.md, a stage's start). uv
# skips what is compiled already.
.uv/bin/uv sync --locked --compile-bytecode "${extras[@]}" --python python3 --quiet \
  || setup_error "uv sync --locked failed (see above)"
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
