#!/usr/bin/env bash
# Memory per stored key: 1,000,000 keys of 16 bytes (`key:000000000000` ...) with 100-byte
# values, stored once in a fresh ftkv cluster of 3 servers and once in a fresh Redis (one
# instance, persistence off). Prints a markdown table: the servers' RSS growth per key and
# per copy for ftkv (every key is held twice), Redis's `used_memory` growth per key and its
# RSS growth per key.
#
#   scripts/bench/memory.sh          # about 30 s
#
# Needs redis-server and redis-cli (Debian: apt-get install redis-server redis-tools) and
# cargo. Port: REDIS_PORT (6392). KEYS overrides the key count.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

REDIS_PORT=${REDIS_PORT:-6392}
KEYS=${KEYS:-1000000}
VALUE=100

for tool in redis-server redis-cli cargo; do
    command -v "$tool" >/dev/null \
        || { echo "memory.sh: $tool not found (Debian: apt-get install -y redis-server redis-tools)" >&2; exit 1; }
done
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "memory.sh: something already answers on port $REDIS_PORT (set REDIS_PORT)" >&2
    exit 1
fi
log() { echo "memory.sh: $*" >&2; }
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"

work="$(mktemp -d)"
coord_pid=
redis_pid=
cleanup() {
    set +e
    [ -n "$coord_pid" ] && kill -TERM "$coord_pid" 2>/dev/null && wait "$coord_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill -TERM "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --bins --quiet

# Resident set of the given processes, in KiB.
rss_kib() { local total=0 pid; for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"))); done; echo "$total"; }

# ftkv: the bench's fill phase (`-t get`) stores every key of the keyspace exactly once.
start_ftkv "$work"
read -ra servers <<<"$(pgrep -P "$coord_pid" -d ' ')"
before=$(rss_kib "${servers[@]}")
log "ftkv: storing $KEYS keys"
"$root/target/release/client" -h 127.0.0.1 -p "$ftkv_port" bench -t get -n 1 -r "$KEYS" \
    -d "$VALUE" -c 50 -P 16 >/dev/null
after=$(rss_kib "${servers[@]}")
ftkv_growth=$(((after - before) * 1024))

# Redis: the same keys and values through redis-cli --pipe.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
used() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
used_before=$(used)
rss_before=$(rss_kib "$redis_pid")
log "Redis: storing $KEYS keys"
awk -v n="$KEYS" -v len="$VALUE" 'BEGIN {
    value = sprintf("%" len "s", ""); gsub(/ /, "v", value)
    for (i = 0; i < n; i++)
        printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$%d\r\n%s\r\n", i, len, value
}' | redis-cli -p "$REDIS_PORT" --pipe >/dev/null
stored=$(redis-cli -p "$REDIS_PORT" dbsize)
[ "$stored" -eq "$KEYS" ] || { log "Redis holds $stored keys, expected $KEYS"; exit 1; }
redis_used=$(($(used) - used_before))
redis_rss=$((($(rss_kib "$redis_pid") - rss_before) * 1024))

echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(redis-server --version | awk '{ print $1, $2, $3 }'); ftkv $(git describe --always --dirty)"
echo
echo "| $KEYS keys of 16 B, values of $VALUE B | bytes per key | bytes per copy |"
echo "|---|---|---|"
awk -v g="$ftkv_growth" -v n="$KEYS" 'BEGIN { printf "| ftkv, RSS growth of the 3 servers (2 copies of each key) | %.0f | %.0f |\n", g / n, g / n / 2 }'
awk -v u="$redis_used" -v n="$KEYS" 'BEGIN { printf "| Redis, used_memory growth (1 copy) | %.0f | %.0f |\n", u / n, u / n }'
awk -v r="$redis_rss" -v n="$KEYS" 'BEGIN { printf "| Redis, RSS growth (1 copy) | %.0f | %.0f |\n", r / n, r / n }'
