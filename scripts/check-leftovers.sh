#!/usr/bin/env bash
# Fails if any server a local cell started is still running. Every server is recorded as
# target/local-cell/pids/<pid> holding its name and /proc start time, and removed when it
# stops; a record whose pid is alive with the same start time is a leak. Leaked servers are
# stopped by that recorded pid (never by name), then the check fails.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
registry=${SWITCHYARD_WORK_DIR:-$root/target/local-cell}/pids
[ -d "$registry" ] || { echo "leftovers: none (no server was started)"; exit 0; }

start_time() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }

leaked=0
for record in "$registry"/*; do
  [ -e "$record" ] || continue
  pid=$(basename "$record")
  name=$(sed -n 1p "$record")
  recorded=$(sed -n 2p "$record")
  if [ -n "$recorded" ] && [ "$(start_time "$pid")" = "$recorded" ]; then
    echo "leftovers: $name (pid $pid) is still running; stopping it" >&2
    kill -TERM "$pid" 2>/dev/null
    leaked=1
  fi
  rm -f "$record"
done
if [ $leaked -ne 0 ]; then
  sleep 2
  exit 1
fi
echo "leftovers: none"
