#!/usr/bin/env bash
# A two-minute tour: starts a server with a data file on a free loopback port, stores and reads
# points, bulk-loads a dump, restarts the server to show the data survive, and runs a short
# benchmark. Everything it starts, it stops; everything it writes is in a temporary directory.
#
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=$PWD/target/release/metrics
DIR=$(mktemp -d)
PID=
cleanup() {
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

start() {
  "$BIN" server 0 --data "$DIR/data.txt" >"$DIR/out" 2>>"$DIR/log" &
  PID=$!
  for _ in $(seq 200); do grep -q '^listening on ' "$DIR/out" 2>/dev/null && break; sleep 0.05; done
  export METRICS_ADDR=$(sed -n 's/^listening on //p' "$DIR/out")
  echo "\$ metrics server 0 --data $DIR/data.txt    # listening on $METRICS_ADDR"
}

# show metrics ARGS...: prints the command as a user would type it, then runs it.
show() { echo "\$ metrics ${*:2}"; "$@"; }

start
show "$BIN" put palm.cpu 0.5 1150864247
show "$BIN" put palm.cpu 2.0 1150864248
show "$BIN" put eardrum.cpu 3 1150864250
show "$BIN" get palm.cpu
show "$BIN" get '*'

printf 'disk.used 61.5 1150864247\ndisk.used 62.25 1150864307\nbad line\n' >"$DIR/dump.txt"
echo "\$ metrics put - < dump.txt    # one bad line among three"
"$BIN" put - <"$DIR/dump.txt" || echo "(exit code $?)"

echo "\$ kill -9 $PID    # a crash; then the same file again"
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
start
show "$BIN" get '*'

show "$BIN" bench -c 4 -n 200000 -P 100
echo
echo "server log:"
cat "$DIR/log"
