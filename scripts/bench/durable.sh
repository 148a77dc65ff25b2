#!/usr/bin/env bash
# Durable puts, side by side on this machine: ftkv with --fsync always and --fsync no (3 local
# servers, `client bench`), and Redis with appendonly yes + appendfsync always (a master and
# one replica, each with its own AOF), every SET followed by WAIT 1 0 (the redis_wait bench:
# acknowledged once the replica has it, the Redis way of two copies). Prints a markdown table.
#
#   scripts/bench/durable.sh                  # c=50, 16-byte values
#   N=20000 C=50 D=16 scripts/bench/durable.sh
#
# Needs redis-server and redis-cli (Debian: redis-server redis-tools). Ports: REDIS_PORT (6392)
# and the next one; ftkv takes free ports. Each side runs ROUNDS times (default 3), alternately,
# and the best round is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
REDIS_PORT=${REDIS_PORT:-6392}
REPLICA_PORT=$((REDIS_PORT + 1))
N=${N:-40000}
C=${C:-50}
D=${D:-16}
ROUNDS=${ROUNDS:-3}
log() { echo "durable.sh: $*" >&2; }
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"

work="$(mktemp -d)"
pids=()
coord_pid=
stop_ftkv() {
    if [ -n "$coord_pid" ] && kill -0 "$coord_pid" 2>/dev/null; then
        kill -TERM "$coord_pid"
        for _ in $(seq 100); do kill -0 "$coord_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    coord_pid=
}
cleanup() {
    set +e
    stop_ftkv
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --bins --quiet
cargo bench --bench redis_wait --no-run --quiet 2>/dev/null
client="$root/target/release/client"

mkdir -p "$work/master" "$work/replica"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --dir "$work/master" --logfile "$work/master/redis.log" &
pids+=($!)
redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --replicaof 127.0.0.1 "$REDIS_PORT" --dir "$work/replica" \
    --logfile "$work/replica/redis.log" &
pids+=($!)
for _ in $(seq 100); do
    redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
    sleep 0.1
done

# `<name>: <ops> ops/s p50=<us>us p99=<us>us ...` -> "<ops> <p50> <p99>"
ours() {
    awk -v name="$1:" '$1 == name { sub("p50=", "", $4); sub("us", "", $4);
        sub("p99=", "", $5); sub("us", "", $5); print $2, $4, $5 }'
}
best() { if [ -z "$1" ] || [ "${2%% *}" -gt "${1%% *}" ]; then echo "$2"; else echo "$1"; fi; }

ftkv_round() { # policy -> "<ops> <p50> <p99>"
    local dir="$work/ftkv-$1-$RANDOM"
    mkdir -p "$dir"
    printf '3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n' >"$dir/cluster.txt"
    (cd "$dir" && exec "$root/target/release/coord" -c 0 -s 0 -C cluster.txt --ignore-stdin \
        --fsync "$1" -l coord.log >coord.out 2>&1) &
    coord_pid=$!
    for _ in $(seq 200); do
        grep -q '^cluster ready' "$dir/coord.out" 2>/dev/null && break
        sleep 0.1
    done
    ftkv_port=$(sed -n 's/^ftkv coordinator: clients port \([0-9]*\),.*/\1/p' "$dir/coord.out")
    "$client" -h 127.0.0.1 -p "$ftkv_port" bench -n "$N" -c "$C" -d "$D" -r 100000 -t put | ours put
    stop_ftkv
    rm -rf "$dir"
}

always= no= redis=
for round in $(seq "$ROUNDS"); do
    log "round $round"
    always=$(best "$always" "$(ftkv_round always)")
    redis=$(best "$redis" "$(cargo bench --quiet --bench redis_wait -- -p "$REDIS_PORT" \
        -n "$N" -c "$C" -d "$D" -P 1 -r 100000 | ours set+wait)")
    no=$(best "$no" "$(ftkv_round no)")
done
read -r ao ap a99 <<<"$always"
read -r no_o no_p no_99 <<<"$no"
read -r ro rp r99 <<<"$redis"
echo "| what (c=$C, $D B values, $N puts, best of $ROUNDS) | puts/s | p50 µs | p99 µs |"
echo "|---|---|---|---|"
echo "| ftkv --fsync always (both copies on disk) | $ao | $ap | $a99 |"
echo "| ftkv --fsync no | $no_o | $no_p | $no_99 |"
echo "| Redis appendfsync always + replica, SET + WAIT 1 0 | $ro | $rp | $r99 |"
awk -v a="$ao" -v n="$no_o" -v r="$ro" \
    'BEGIN { printf "\nftkv always / Redis: %.2f; ftkv always / ftkv no: %.2f\n", a / r, a / n }'
