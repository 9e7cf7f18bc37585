#!/usr/bin/env bash
# Validates every state machine definition with asl-validator (npm, pinned), installed
# into .cache/ on first use. Run through `make lint`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SWITCHYARD_CACHE:-$root/.cache}
ASL_VALIDATOR_VERSION=4.0.0
prefix="$cache/asl-validator-$ASL_VALIDATOR_VERSION"
bin="$prefix/node_modules/.bin/asl-validator"

if [ ! -x "$bin" ]; then
  echo "asl-validate: installing asl-validator $ASL_VALIDATOR_VERSION" >&2
  mkdir -p "$prefix"
  npm install --silent --no-audit --no-fund --prefix "$prefix" "asl-validator@$ASL_VALIDATOR_VERSION" >/dev/null
fi

status=0
for definition in "$root"/state-machine/*.asl.json; do
  if out=$("$bin" --json-path "$definition" 2>&1); then
    echo "asl-validate: ${definition#"$root"/}: valid"
  else
    echo "asl-validate: ${definition#"$root"/}: INVALID" >&2
    echo "$out" >&2
    status=1
  fi
done
exit $status
