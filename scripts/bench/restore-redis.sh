#!/usr/bin/env bash
# Redis loading an RDB of the data of `cargo bench --bench restore`: 1,000,000 keys of
# 100-byte values (DEBUG POPULATE), saved, then redis-server started again on the RDB; prints
# the time from its start until DBSIZE answers the full count. KEYS=100000 for fewer; port
# 6392 (REDIS_PORT). Needs redis-server and redis-cli; installs nothing.
set -euo pipefail
keys=${KEYS:-1000000}
port=${REDIS_PORT:-6392}
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
start() {
    # DEBUG POPULATE needs the debug command, off by default since Redis 7.
    redis-server --port "$port" --dir "$dir" --dbfilename dump.rdb --save '' --appendonly no \
        --daemonize no --logfile "$dir/redis.log" --enable-debug-command yes &
    pid=$!
}
start
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.01; done
redis-cli -p "$port" DEBUG POPULATE "$keys" k 100 >/dev/null
redis-cli -p "$port" SAVE >/dev/null
redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
wait "$pid" 2>/dev/null || true
began=$(date +%s.%N)
start
for _ in $(seq 12000); do
    [ "$(redis-cli -p "$port" DBSIZE 2>/dev/null)" = "$keys" ] && break
    sleep 0.005
done
[ "$(redis-cli -p "$port" DBSIZE 2>/dev/null)" = "$keys" ] || { echo "redis did not load $keys keys" >&2; exit 1; }
ended=$(date +%s.%N)
echo "redis: $keys keys of 100 bytes, start to DBSIZE $keys: $(echo "$ended - $began" | bc) s"
echo "rdb: $(stat -c %s "$dir/dump.rdb") bytes"
