#!/usr/bin/env bash
# The standard benchmark matrix: builds in release mode, starts a fresh server on a free loopback
# port for each measurement, runs each shape, and prints Markdown tables. When redis-server and
# redis-benchmark are installed (Debian package `redis`), runs the same put shapes against Redis
# and prints the ratios.
#
# Usage: scripts/bench.sh                                  (about five minutes on 2 idle cores)
#        QUICK=1 scripts/bench.sh                          (smaller counts, about three minutes)
#        BEFORE=/path/to/old/metrics scripts/bench.sh      (adds a "before" column: the shapes
#                                                           the old binary supports, same run)
#
# Besides the put/get matrix it reports memory per point on the data set of scripts/gen_data.py
# (realistic, counters, random; generated once and kept in target/bench-gen/), the total put rate
# of 1 to 8 connections on disjoint and on shared series, the put latency of an unpipelined probe
# beside get *, a retention sweep and the creation of new names, narrow range queries against a
# full get, and the put rate with --forward to a local discarding sink (scripts/sink.py).
# Only the command line and the wire protocol are used, never the store's internals.
# Progress goes to stderr when it is a terminal (or VERBOSE=1, with a timestamp); tables to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${QUICK:-}" == 1 ]]; then
  PIPE_N=1000000; SINGLE_N=10000; MANY_N=50000; STORE_N=1000000; ONE_N=200000; BULK_N=500000
  GEN_N=1000000; CONC_N=1000000; CONC_ROUNDS=3; LAT_KEYS=200000; NAMES_N=200000; SWEEP_WINDOW=30
  RANGE_N=200000; RANGE_Q=20000
else
  PIPE_N=5000000; SINGLE_N=50000; MANY_N=300000; STORE_N=10000000; ONE_N=1000000; BULK_N=2000000
  GEN_N=10000000; CONC_N=2000000; CONC_ROUNDS=5; LAT_KEYS=2000000; NAMES_N=2000000; SWEEP_WINDOW=150
  RANGE_N=2000000; RANGE_Q=20000
fi
GEN_SERIES=1000      # series in each gen_data.py set
LAT_N=$((2 * LAT_KEYS)) # points in the latency stores: two per metric
PROBE_N=100000       # requests of the unpipelined latency probe
SWEEP_EVERY=$((SWEEP_WINDOW / 10)) # the servers sweep every window / 10 (at least 1 s)
RANGE_SPAN=100       # points per narrow range query
FULL_GETS=5          # full gets of the range series

