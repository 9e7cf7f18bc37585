#!/usr/bin/env bash
# The whole suite: unit tests, then the local-cell tests (real PostgreSQL, PgBouncer and
# moto), then a check that no server the run started is still alive, pass or fail.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Each local-cell test starts a whole cell; two at a time fit the 2-core machine.
threads=${TEST_THREADS:-2}
status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --test-threads "$threads" --no-fail-fast || status=$?
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads "$threads" || status=$?
fi
# The version matrix: the default run above is 14 → 17; the end-to-end flows run again
# for the other supported pairs.
for pair in "15 17" "16 18" "14 16"; do
  set -- $pair
  echo "== flows with blue PG $1, green PG $2"
  if command -v cargo-nextest >/dev/null 2>&1; then
    # The workspace's build, filtered: `-p switchyard-flows` alone would unify other
    # features and compile the AWS SDK crates again (five minutes on two cores).
    BLUE_PG=$1 GREEN_PG=$2 cargo nextest run --workspace --locked -E 'package(switchyard-flows)' --test-threads "$threads" --no-fail-fast || status=$?
  else
    BLUE_PG=$1 GREEN_PG=$2 cargo test --locked -p switchyard-flows --no-fail-fast -- --test-threads "$threads" || status=$?
  fi
done
bash scripts/check-leftovers.sh || status=1
exit $status
