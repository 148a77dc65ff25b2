#!/usr/bin/env bash
# Runs the same workloads against ftkv (3 local servers, `client bench`) and Redis (a master
# and one replica, redis-benchmark), alternately, and prints a markdown table: ops/s and p50
# latency of each, and the ratio ftkv/Redis.
#
#   scripts/bench/compare.sh                     # about 5 minutes on 2 cores
#   SCALE=0.1 ROUNDS=1 scripts/bench/compare.sh  # a quick check
#   scripts/bench/compare.sh --help              # this text; runs nothing
#
# Each workload runs ROUNDS times (default 2) on each side, in the order ftkv, Redis, Redis,
# ftkv, ...; the table keeps each side's best round (the one least disturbed by anything else
# on the machine). The load average before and after is printed with the table.
#
# Installs nothing: needs redis-server, redis-benchmark and redis-cli (Debian: apt-get install
# redis-server redis-tools) and cargo. Ports: REDIS_PORT (6390) and REDIS_PORT+1 for the
# replica; ftkv takes free ports. The table goes to standard output, progress to standard error.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
    # The comment at the top of this file (the repository and lib.sh were found).
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
    exit 0
fi

REDIS_PORT=${REDIS_PORT:-6390}
REPLICA_PORT=$((REDIS_PORT + 1))
SCALE=${SCALE:-1}
ROUNDS=${ROUNDS:-2}
KEYSPACE=100000

for tool in redis-server redis-benchmark redis-cli cargo; do
    if ! command -v "$tool" >/dev/null; then
        echo "compare.sh: $tool not found (Debian: apt-get install -y redis-server redis-tools)" >&2
        exit 1
    fi
done
for port in "$REDIS_PORT" "$REPLICA_PORT"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "compare.sh: something already answers on port $port (set REDIS_PORT)" >&2
        exit 1
    fi
done

log() { echo "compare.sh: $*" >&2; }

work="$(mktemp -d)"
pids=()
coord_pid=
cleanup() {
    set +e
    if [ -n "$coord_pid" ] && kill -0 "$coord_pid" 2>/dev/null; then
        kill -TERM "$coord_pid"
        for _ in $(seq 100); do kill -0 "$coord_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$coord_pid" 2>/dev/null
    fi
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

# Redis: a master and one replica, no persistence.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" --logfile "$work/redis-master.log" &
pids+=($!)
redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --replicaof 127.0.0.1 "$REDIS_PORT" --dir "$work" --logfile "$work/redis-replica.log" &
pids+=($!)
for _ in $(seq 100); do
    redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
    sleep 0.1
done
redis-cli -p "$REPLICA_PORT" info replication | grep -q 'master_link_status:up' \
    || { log "the Redis replica did not connect"; exit 1; }

# ftkv: 3 local servers on free ports.
# FTKV_FLAGS: more coord flags (e.g. "--fsync no": the request path without the sync).
# shellcheck disable=SC2086
start_ftkv "$work" ${FTKV_FLAGS:-}

# Requests per run, so that each run takes a few seconds here.
requests() { # c P
    local n
    case "$1/$2" in
        1/1) n=20000 ;;
        1/16) n=100000 ;;
        50/1) n=100000 ;;
        *) n=300000 ;;
    esac
    awk -v n="$n" -v s="$SCALE" 'BEGIN { printf "%d", n * s }'
}

# `<name>: <ops> ops/s p50=<us>us ...` -> "<ops> <p50>"
ours() { awk -v name="$1:" '$1 == name { sub("p50=", "", $4); sub("us", "", $4); print $2, $4 }'; }
# redis-benchmark --csv row -> "<ops> <p50 in us>"
theirs() {
    awk -F'","' -v test="\"$1" '$1 == test { printf "%.0f %.0f\n", $2, $5 * 1000 }'
}

