#!/usr/bin/env bash
# Runs cargo-lambda (pinned, from PyPI, zig included), installing it into .cache/ on
# first use: `bash scripts/cargo-lambda.sh lambda build …`. Used by `make build` and by
# the test that runs a function under `cargo lambda watch --only-lambda-apis`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SWITCHYARD_CACHE:-$root/.cache}
CARGO_LAMBDA_VERSION=1.9.2
venv="$cache/lambda-venv"
stamp="$venv/.cargo-lambda-version"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$CARGO_LAMBDA_VERSION" ]; then
  echo "cargo-lambda: installing $CARGO_LAMBDA_VERSION (PyPI, zig included)" >&2
  # Two installs racing (tests run in parallel) would corrupt the venv: one at a time.
  mkdir -p "$cache"
  exec 9>"$cache/.lambda-venv.lock"
  flock 9
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$CARGO_LAMBDA_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
    echo "$CARGO_LAMBDA_VERSION" > "$stamp"
  fi
  exec 9>&-
fi
export PATH="$venv/bin:$PATH"
exec cargo "$@"
