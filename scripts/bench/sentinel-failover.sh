#!/usr/bin/env bash
# Reference figure for ftkv's coordinator failover: how long Redis Sentinel takes to fail over
# on this machine, and how many acknowledged writes the failover loses.
#
#   scripts/bench/sentinel-failover.sh          # 10 runs, about 70 s
#   RUNS=3 scripts/bench/sentinel-failover.sh   # a quick look
#
# Each run starts, on loopback and in a temporary directory, a Redis master, one replica
# (--replicaof) and three sentinels monitoring the master (quorum 2, down-after-milliseconds
# 1000, failover-timeout 10000, parallel-syncs 1). A writer (scripts/bench/sentinel-writer.py)
# asks the sentinels for the master (SENTINEL get-master-addr-by-name, as a client library
# following Sentinel does), checks it with ROLE and writes numbered keys one at a time,
# recording every acknowledged write. One second after its first write the master is killed with
# kill -9; the writer keeps asking the sentinels and retrying until the promoted replica
# acknowledges a write, writes on for 0.5 s, then reads every acknowledged key back from the new
# master. Everything is stopped after each run (and on exit or ctrl+c).
#
# Per run it prints a markdown row: the time from the kill to the first write acknowledged by
# the new master, the longest time without an acknowledged write (as benches/coord_restart.rs
# measures ftkv), when the first sentinel logged each step of the failover (after the kill),
# the acknowledged writes and how many of them the new master does not hold (Redis replicates
# asynchronously); then the median and max over the runs, and the load average before and after.
#
# Installs nothing: needs redis-server (its --sentinel mode: no redis-sentinel package is
# needed), redis-cli (Debian: apt-get install -y redis-server redis-tools) and python3 (the
# standard library only). Ports: REDIS_PORT (6393) for the master, the next 4 for the replica
# and the sentinels. RUNS (10) runs. The table goes to standard output, progress to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

RUNS=${RUNS:-10}
REDIS_PORT=${REDIS_PORT:-6393}
MASTER_PORT=$REDIS_PORT
REPLICA_PORT=$((REDIS_PORT + 1))
SENTINEL_PORTS=("$((REDIS_PORT + 2))" "$((REDIS_PORT + 3))" "$((REDIS_PORT + 4))")
DOWN_AFTER_MS=1000
# Long enough for one failover of an empty replica here (a few seconds) to finish; the default
# (3 minutes) would only matter for a failover that stalls, which should fail the run quickly.
FAILOVER_TIMEOUT_MS=10000
# The writer gives up this long after its start if no new master has answered.
WRITER_DEADLINE_S=60

log() { echo "sentinel-failover.sh: $*" >&2; }
for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null \
        || { log "$tool not found (Debian: apt-get install -y redis-server redis-tools python3)"; exit 1; }
done
# Any listener, not only a Redis: bash's /dev/tcp connects or fails.
for port in "$MASTER_PORT" "$REPLICA_PORT" "${SENTINEL_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "something already listens on port $port (set REDIS_PORT)"
        exit 1
    fi
done

