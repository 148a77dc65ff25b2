#!/usr/bin/env bash
# Redis after a crash, the other side of `cargo bench --bench crash_restart`: redis-server with
# appendonly yes (appendfsync always by default, as ftkv's --fsync always; FSYNC=everysec for
# the other) filled with the same data (1,000,000 keys `key:000000000000`... of 100-byte
# values, through redis-cli --pipe), then kill -9, then the same redis-server command again;
# prints the time from its start until `INFO persistence` says loading:0 and DBSIZE answers the
# full count.
#
#   scripts/bench/restart-redis.sh          # KEYS=1000000, port 6394 (REDIS_PORT)
#   KEYS=100000 FSYNC=everysec scripts/bench/restart-redis.sh
#
# Two shapes of AOF, one row each: the commands as written (automatic rewrites off, as ftkv's
# log is not compacted either: it replays every record), and after a BGREWRITEAOF, whose base
# file is an RDB preamble (aof-use-rdb-preamble yes, Redis 7's default; what an automatic
# rewrite leaves once the AOF doubled). Needs redis-server and redis-cli; installs nothing.
set -euo pipefail
keys=${KEYS:-1000000}
port=${REDIS_PORT:-6394}
fsync=${FSYNC:-always}
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "restart-redis.sh: something already answers on port $port (set REDIS_PORT)" >&2
    exit 1
fi

start() {
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes \
        --appendfsync "$fsync" --auto-aof-rewrite-percentage 0 --daemonize no \
        --logfile "$dir/redis.log" >/dev/null 2>&1 &
    pid=$!
}
# The value of every key: 100 bytes.
fill() {
    awk -v n="$keys" 'BEGIN {
        value = sprintf("%100s", ""); gsub(/ /, "v", value)
        for (i = 0; i < n; i++)
            printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n", i, value
    }' | redis-cli -p "$port" --pipe >/dev/null
}
field() { redis-cli -p "$port" info persistence 2>/dev/null | tr -d '\r' | sed -n "s/^$1://p"; }
crash() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
# Starts redis-server again on the AOF; sets `took` to the seconds until it loaded every key, and
# `own` to what its log says the load took
# (not a command substitution: the server started in it would hold its output open).
timed_start() {
    local began ended
    began=$(date +%s.%N)
    start
    for _ in $(seq 60000); do
        if [ "$(field loading)" = 0 ] && [ "$(redis-cli -p "$port" dbsize 2>/dev/null)" = "$keys" ]; then
            break
        fi
        sleep 0.005
    done
    ended=$(date +%s.%N)
    [ "$(redis-cli -p "$port" dbsize 2>/dev/null)" = "$keys" ] \
        || { echo "restart-redis.sh: redis did not load $keys keys" >&2; exit 1; }
    took=$(printf "%.3f" "$(echo "$ended - $began" | bc)")
    # Redis's own count, from its log: "DB loaded from append only file: 1.234 seconds".
    own=$(sed -n 's/.*DB loaded from append only file: \([0-9.]*\) seconds.*/\1/p' \
        "$dir/redis.log" | tail -1)
}

start
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.01; done
began=$(date +%s.%N)
fill
[ "$(redis-cli -p "$port" dbsize)" = "$keys" ] || { echo "restart-redis.sh: fill failed" >&2; exit 1; }
echo "redis: $keys keys of 100 bytes stored (appendfsync $fsync) in $(echo "$(date +%s.%N) - $began" | bc) s" >&2
crash
timed_start
commands="$took | ${own:-?}"
commands_bytes=$(du -sb "$dir/appendonlydir" | cut -f1)

redis-cli -p "$port" bgrewriteaof >/dev/null
sleep 0.1
until [ "$(field aof_rewrite_in_progress)" = 0 ] && [ "$(field aof_rewrite_scheduled)" = 0 ]; do
    sleep 0.05
done
crash
timed_start
preamble="$took | ${own:-?}"
preamble_bytes=$(du -sb "$dir/appendonlydir" | cut -f1)
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$pid" 2>/dev/null || true
pid=

echo "$(redis-server --version | awk '{ print $1, $2, $3 }'), appendonly yes, appendfsync $fsync, $keys keys of 100 B"
echo
echo "| Redis AOF after kill -9 | AOF bytes | start to loading:0 and DBSIZE $keys (s) | its log: DB loaded in (s) |"
echo "|---|---|---|---|"
echo "| the commands as written (no rewrite) | $commands_bytes | $commands |"
echo "| after BGREWRITEAOF (RDB preamble) | $preamble_bytes | $preamble |"
