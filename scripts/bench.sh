#!/usr/bin/env bash
# The standard benchmark matrix: builds in release mode, starts fresh servers on free loopback
# ports, runs each shape, and prints a Markdown table. When redis-server and redis-benchmark are
# installed (Debian package `redis`), runs the same shapes against Redis and prints the ratios.
#
# Usage: scripts/bench.sh            (about two minutes on 2 cores)
#        QUICK=1 scripts/bench.sh    (smaller counts, for a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${QUICK:-}" == 1 ]]; then
  PIPE_N=1000000; SINGLE_N=10000; MANY_N=50000; STORE_N=1000000; ONE_N=200000; BULK_N=500000
else
  PIPE_N=5000000; SINGLE_N=50000; MANY_N=300000; STORE_N=10000000; ONE_N=1000000; BULK_N=2000000
fi

cargo build --release --quiet
BIN=$PWD/target/release/metrics
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# start_server NAME [ARGS...]: starts `metrics server 0`, sets ADDR and PID once it listens.
start_server() {
  local name=$1; shift
  "$BIN" server 0 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 200); do
    if grep -q '^listening on ' "$TMP/$name.out" 2>/dev/null; then break; fi
    sleep 0.05
  done
  ADDR=$(sed -n 's/^listening on //p' "$TMP/$name.out")
  [[ -n "$ADDR" ]] || { echo "server $name did not start" >&2; exit 1; }
}

stop_server() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# field LINE-PREFIX WORD-INDEX < bench output
field() { awk -v p="$1" -v i="$2" 'index($0, p) == 1 {print $i}'; }

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {printf "%.0f", n / (b - a)}'; }

bench() { "$BIN" bench --addr "$ADDR" "$@"; }

# median3 COMMAND...: runs COMMAND three times (it prints one number) and prints the median,
# since single runs on a shared machine vary by 10-20%.
median3() { for _ in 1 2 3; do "$@"; done | sort -n | sed -n 2p; }

# put_rate NAME BENCH-ARGS...: a fresh server per run, so every run writes new points.
put_rate() {
  local name=$1; shift
  start_server "$name"
  bench "$@" | field throughput: 2
  stop_server
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), Linux $(uname -r)"
echo "metrics $("$BIN" --version | cut -d' ' -f2); client and server on the same machine"
echo

declare -A OURS THEIRS

OURS[pipe]=$(median3 put_rate pipe -c 1 -P 1000 -n "$PIPE_N")

# Pipelined ingestion with the data file, in each fsync mode. The files live under target/,
# on the same disk as the build, not on a tmpfs where syncing would cost nothing.
DATA_DIR=$(mktemp -d -p "$PWD/target" bench-data.XXXXXX)
declare -A DATA
data_rate() { # data_rate MODE: one run on a fresh server and a fresh file
  start_server "data-$1" --data "$DATA_DIR/$1.txt" --fsync "$1"
  bench -c 1 -P 1000 -n "$PIPE_N" | field throughput: 2
  stop_server
  rm -f "$DATA_DIR/$1.txt"
}
for mode in always everysec no; do
  DATA[$mode]=$(median3 data_rate "$mode")
done
rm -rf "$DATA_DIR"

OURS[single]=$(median3 put_rate single -c 1 -P 1 -n "$SINGLE_N")
OURS[many]=$(median3 put_rate many -c 50 -P 1 -n "$MANY_N")

# Memory per point, and get of everything, on STORE_N points over 1000 metrics.
start_server store
before=$(rss_kib "$PID")
bench -c 1 -P 1000 -n "$STORE_N" --keys 1000 >/dev/null
after=$(rss_kib "$PID")
points=$("$BIN" get --addr "$ADDR" '*' | tee "$TMP/dump.txt" | wc -l)
[[ "$points" == "$STORE_N" ]] || { echo "store holds $points of $STORE_N points" >&2; exit 1; }
BYTES_PER_POINT=$(awk -v a="$before" -v b="$after" -v n="$STORE_N" 'BEGIN {printf "%.1f", (b - a) * 1024 / n}')
t0=$(now); "$BIN" get --addr "$ADDR" '*' >/dev/null; t1=$(now)
GET_ALL=$(rate "$STORE_N" "$t0" "$t1")
# Bulk input in time order across metrics, as a live feed or a merged log would be.
head -n "$BULK_N" "$TMP/dump.txt" | sort -s -n -k3,3 >"$TMP/bulk.txt"
rm -f "$TMP/dump.txt"
stop_server