work="$(mktemp -d)"
# This run's processes. The master is kept apart: once killed and reaped its pid is dropped,
# so that a later kill cannot hit another process that was given the same pid.
master_pid=
pids=()        # the replica and the sentinels
writer_pid=
stop_run() {
    local pid
    for pid in $master_pid "${pids[@]}" $writer_pid; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $master_pid "${pids[@]}" $writer_pid; do wait "$pid" 2>/dev/null || true; done
    master_pid=
    pids=()
    writer_pid=
}
cleanup() {
    set +e
    stop_run
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints the logs of a failed run and exits.
fail() {
    log "$1; logs of $dir:"
    tail -n 30 "$dir"/*.log "$dir"/writer.out >&2 2>/dev/null
    exit 1
}

# Waits up to 10 s for a command to succeed.
await() { # description command...
    local what=$1
    shift
    for _ in $(seq 200); do "$@" && return 0; sleep 0.05; done
    fail "timed out waiting for $what"
}
replica_linked() {
    redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q 'master_link_status:up'
}
# A sentinel is ready once it has found the replica (from the master's INFO) and both other
# sentinels (from their hello messages): without them it can neither reach the quorum nor
# win the election for the failover.
sentinel_ready() { # port
    local fields
    fields=$(redis-cli -p "$1" sentinel master mymaster 2>/dev/null | paste -sd' ')
    [[ " $fields " == *" num-slaves 1 "* && " $fields " == *" num-other-sentinels 2 "* ]]
}

# Starts the master, the replica and the three sentinels of one run in $dir.
start_run() {
    local port
    mkdir -p "$dir"
    # The same Redis as scripts/bench/compare.sh's, no persistence; the master sends the replica
    # its first copy at once instead of waiting 5 s for more replicas
    # (repl-diskless-sync-delay), which only shortens the setup: after the kill no replica is
    # left to copy to.
    redis-server --port "$MASTER_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --repl-diskless-sync-delay 0 --dir "$dir" --logfile "$dir/master.log" &
    master_pid=$!
    redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --replicaof 127.0.0.1 "$MASTER_PORT" --dir "$dir" --logfile "$dir/replica.log" &
    pids+=($!)
    await "the replica to connect" replica_linked
    for port in "${SENTINEL_PORTS[@]}"; do
        # Sentinel rewrites its configuration file (its id, the epochs), so each has its own.
        cat >"$dir/sentinel-$port.conf" <<EOF
port $port
bind 127.0.0.1
dir $dir
logfile $dir/sentinel-$port.log
sentinel monitor mymaster 127.0.0.1 $MASTER_PORT 2
sentinel down-after-milliseconds mymaster $DOWN_AFTER_MS
sentinel failover-timeout mymaster $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs mymaster 1
EOF
        redis-server "$dir/sentinel-$port.conf" --sentinel &
        pids+=($!)
    done
    for port in "${SENTINEL_PORTS[@]}"; do
        await "sentinel $port to see the replica and the other sentinels" sentinel_ready "$port"
    done
}

# The value of one `name=value` field of the writer's line.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

# Median (the mean of the middle two for an even count) and max of numbers, one a line.
median_max() {
    sort -g | awk '{ v[NR] = $1 }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.3f %.3f\n", m, v[NR] }'
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| run | kill -9 to first write on the new master (s) | longest without a write (s) | +sdown | +odown | +elected-leader | +failover-state-wait-promotion | +promoted-slave | +switch-master | writes acked (old master / new) | unknown outcome | acked writes lost |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
times=()
gaps=()
losses=()
for run in $(seq "$RUNS"); do
    dir="$work/run-$run"
    log "run $run of $RUNS: starting a master, a replica and 3 sentinels"
    start_run
    python3 "$root/scripts/bench/sentinel-writer.py" write "$dir/ready" "$WRITER_DEADLINE_S" \
        "${SENTINEL_PORTS[@]}" >"$dir/writer.out" &
    writer_pid=$!
    await "the first write" test -e "$dir/ready"
    sleep 1
    # $EPOCHREALTIME is read by the shell itself (no fork between it and the kill), on the same
    # clock as the writer's time.time().
    killed=$EPOCHREALTIME
    kill -KILL "$master_pid"
    wait "$master_pid" 2>/dev/null || true
    master_pid=
    log "run $run: master killed, waiting for the writer"
    wait "$writer_pid" || fail "the writer failed"
    writer_pid=
    out=$(cat "$dir/writer.out")
    [ "$(field failed_over "$out")" = 1 ] || fail "no new master acknowledged a write: $out"
    [ "$(field new_master "$out")" = "$REPLICA_PORT" ] \
        || fail "Sentinel reports $(field new_master "$out") as master, not the replica: $out"
    failover=$(awk -v a="$(field first_new_ack "$out")" -v k="$killed" 'BEGIN { printf "%.3f", a - k }')
    # What benches/coord_restart.rs calls unserved: the longest stretch without an acknowledged
    # write from the kill on. An answer the master sent just before dying can arrive after the
    # kill, so this can be a little shorter than the kill to the first write on the new master.
    gap=$(awk -v a="$(field first_new_ack "$out")" -v k="$killed" -v o="$(field last_old_ack "$out")" \
        'BEGIN { printf "%.3f", a - (o > k ? o : k) }')
    steps=$(python3 "$root/scripts/bench/sentinel-writer.py" events "$killed" "$dir"/sentinel-*.log)
    lost=$(field lost "$out")
    [ "$lost" = 0 ] || log "run $run: lost $(field lost_keys "$out")"
    times+=("$failover")
    gaps+=("$gap")
    losses+=("$lost")
    echo "| $run | $failover | $gap | $(field sdown "$steps") | $(field odown "$steps") |" \
        "$(field elected-leader "$steps") | $(field failover-state-wait-promotion "$steps") |" \
        "$(field promoted-slave "$steps") |" \
        "$(field switch-master "$steps") | $(field acked "$out") ($(field acked_old "$out") /" \
        "$(field acked_new "$out")) | $(field unknown "$out") | $lost |"
    stop_run
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r time_median time_max <<<"$(printf '%s\n' "${times[@]}" | median_max)"
read -r gap_median gap_max <<<"$(printf '%s\n' "${gaps[@]}" | median_max)"
read -r lost_median lost_max <<<"$(printf '%s\n' "${losses[@]}" | median_max | awk '{ print $1 + 0, $2 + 0 }')"
lost_total=$(printf '%s\n' "${losses[@]}" | awk '{ s += $1 } END { print s }')
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "$RUNS runs: kill -9 to first write on the new master median $time_median s, max $time_max s;" \
    "longest time without an acknowledged write median $gap_median s, max $gap_max s;" \
    "acknowledged writes lost per run median $lost_median, max $lost_max ($lost_total in all)."
echo "Step columns: seconds from the kill until the first of the 3 sentinels logged the event"
echo "(+failover-state-wait-promotion: the leader has sent the replica REPLICAOF NO ONE;"
echo "+promoted-slave: the leader has seen, in the replica's INFO, that it is master)."
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($cpu);" \
    "$(redis-server --version | awk '{ print $1, $2, $3 }'); quorum 2, down-after-milliseconds" \
    "$DOWN_AFTER_MS, failover-timeout $FAILOVER_TIMEOUT_MS, parallel-syncs 1."
echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after. Run time: $SECONDS s."