# Of two "<ops> <p50>" results (the first may be empty), the one with more ops/s.
best() {
    if [ -z "$1" ] || [ "${2%% *}" -gt "${1%% *}" ]; then echo "$2"; else echo "$1"; fi
}

run_ftkv() { # d c P n
    local out
    out=$("$client" -h 127.0.0.1 -p "$ftkv_port" bench -n "$4" -c "$2" -d "$1" -P "$3" \
        -r "$KEYSPACE" -t put,get) || { log "client bench failed:"; echo "$out" >&2; exit 1; }
    echo "  ${out//$'\n'/$'\n'  }" >&2
    ftkv_put=$(best "$ftkv_put" "$(echo "$out" | ours put)")
    ftkv_get=$(best "$ftkv_get" "$(echo "$out" | ours get)")
}
run_redis() { # d c P n
    local out
    out=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$4" -c "$2" -d "$1" -P "$3" \
        -r "$KEYSPACE" -t set,get --csv)
    echo "  ${out//$'\n'/$'\n'  }" >&2
    redis_set=$(best "$redis_set" "$(echo "$out" | theirs SET)")
    redis_get=$(best "$redis_get" "$(echo "$out" | theirs GET)")
    out=$(cargo bench --quiet --bench redis_wait -- -p "$REDIS_PORT" -n "$4" -c "$2" -d "$1" \
        -P "$3" -r "$KEYSPACE")
    echo "  $out" >&2
    redis_wait=$(best "$redis_wait" "$(echo "$out" | ours set+wait)")
    if [ "$3" -gt 1 ]; then
        out=$(cargo bench --quiet --bench redis_wait -- -p "$REDIS_PORT" -n "$4" -c "$2" -d "$1" \
            -P "$3" -r "$KEYSPACE" --batch-wait)
        echo "  $out" >&2
        redis_batch_wait=$(best "$redis_batch_wait" "$(echo "$out" | ours set+batch-wait)")
    fi
}