# Get of one metric holding ONE_N points.
start_server one
bench -c 1 -P 1000 -n "$ONE_N" --keys 1 >/dev/null
t0=$(now); "$BIN" get --addr "$ADDR" bench.key0 >/dev/null; t1=$(now)
GET_ONE=$(rate "$ONE_N" "$t0" "$t1")
stop_server

# Bulk load through `metrics put -`.
start_server bulk
t0=$(now); "$BIN" put --addr "$ADDR" - <"$TMP/bulk.txt"; t1=$(now)
BULK=$(rate "$BULK_N" "$t0" "$t1")
stored=$("$BIN" get --addr "$ADDR" '*' | wc -l)
[[ "$stored" == "$BULK_N" ]] || { echo "bulk load stored $stored of $BULK_N lines" >&2; exit 1; }
stop_server

# Put latency while another client repeatedly reads every point of a 1M-point store, against
# the same with a neighbour that only burns CPU: on a VM an idle CPU takes tens of microseconds
# to wake, so both runs keep the CPUs equally busy and differ only in the reader.
start_server during
bench -c 1 -P 1000 -n 1000000 --keys 1000 >/dev/null
busy_run() { # busy_run FLAG COMMAND...: runs COMMAND in a loop while FLAG exists
  local flag=$1; shift
  touch "$flag"
  ( while [[ -e "$flag" ]]; do "$@"; done ) &
}
busy_run "$TMP/spinning" true
SPINNER=$!
quiet_line=$(bench -c 1 -P 1 -n 100000 --keys 1000 | grep '^latency:')
rm -f "$TMP/spinning"; wait "$SPINNER"
read_all() { "$BIN" get --addr "$ADDR" --timeout 60 '*' >/dev/null && echo >>"$TMP/reads"; }
busy_run "$TMP/reading" read_all
READER=$!
busy_line=$(bench -c 1 -P 1 -n 100000 --keys 1000 | grep '^latency:')
rm -f "$TMP/reading"; wait "$READER"
READS=$(wc -l <"$TMP/reads")
stop_server

if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  RPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis_rate() {
    redis-benchmark -h 127.0.0.1 -p "$RPORT" -t set -r 1000 -q "$@" 2>/dev/null | tr '\r' '\n' |
      awk '/requests per second/ {v = $2} END {printf "%.0f\n", v}'
  }
  THEIRS[pipe]=$(median3 redis_rate -c 1 -P 1000 -n "$PIPE_N")
  THEIRS[single]=$(median3 redis_rate -c 1 -n "$SINGLE_N")
  THEIRS[many]=$(median3 redis_rate -c 50 -n "$MANY_N")
fi

ratio() {
  if [[ -n "${THEIRS[$1]:-}" ]]; then
    awk -v a="${OURS[$1]}" -v b="${THEIRS[$1]}" 'BEGIN {printf "%.0f | %.2fx", b, a / b}'
  else
    printf -- "- | -"
  fi
}

echo "Put rates are the median of three runs, each on a fresh server (and a fresh data file)."
echo
echo "| shape | metrics | Redis (SET) | ratio |"
echo "|---|---|---|---|"
echo "| put, pipelined (-P 1000), 1 connection | ${OURS[pipe]} puts/s | $(ratio pipe) |"
echo "| put, unpipelined, 1 connection | ${OURS[single]} puts/s | $(ratio single) |"
echo "| put, unpipelined, 50 connections | ${OURS[many]} puts/s | $(ratio many) |"
echo "| get of one metric with $ONE_N points | $GET_ONE lines/s | - | - |"
echo "| get * of $STORE_N points (1000 metrics) | $GET_ALL lines/s | - | - |"
echo "| bulk \`metrics put -\` of $BULK_N lines | $BULK lines/s | - | - |"
echo "| memory per point at $STORE_N points (RSS growth / points) | $BYTES_PER_POINT bytes | - | - |"
echo
echo "| pipelined put (-P 1000), 1 connection | puts/s | of in-memory |"
echo "|---|---|---|"
echo "| in memory | ${OURS[pipe]} | 100% |"
for mode in everysec always no; do
  echo "| --data, --fsync $mode | ${DATA[$mode]} | $(awk -v a="${DATA[$mode]}" -v b="${OURS[pipe]}" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
done
echo
echo "put latency, unpipelined, on a 1M-point store:"
echo "  beside a CPU-busy neighbour:              ${quiet_line#latency: }"
echo "  during repeated get * ($READS full reads): ${busy_line#latency: }"