cargo build --release --quiet
TMP=$(mktemp -d)
# Background processes, in a file too: servers started inside $(...) or a pipeline (median3) are
# children of a subshell whose variables the cleanup never sees.
PIDS=()
track() { PIDS+=("$1"); echo "$1" >>"$TMP/pids"; }
cleanup() {
  local pid
  for pid in "${PIDS[@]}" $(cat "$TMP/pids" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Copies, so that a rebuild by someone else during the run cannot change the binary under test.
declare -A BINS
cp target/release/metrics "$TMP/metrics-after"
BINS[after]=$TMP/metrics-after
SIDES=(after)
if [[ -n "${BEFORE:-}" ]]; then
  [[ -x "$BEFORE" ]] || { echo "BEFORE=$BEFORE is not an executable" >&2; exit 2; }
  cp "$BEFORE" "$TMP/metrics-before"
  BINS[before]=$TMP/metrics-before
  SIDES=(before after)
fi
# use SIDE: the binary that servers and clients run from now on. The load generator (`metrics
# bench`) is the after binary's for both sides: one instrument, so that a cheaper generator is
# not counted as a faster server. `get` and `put -` are each side's own: those are what users run.
use() { SIDE=$1; BIN=${BINS[$1]}; }
use after

progress() { if [[ -t 2 || -n "${VERBOSE:-}" ]]; then echo "bench: $(date +%T) $*" >&2; fi; }

# wait_listening FILE PID: waits until FILE has a "listening on ADDR" line and prints ADDR; gives
# up when PID exits or after 30 s (a loaded machine can be slow to start a process).
wait_listening() {
  for _ in $(seq 600); do
    if grep -q '^listening on ' "$1" 2>/dev/null || ! kill -0 "$2" 2>/dev/null; then break; fi
    sleep 0.05
  done
  sed -n 's/^listening on //p' "$1"
}

# start_server NAME [ARGS...]: starts `metrics server 0`, sets ADDR and PID once it listens, and
# LOG to its stderr file. Each server gets files of its own.
start_server() {
  local name=$1 base; shift
  base=$(mktemp "$TMP/$name.XXXXXX")
  LOG=$base.err
  "$BIN" server 0 "$@" >"$base.out" 2>"$LOG" &
  PID=$!
  track "$PID"
  ADDR=$(wait_listening "$base.out" "$PID")
  [[ -n "$ADDR" ]] || { echo "server $name did not start" >&2; cat "$LOG" >&2; kill "$PID"; exit 1; }
}

# untrack PID: after it has been waited for, so that the cleanup cannot hit a reused PID.
untrack() { sed -i "/^$1\$/d" "$TMP/pids"; }
stop_server() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; untrack "$PID"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# settle PID: waits until the server has used no more than 20 ms of CPU in a second (at most
# 30 s), so that memory is read after any background work that follows a load (a store may
# reorganise recently written series), not in the middle of it.
settle() {
  local before after
  before=$(awk '{print $14 + $15}' "/proc/$1/stat")
  for _ in $(seq 30); do
    sleep 1
    after=$(awk '{print $14 + $15}' "/proc/$1/stat")
    (( after - before <= 2 * $(getconf CLK_TCK) / 100 )) && break
    before=$after
  done
}

# stat_value NAME: one figure of the server's `stats` reply (empty when it has no `stats`).
stat_value() {
  printf 'stats\n' | python3 scripts/pipeline.py --addr "$ADDR" --print 2>/dev/null |
    awk -v n="$1" '$1 == n {print $2}' || true
}

# field LINE-PREFIX WORD-INDEX < bench output
field() { awk -v p="$1" -v i="$2" 'index($0, p) == 1 {print $i}'; }

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {printf "%.0f", n / (b - a)}'; }
# sleep_until EPOCH-SECONDS
sleep_until() { sleep "$(awk -v t="$1" -v n="$(now)" 'BEGIN {d = t - n; printf "%.3f", (d > 0 ? d : 0)}')"; }

bench() { "${BINS[after]}" bench --addr "$ADDR" "$@"; }

# median3 COMMAND...: runs COMMAND three times (it prints one line that starts with a number) and
# prints the median line, since single runs on a shared machine vary by 10-20%.
median3() { for _ in 1 2 3; do "$@"; done | sort -n | sed -n 2p; }

# put_rate NAME BENCH-ARGS...: a fresh server per run, so every run writes new points.
put_rate() {
  local name=$1; shift
  start_server "$name"
  bench "$@" | field throughput: 2
  stop_server
}

# pct A B: A as a percentage of B, or "-" when either is missing.
pct() {
  if [[ "$1" =~ ^[0-9.]+$ && "$2" =~ ^[0-9.]+$ && "$2" != 0 ]]; then
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f%%", 100 * a / b}'
  else
    printf -- "-"
  fi
}
# cell ARRAY KEY: the value, or "-" when it was not measured.
cell() { local -n arr=$1; printf '%s' "${arr[$2]:--}"; }
# before_after LABEL ARRAY KEY [UNIT]: a table row with before, after and after as % of before.
before_after() {
  local label=$1 arr=$2 key=$3 unit=${4:-}
  local b a; b=$(cell "$arr" "before,$key"); a=$(cell "$arr" "after,$key")
  echo "| $label | $b$([[ $b != - ]] && printf '%s' "$unit") | $a$([[ $a != - ]] && printf '%s' "$unit") | $(pct "$a" "$b") |"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), Linux $(uname -r)"
echo "after: metrics $("${BINS[after]}" --version | cut -d' ' -f2) (this tree$(git rev-parse --short HEAD 2>/dev/null | sed 's/^/, HEAD /')$(git status --porcelain 2>/dev/null | grep -q . && echo ' with changes'))"
if [[ -n "${BINS[before]:-}" ]]; then
  echo "before: metrics $("${BINS[before]}" --version | cut -d' ' -f2) ($BEFORE)"
fi
echo "client and server on the same machine; every measurement on a fresh server${QUICK:+; QUICK=1 sizes}"
echo

declare -A OURS THEIRS PIPE BPP GET_ALL GET_ONE

# ---- Put rates, get rates and memory per point, before and after (issues 8 and 10) ----
# The sides take turns run by run, so that a machine whose speed drifts (other load on a shared
# VM) weighs on both alike; each figure is the median of its runs.
median() { sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'; }
declare -A RUNS
for run in 1 2 3 4 5; do
  for side in "${SIDES[@]}"; do
    use "$side"
    progress "$side: pipelined put rate, run $run"
    RUNS[$side,pipe]+="$(put_rate pipe -c 1 -P 1000 -n "$PIPE_N") "
  done
done
for side in "${SIDES[@]}"; do
  PIPE[$side,rate]=$(printf '%s\n' ${RUNS[$side,pipe]} | median)
done

# Memory per point and get of everything on STORE_N points over 1000 metrics, and get of one
# metric holding ONE_N points: each side's servers are loaded, then the gets take turns.
declare -A STORE_ADDR STORE_PID ONE_ADDR ONE_PID
for side in "${SIDES[@]}"; do
  use "$side"
  progress "$side: $STORE_N points over 1000 metrics: memory"
  start_server "store-$side"
  STORE_ADDR[$side]=$ADDR STORE_PID[$side]=$PID
  rss0=$(rss_kib "$PID")
  bench -c 1 -P 1000 -n "$STORE_N" --keys 1000 >/dev/null
  settle "$PID"
  rss1=$(rss_kib "$PID")
  if [[ "$side" == after ]]; then
    points=$("$BIN" get --addr "$ADDR" --timeout 60 '*' | tee "$TMP/dump.txt" | wc -l)
  else
    points=$("$BIN" get --addr "$ADDR" --timeout 60 '*' | wc -l)
  fi
  [[ "$points" == "$STORE_N" ]] || { echo "$side: store holds $points of $STORE_N points" >&2; exit 1; }
  BPP[$side,bench]=$(awk -v a="$rss0" -v b="$rss1" -v n="$STORE_N" 'BEGIN {printf "%.1f", (b - a) * 1024 / n}')
  start_server "one-$side"
  ONE_ADDR[$side]=$ADDR ONE_PID[$side]=$PID
  bench -c 1 -P 1000 -n "$ONE_N" --keys 1 >/dev/null
done
for run in 1 2 3 4 5; do
  for side in "${SIDES[@]}"; do
    use "$side"
    progress "$side: get * and get of one metric, run $run"
    t0=$(now); "$BIN" get --addr "${STORE_ADDR[$side]}" --timeout 60 '*' >/dev/null; t1=$(now)
    RUNS[$side,get_all]+="$(rate "$STORE_N" "$t0" "$t1") "
    t0=$(now); "$BIN" get --addr "${ONE_ADDR[$side]}" --timeout 60 bench.key0 >/dev/null; t1=$(now)
    RUNS[$side,get_one]+="$(rate "$ONE_N" "$t0" "$t1") "
  done
done
for side in "${SIDES[@]}"; do
  GET_ALL[$side,rate]=$(printf '%s\n' ${RUNS[$side,get_all]} | median)
  GET_ONE[$side,rate]=$(printf '%s\n' ${RUNS[$side,get_one]} | median)
  for PID in "${STORE_PID[$side]}" "${ONE_PID[$side]}"; do stop_server; done
done
use after
OURS[pipe]=${PIPE[after,rate]}

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
progress "after: --data in each fsync mode"
for mode in always everysec no; do
  DATA[$mode]=$(median3 data_rate "$mode")
done

progress "after: unpipelined put rates"
OURS[single]=$(median3 put_rate single -c 1 -P 1 -n "$SINGLE_N")
OURS[many]=$(median3 put_rate many -c 50 -P 1 -n "$MANY_N")

# Bulk input in time order across metrics, as a live feed or a merged log would be.
head -n "$BULK_N" "$TMP/dump.txt" | sort -s -n -k3,3 >"$TMP/bulk.txt"
rm -f "$TMP/dump.txt"

# Bulk load through `metrics put -`.
progress "after: bulk put -"
start_server bulk
t0=$(now); "$BIN" put --addr "$ADDR" - <"$TMP/bulk.txt"; t1=$(now)
BULK=$(rate "$BULK_N" "$t0" "$t1")
stored=$("$BIN" get --addr "$ADDR" '*' | wc -l)
[[ "$stored" == "$BULK_N" ]] || { echo "bulk load stored $stored of $BULK_N lines" >&2; exit 1; }
stop_server
rm -f "$TMP/bulk.txt"

# ---- Memory per point on the generated data set (issue 10) ----
# gen_data.py is deterministic, so each set is generated once per version of the script and kept
# in target/bench-gen/ (files of older versions are removed); up to one generator per core.
GEN_DIR=$PWD/target/bench-gen
mkdir -p "$GEN_DIR"
GEN_HASH=$(sha256sum scripts/gen_data.py | cut -c1-12)
KINDS=(realistic counters random)
gen_file() { echo "$GEN_DIR/$1-$GEN_SERIES-$GEN_N-$GEN_HASH.txt"; }
for f in "$GEN_DIR"/*.txt; do # sets of older versions of gen_data.py
  [[ -e "$f" && "$f" != *"-$GEN_HASH.txt" ]] && rm -f "$f"
done
for f in "$GEN_DIR"/*.txt.tmp-*; do # left by an interrupted run whose shell is gone
  [[ -e "$f" ]] && ! kill -0 "${f##*.tmp-}" 2>/dev/null && rm -f "$f"
done
gen_jobs=()
for kind in "${KINDS[@]}"; do
  out=$(gen_file "$kind")
  [[ -s "$out" ]] && continue
  progress "generating $kind data ($GEN_N points over $GEN_SERIES series; kept for later runs)"
  { python3 scripts/gen_data.py --kind "$kind" --series "$GEN_SERIES" --points "$GEN_N" \
      >"$out.tmp-$$" && mv "$out.tmp-$$" "$out" || rm -f "$out.tmp-$$"; } &
  gen_jobs+=("$!")
  track "$!"
done
for job in "${gen_jobs[@]+"${gen_jobs[@]}"}"; do wait "$job"; done
for kind in "${KINDS[@]}"; do
  [[ -s "$(gen_file "$kind")" ]] || { echo "scripts/gen_data.py --kind $kind failed" >&2; exit 1; }
done

for kind in "${KINDS[@]}"; do
  file=$(gen_file "$kind")
  lines=$(wc -l <"$file")
  for side in "${SIDES[@]}"; do
    use "$side"
    progress "$side: memory per point, $kind data"
    start_server "gen-$kind-$side"
    rss0=$(rss_kib "$PID")
    "$BIN" put --addr "$ADDR" - <"$file"
    # Once the load's last blocks are encoded (within a tick), before quiet series are merged
    # (two seconds after their last put).
    sleep 1
    rss_load=$(rss_kib "$PID")
    BPP[$side,$kind-load]=$(awk -v a="$rss0" -v b="$rss_load" -v n="$lines" 'BEGIN {printf "%.2f", (b - a) * 1024 / n}')
    settle "$PID"
    rss1=$(rss_kib "$PID")
    BPP[$side,$kind]=$(awk -v a="$rss0" -v b="$rss1" -v n="$lines" 'BEGIN {printf "%.2f", (b - a) * 1024 / n}')
    accounted=$(stat_value metrics.memory_bytes)
    if [[ -n "$accounted" ]]; then
      BPP[$side,$kind-accounted]=$(awk -v a="$accounted" -v n="$lines" 'BEGIN {printf "%.2f", a / n}')
    fi
    stop_server
  done
done

# ---- Total put rate of several connections (issue 10) ----
# bench gives connection c the requests c, c + C, c + 2C, ... and request i goes to key i % keys,
# so with --keys 1000 (a multiple of 2, 4, 8) the connections write disjoint series, and with
# --keys 999 every series gets points from every connection, interleaved in time. Each column
# is compared with one connection writing the same keys: the values differ too (with 1000 keys
# each series gets one value over and over, with 999 a value that changes every point), and
# so does what they cost to compress.
# The eight shapes (and the two sides) take turns, CONC_ROUNDS rounds, so that a neighbour's
# load falls on all of them alike; a cell is the median of its rounds' rates, and its ratio the
# median of the rounds' ratios to one connection in the same round (CONC[...,spread]: their range).
declare -A CONC
for round in $(seq "$CONC_ROUNDS"); do
  for side in "${SIDES[@]}"; do
    use "$side"
    progress "$side: 1 to 8 connections, round $round of $CONC_ROUNDS"
    for c in 1 2 4 8; do
      for keys in 1000 999; do
        put_rate "conc-$side" -c "$c" -P 1000 -n "$CONC_N" --keys "$keys" >>"$TMP/conc.$side.$c.$keys"
      done
    done
  done
done
for side in "${SIDES[@]}"; do
  for c in 1 2 4 8; do
    for keys in 1000 999; do
      CONC[$side,$c,$keys]=$(median <"$TMP/conc.$side.$c.$keys")
      read -r "CONC[$side,$c,$keys,ratio]" "CONC[$side,$c,$keys,spread]" < <(
        paste -d ' ' "$TMP/conc.$side.1.$keys" "$TMP/conc.$side.$c.$keys" |
          awk '$1 > 0 && $2 ~ /^[0-9.]+$/ {print 100 * $2 / $1}' | sort -n |
          awk '{r[NR] = $1} END {if (NR) printf "%.0f%% %.0f-%.0f%%\n", r[int((NR + 1) / 2)], r[1], r[NR]; else print "- -"}')
    done
  done
done

# ---- Put latency of an unpipelined probe under load (issue 9) ----
# latency_cell BENCH-OUTPUT-FILE: "p50 / p99 / max ms".
latency_cell() {
  awk '/^latency:/ {gsub(",", ""); printf "%s / %s / %s ms", $3, $6, $9}' "$1"
}
busy_run() { # busy_run FLAG COMMAND...: runs COMMAND in a loop while FLAG exists
  local flag=$1; shift
  touch "$flag"
  ( while [[ -e "$flag" ]]; do "$@"; done ) &
  BUSY=$!
  track "$BUSY"
}
read_all() { "$BIN" get --addr "$ADDR" --timeout 120 '*' >/dev/null && echo >>"$TMP/reads"; }
declare -A LAT
for side in "${SIDES[@]}"; do
  use "$side"
  # (a) Beside a neighbour that only burns CPU, then beside one that reads every point in a loop:
  # on a VM an idle CPU takes tens of microseconds to wake, so both runs keep the CPUs equally
  # busy and differ only in the reader.
  progress "$side: probe latency beside get * of $LAT_KEYS metrics"
  start_server "lat-$side"
  bench -c 1 -P 1000 -n "$LAT_N" --keys "$LAT_KEYS" >/dev/null
  busy_run "$TMP/spinning" true
  bench -c 1 -P 1 -n "$PROBE_N" >"$TMP/probe.txt"
  rm -f "$TMP/spinning"; wait "$BUSY"
  LAT[$side,quiet]=$(latency_cell "$TMP/probe.txt")
  : >"$TMP/reads"
  busy_run "$TMP/reading" read_all
  bench -c 1 -P 1 -n "$PROBE_N" >"$TMP/probe.txt"
  rm -f "$TMP/reading"; wait "$BUSY"
  LAT[$side,getall]="$(latency_cell "$TMP/probe.txt") ($(wc -l <"$TMP/reads") reads)"
  stop_server

  # (b) A retention sweep: every point bench writes is from 2023, so all are past the window.
  # The first sweep comes one sweep period after start-up; the store is loaded before that, and
  # the probe starts a second before it and runs on while the sweep removes everything.
  progress "$side: probe latency during a retention sweep"
  start_server "sweep-$side" --retention "${SWEEP_WINDOW}s"
  started=$(now)
  bench -c 1 -P 1000 -n "$LAT_N" --keys "$LAT_KEYS" >/dev/null
  sleep_until "$(awk -v a="$started" -v p="$SWEEP_EVERY" 'BEGIN {printf "%.3f", a + p - 1}')"
  early=$(grep -c 'retention: removed' "$LOG" || true)
  bench -c 1 -P 1 -n "$PROBE_N" >"$TMP/probe.txt"
  ended=$(now)
  for _ in $(seq 100); do
    grep -q 'retention: removed' "$LOG" && break
    sleep 0.1
  done
  removed=$(sed -n 's/.*retention: removed \([0-9]*\) points.*/\1/p' "$LOG" | head -n 1)
  LAT[$side,sweep]=$(latency_cell "$TMP/probe.txt")
  if [[ "$early" != 0 ]]; then
    LAT[$side,sweep]+=" (the sweep came before the probe: the load was too slow)"
  elif awk -v e="$ended" -v a="$started" -v p="$SWEEP_EVERY" 'BEGIN {exit !(e < a + p)}'; then
    LAT[$side,sweep]+=" (the probe ended before the sweep)"
  elif [[ -z "$removed" ]]; then
    LAT[$side,sweep]+=" (no sweep seen)"
  else
    LAT[$side,sweep]+=" ($removed removed)"
  fi
  stop_server

  # (c) New names: the probe starts, and another client creates NAMES_N names meanwhile.
  progress "$side: probe latency while $NAMES_N names are created"
  start_server "names-$side"
  rm -f "$TMP/probe.done"
  ( bench -c 1 -P 1 -n "$PROBE_N" >"$TMP/probe.txt"; touch "$TMP/probe.done" ) &
  probe=$!
  track "$probe"
  sleep 0.2
  bench -c 1 -P 1000 -n "$NAMES_N" --keys "$NAMES_N" >/dev/null
  if [[ -e "$TMP/probe.done" ]]; then covered=" (probe ended first)"; else covered=""; fi
  wait "$probe"
  LAT[$side,names]="$(latency_cell "$TMP/probe.txt")$covered"
  stop_server
done

# ---- Range queries against a full get of one series (issue 11) ----
# pipeline.py sends request lines with up to 1000 awaiting replies and prints
# "replies R lines L errors E seconds S".
declare -A RANGE
pipeline_cell() { # pipeline_cell OUTPUT: "requests/s req/s (lines/s lines/s)"
  awk '{printf "%.0f req/s (%.0f lines/s)", $2 / $8, $4 / $8}' <<<"$1"
}
awk -v n="$RANGE_Q" -v p="$RANGE_N" -v s="$RANGE_SPAN" 'BEGIN {
  for (i = 0; i < n; i++) { f = 1700000000 + (i * 7919) % (p - s + 1); print "get bench.key0", f, f + s - 1 }
}' >"$TMP/ranges.txt"
for _ in $(seq "$FULL_GETS"); do echo "get bench.key0"; done >"$TMP/full.txt"
for side in "${SIDES[@]}"; do
  use "$side"
  progress "$side: range queries and full gets on a $RANGE_N-point series"
  start_server "range-$side"
  bench -c 1 -P 1000 -n "$RANGE_N" --keys 1 >/dev/null
  if printf 'get bench.key0 0 1\n' | python3 scripts/pipeline.py --addr "$ADDR" >/dev/null 2>&1; then
    out=$(python3 scripts/pipeline.py --addr "$ADDR" <"$TMP/ranges.txt")
    [[ "$(awk '{print $4}' <<<"$out")" == $((RANGE_Q * RANGE_SPAN)) ]] ||
      { echo "$side: range queries returned $out" >&2; exit 1; }
    RANGE[$side,narrow]=$(pipeline_cell "$out")
  fi
  out=$(python3 scripts/pipeline.py --addr "$ADDR" <"$TMP/full.txt")
  [[ "$(awk '{print $4}' <<<"$out")" == $((FULL_GETS * RANGE_N)) ]] ||
    { echo "$side: full gets returned $out" >&2; exit 1; }
  RANGE[$side,full]=$(pipeline_cell "$out")
  stop_server
done

# ---- Forwarding to a local sink that reads and discards (issue 12) ----
# fwd_rate NAME [SERVER-ARGS...]: one run on a fresh server (and a fresh sink, data directory).
# In the arguments SINK stands for the sink's address and DATAFILE for a fresh data file. Prints
# "puts/s forwarded" where forwarded is points per second from the start of the run until the
# sink had them all, "only-N-arrived" when it went quiet before that, or "-" without a sink.
fwd_rate() {
  local name=$1; shift
  local args=() sink="" sink_pid="" dir
  dir=$(mktemp -d -p "$DATA_DIR" fwd.XXXXXX)
  if [[ " $* " == *" SINK "* ]]; then
    python3 scripts/sink.py --expect "$PIPE_N" >"$TMP/sink.out" 2>"$TMP/sink.err" &
    sink_pid=$!
    track "$sink_pid"
    sink=$(wait_listening "$TMP/sink.out" "$sink_pid")
    [[ -n "$sink" ]] || { echo "the sink did not start" >&2; cat "$TMP/sink.err" >&2; exit 1; }
  fi
  for a in "$@"; do
    case "$a" in
      SINK) args+=("$sink") ;;
      DATAFILE) args+=("$dir/data.txt") ;;
      *) args+=("$a") ;;
    esac
  done
  start_server "$name" ${args[@]+"${args[@]}"}
  local t0 puts forwarded="-"; t0=$(now)
  puts=$(bench -c 1 -P 1000 -n "$PIPE_N" | field throughput: 2)
  if [[ -n "$sink_pid" ]]; then
    forwarded="none-arrived"
    for _ in $(seq 1200); do
      grep -q '^received \|^idle ' "$TMP/sink.out" && break
      sleep 0.1
    done
    forwarded=$(awk -v n="$PIPE_N" -v t0="$t0" '
      /^received / {printf "%.0f", n / ($5 - t0); exit}
      /^idle / {printf "only-%d-arrived", $2; exit}' "$TMP/sink.out")
    kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; untrack "$sink_pid"
  fi
  stop_server
  rm -rf "$dir"
  echo "$puts ${forwarded:-none-arrived}"
}
# The four shapes take turns, FWD_RUNS rounds, so that a neighbour's load falls on all of
# them alike; each cell is the median of its runs, and FWD[...,spread] the range of the ratio
# with to without --forward over the rounds.
FWD_RUNS=5
declare -A FWD
if "${BINS[after]}" help server | grep -q -- '--forward'; then
  progress "after: forwarding, $FWD_RUNS rounds"
  for _ in $(seq "$FWD_RUNS"); do
    fwd_rate fwd >>"$TMP/fwd.memory"
    fwd_rate fwd --forward SINK >>"$TMP/fwd.memory_fwd"
    fwd_rate fwd --data DATAFILE >>"$TMP/fwd.data"
    fwd_rate fwd --data DATAFILE --forward SINK >>"$TMP/fwd.data_fwd"
  done
  for shape in memory memory_fwd data data_fwd; do
    FWD[$shape]=$(sort -n "$TMP/fwd.$shape" | sed -n "$(((FWD_RUNS + 1) / 2))p")
  done
  for mode in memory data; do
    FWD[$mode,spread]=$(paste -d ' ' "$TMP/fwd.$mode" "$TMP/fwd.${mode}_fwd" |
      awk '$1 > 0 && $3 ~ /^[0-9.]+$/ {r = 100 * $3 / $1; if (!n++ || r < lo) lo = r; if (r > hi) hi = r}
        END {if (n) printf "%.0f-%.0f%%", lo, hi; else printf "-"}')
  done
fi
rm -rf "$DATA_DIR"

# ---- Redis, for scale ----
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  progress "Redis"
  RPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
  track "$!"
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis_rate() {
    redis-benchmark -h 127.0.0.1 -p "$RPORT" -t set -r 1000 -q "$@" 2>/dev/null | tr '\r' '\n' |
      awk '/requests per second/ {v = $2} END {printf "%.0f\n", v}'
  }
  THEIRS[pipe]=$(median3 redis_rate -c 1 -P 1000 -n "$PIPE_N")
  THEIRS[single]=$(median3 redis_rate -c 1 -n "$SINGLE_N")
  THEIRS[many]=$(median3 redis_rate -c 50 -n "$MANY_N")
fi

# ---- Tables ----
ratio() {
  if [[ -n "${THEIRS[$1]:-}" ]]; then
    awk -v a="${OURS[$1]}" -v b="${THEIRS[$1]}" 'BEGIN {printf "%.0f | %.2fx", b, a / b}'
  else
    printf -- "- | -"
  fi
}

echo "Put rates are medians: of five runs for the pipelined put before and after, of three for the rest; each on a fresh server (and a fresh data file)."
echo
echo "| shape | metrics | Redis (SET) | ratio |"
echo "|---|---|---|---|"
echo "| put, pipelined (-P 1000), 1 connection | ${OURS[pipe]} puts/s | $(ratio pipe) |"
echo "| put, unpipelined, 1 connection | ${OURS[single]} puts/s | $(ratio single) |"
echo "| put, unpipelined, 50 connections | ${OURS[many]} puts/s | $(ratio many) |"
echo "| get of one metric with $ONE_N points | ${GET_ONE[after,rate]} lines/s | - | - |"
echo "| get * of $STORE_N points (1000 metrics) | ${GET_ALL[after,rate]} lines/s | - | - |"
echo "| bulk \`metrics put -\` of $BULK_N lines | $BULK lines/s | - | - |"
echo "| memory per point at $STORE_N points (RSS growth / points) | ${BPP[after,bench]} bytes | - | - |"
echo
echo "| pipelined put (-P 1000), 1 connection | puts/s | of in-memory |"
echo "|---|---|---|"
echo "| in memory | ${OURS[pipe]} | 100% |"
for mode in everysec always no; do
  echo "| --data, --fsync $mode | ${DATA[$mode]} | $(pct "${DATA[$mode]}" "${OURS[pipe]}") |"
done
echo
echo "Before and after, same run (\"-\": not measured or not supported; after as % of before)."
echo "Bytes per point: the server's RSS growth over the load, read once it is idle, / points loaded."
echo
echo "| shape | before | after | after/before |"
echo "|---|---|---|---|"
before_after "put, pipelined (-P 1000), 1 connection, puts/s" PIPE rate
before_after "get * of $STORE_N points (1000 metrics), lines/s" GET_ALL rate
before_after "get of one metric with $ONE_N points, lines/s" GET_ONE rate
before_after "bytes per point at $STORE_N bench points (1000 metrics)" BPP bench
for kind in "${KINDS[@]}"; do
  before_after "bytes per point, gen_data.py --kind $kind, $GEN_N points / $GEN_SERIES series, 1 s after the load" BPP "$kind-load"
done
for kind in "${KINDS[@]}"; do
  before_after "the same, $kind, once the server is idle" BPP "$kind"
done
for kind in "${KINDS[@]}"; do
  before_after "the same, $kind, as the store accounts it (stats metrics.memory_bytes / points)" BPP "$kind-accounted"
done
echo
echo "Total pipelined put rate (-P 1000, $CONC_N puts, $CONC_ROUNDS alternating rounds), puts/s (median) and as % of"
echo "1 connection with the same --keys in the same round (median, and the lowest and highest round):"
echo
echo "| connections | disjoint series, before | disjoint, after | shared series (--keys 999), before | shared, after |"
echo "|---|---|---|---|---|"
for c in 1 2 4 8; do
  row="| $c"
  for keys in 1000 999; do
    for side in before after; do
      v=${CONC[$side,$c,$keys]:--}
      if [[ "$v" == - ]]; then
        row+=" | -"
      elif [[ $c == 1 ]]; then
        row+=" | $v (100%)"
      else
        row+=" | $v (${CONC[$side,$c,$keys,ratio]}, ${CONC[$side,$c,$keys,spread]})"
      fi
    done
  done
  echo "$row |"
done
echo
echo "Put latency of an unpipelined probe (bench -c 1 -P 1 -n $PROBE_N), p50 / p99 / max:"
echo
echo "| while | before | after |"
echo "|---|---|---|"
echo "| a neighbour burns CPU ($LAT_N points, $LAT_KEYS metrics) | $(cell LAT before,quiet) | $(cell LAT after,quiet) |"
echo "| another client runs get * in a loop ($LAT_N points, $LAT_KEYS metrics) | $(cell LAT before,getall) | $(cell LAT after,getall) |"
echo "| a retention sweep removes $LAT_N points of $LAT_KEYS metrics | $(cell LAT before,sweep) | $(cell LAT after,sweep) |"
echo "| another client creates $NAMES_N new names (-P 1000) | $(cell LAT before,names) | $(cell LAT after,names) |"
echo
echo "One series of $RANGE_N points, requests pipelined 1000 deep (scripts/pipeline.py, one connection):"
echo
echo "| request | before | after |"
echo "|---|---|---|"
echo "| get METRIC FROM TO, $RANGE_SPAN points each ($RANGE_Q queries) | $(cell RANGE before,narrow) | $(cell RANGE after,narrow) |"
echo "| get METRIC, all $RANGE_N points ($FULL_GETS gets) | $(cell RANGE before,full) | $(cell RANGE after,full) |"
if [[ -n "${FWD[memory]:-}" ]]; then
  fw() { awk '{print $1}' <<<"$1"; }
  fwd() { awk '{print $2}' <<<"$1" | tr '-' ' '; }
  echo
  echo "Forwarding to a local sink that reads and discards (scripts/sink.py), pipelined put (-P 1000),"
  echo "1 connection, $PIPE_N puts, median of $FWD_RUNS alternating rounds; forwarded = points / time until"
  echo "the sink had them all; spread = the lowest and highest ratio of a round:"
  echo
  echo "| server | puts/s | of the same without --forward (spread) | forwarded points/s |"
  echo "|---|---|---|---|"
  echo "| in memory | $(fw "${FWD[memory]}") | 100% | - |"
  echo "| in memory, --forward | $(fw "${FWD[memory_fwd]}") | $(pct "$(fw "${FWD[memory_fwd]}")" "$(fw "${FWD[memory]}")") (${FWD[memory,spread]}) | $(fwd "${FWD[memory_fwd]}") |"
  echo "| --data (everysec) | $(fw "${FWD[data]}") | 100% | - |"
  echo "| --data (everysec), --forward | $(fw "${FWD[data_fwd]}") | $(pct "$(fw "${FWD[data_fwd]}")" "$(fw "${FWD[data]}")") (${FWD[data,spread]}) | $(fwd "${FWD[data_fwd]}") |"
fi