rows=()
row() { # label d c P "ftkv_ops ftkv_p50" "redis_ops redis_p50"
    local fo fp ro rp
    read -r fo fp <<<"$5"
    read -r ro rp <<<"$6"
    rows+=("$(awk -v l="$1" -v d="$2" -v c="$3" -v p="$4" -v fo="$fo" -v fp="$fp" \
        -v ro="$ro" -v rp="$rp" 'BEGIN {
            printf "| %s | %s | %s | %s | %d | %d | %d | %d | %.2f |", l, d, c, p, fo, fp, ro, rp, fo / ro
        }')")
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
turn=0
for d in 16 1024; do
    for c in 1 50; do
        for P in 1 16; do
            n=$(requests "$c" "$P")
            ftkv_put='' ftkv_get='' redis_set='' redis_get='' redis_wait='' redis_batch_wait=''
            for round in $(seq "$ROUNDS"); do
                log "-d $d -c $c -P $P -n $n (round $round)"
                # Alternate who goes first, so that drift favours neither.
                if [ $((turn % 2)) -eq 0 ]; then
                    run_ftkv "$d" "$c" "$P" "$n"
                    run_redis "$d" "$c" "$P" "$n"
                else
                    run_redis "$d" "$c" "$P" "$n"
                    run_ftkv "$d" "$c" "$P" "$n"
                fi
                turn=$((turn + 1))
            done
            row "put / SET" "$d" "$c" "$P" "$ftkv_put" "$redis_set"
            row "put / SET + WAIT 1 0" "$d" "$c" "$P" "$ftkv_put" "$redis_wait"
            if [ -n "$redis_batch_wait" ]; then
                row "put / $P SET + 1 WAIT" "$d" "$c" "$P" "$ftkv_put" "$redis_batch_wait"
            fi
            row "get / GET" "$d" "$c" "$P" "$ftkv_get" "$redis_get"
        done
    done
done

# How much the SET+WAIT generator itself costs: plain SETs through it vs redis-benchmark.
n=$(requests 50 1)
gen=$(cargo bench --quiet --bench redis_wait -- -p "$REDIS_PORT" -n "$n" -c 50 -d 16 -P 1 \
    -r "$KEYSPACE" --no-wait | ours set)
rb=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$n" -c 50 -d 16 -P 1 -r "$KEYSPACE" \
    -t set --csv | theirs SET)
log "generator check: redis_wait --no-wait $gen, redis-benchmark $rb"

# CPU time per request at -c 50 -P 1 -d 16 (puts, then as many gets): the servers' (from
# /proc, clock ticks) and the load generator's, so the ratios above can be read against what
# each side spent on the same 2 cores.
ticks() { local total=0 pid; for pid in "$@"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$total"; }
us_per_request() { # ticks requests
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}
generator_us() { # requests command... (its user + system time per request)
    local n=$1 times
    shift
    times=$( { TIMEFORMAT='%U %S'; time "$@" >/dev/null; } 2>&1 | tail -1)
    awk -v u="${times% *}" -v s="${times#* }" -v n="$n" 'BEGIN { printf "%.1f", (u + s) * 1e6 / n }'
}
read -ra ftkv_servers <<<"$(pgrep -P "$coord_pid" -d ' ')"
t0=$(ticks "${ftkv_servers[@]}")
ftkv_gen=$(generator_us $((2 * n)) "$client" -h 127.0.0.1 -p "$ftkv_port" bench -n "$n" -c 50 \
    -d 16 -P 1 -r "$KEYSPACE" -t put,get)
ftkv_cpu=$(us_per_request $(($(ticks "${ftkv_servers[@]}") - t0)) $((2 * n)))
t0=$(ticks "${pids[@]}")
redis_gen=$(generator_us $((2 * n)) redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$n" -c 50 \
    -d 16 -P 1 -r "$KEYSPACE" -t set,get --csv)
redis_cpu=$(us_per_request $(($(ticks "${pids[@]}") - t0)) $((2 * n)))
log "CPU per request: ftkv servers $ftkv_cpu us, client bench $ftkv_gen us; Redis $redis_cpu us, redis-benchmark $redis_gen us"

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($cpu); $(free -g | awk '/^Mem:/ { print $2 }') GiB;" \
    "$(redis-server --version | awk '{ print $1, $2, $3 }'); ftkv $(git describe --always --dirty)"
echo
echo "| ftkv / Redis | value bytes | -c | -P | ftkv ops/s | ftkv p50 µs | Redis ops/s | Redis p50 µs | ftkv/Redis ops |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
read -r go gp <<<"$gen"
read -r ro rp <<<"$rb"
echo "Keys: $KEYSPACE random (\`-r\`), put phase then get phase (misses included, as with redis-benchmark)."
echo "Everything runs on this machine's $(nproc) cores at once: ftkv's 3 servers, coordinator and"
echo "\`client bench\` (one thread) against Redis's master, replica and redis-benchmark"
echo "(WAIT rows: benches/redis_wait.rs, 2 tokio workers). \"SET + WAIT 1 0\": each SET is followed"
echo "by its WAIT (Redis does not read the next command of a connection while WAIT blocks it);"
echo "\"16 SET + 1 WAIT\": one WAIT per pipelined batch, all 16 SETs done when it answers."
echo "Generator check, -c 50 -P 1 -d 16 plain SET: redis_wait $go ops/s (p50 ${gp} µs),"
echo "redis-benchmark $ro ops/s (p50 ${rp} µs)."
echo "CPU time per request at -c 50 -P 1 -d 16 (half puts, half gets): ftkv's 3 servers $ftkv_cpu µs,"
echo "\`client bench\` $ftkv_gen µs; Redis master and replica $redis_cpu µs, redis-benchmark $redis_gen µs."
echo "Best of $ROUNDS rounds per side. Load average (1, 5, 15 min) before: $load_before; after: $load_after."
echo "Run time: $SECONDS s (with the build)."

