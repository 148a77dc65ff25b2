#!/usr/bin/env bash
# Durable puts against etcd 3.4, side by side on this machine: ftkv with --fsync always (3
# local servers, `client bench -t put`: acknowledged once both copies have it on disk) and one
# throwaway etcd member (its write-ahead log fsync'ed before each answer, etcd's default and
# only mode in 3.4), loaded by benches/etcd_put.rs (the etcd-client crate). Prints a markdown
# table: every round with the load average around it, then each side's best and the ratio.
#
#   scripts/bench/durable-etcd.sh                    # c=50, 16-byte values, 2 rounds
#   N=30000 C=50 D=16 ROUNDS=2 scripts/bench/durable-etcd.sh
#
# The sides run alternately, ftkv, etcd, etcd, ftkv, ... (ROUNDS rounds, default 2), and the
# best round of each is kept (the one least disturbed by anything else on the machine). Each
# ftkv round is a fresh cluster; etcd is one member for the whole run, on loopback, its data
# in a temporary directory on the same file system as ftkv's (mktemp); ETCD_CONNS=1 has the load
# generator's tasks share one connection (default: one each). Ports: ETCD_PORT (2391)
# and the next one; ftkv takes free ports. Needs etcd and etcdctl (Debian: etcd-server
# etcd-client) and cargo; installs nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
ETCD_PORT=${ETCD_PORT:-2391}
PEER_PORT=$((ETCD_PORT + 1))
N=${N:-30000}
C=${C:-50}
D=${D:-16}
ROUNDS=${ROUNDS:-2}
# gRPC connections etcd_put's tasks share; 0: one per task, as client bench holds one per worker.
ETCD_CONNS=${ETCD_CONNS:-0}
log() { echo "durable-etcd.sh: $*" >&2; }
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"

for tool in etcd etcdctl cargo; do
    command -v "$tool" >/dev/null \
        || { log "$tool not found (Debian: apt-get install -y etcd-server etcd-client)"; exit 1; }
done
for port in "$ETCD_PORT" "$PEER_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "something already listens on port $port (set ETCD_PORT)"
        exit 1
    fi
done

work="$(mktemp -d)"
coord_pid=
etcd_pid=
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
    [ -n "$etcd_pid" ] && kill -TERM "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --bins --quiet
cargo bench --bench etcd_put --no-run --quiet 2>/dev/null

url="http://127.0.0.1:$ETCD_PORT"
peer="http://127.0.0.1:$PEER_PORT"
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "$url" \
    --advertise-client-urls "$url" --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" --initial-cluster "bench=$peer" \
    --log-level warn --logger zap >"$work/etcd.log" 2>&1 &
etcd_pid=$!
healthy=
for _ in $(seq 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$url" --dial-timeout 300ms --command-timeout 500ms \
        endpoint health >/dev/null 2>&1; then healthy=1; break; fi
    kill -0 "$etcd_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$healthy" ] || { log "etcd did not become healthy:"; cat "$work/etcd.log" >&2; exit 1; }

# `<name>: <ops> ops/s p50=<us>us p99=<us>us ...` -> "<ops> <p50> <p99>"
ours() {
    awk -v name="$1:" '$1 == name { sub("p50=", "", $4); sub("us", "", $4);
        sub("p99=", "", $5); sub("us", "", $5); print $2, $4, $5 }'
}
best() { if [ -z "$1" ] || [ "${2%% *}" -gt "${1%% *}" ]; then echo "$2"; else echo "$1"; fi; }
load() { cut -d' ' -f1 /proc/loadavg; }

ftkv_round() { # -> "<ops> <p50> <p99>"
    local dir="$work/ftkv-$RANDOM"
    mkdir -p "$dir"
    start_ftkv "$dir" --fsync always
    "$root/target/release/client" -h 127.0.0.1 -p "$ftkv_port" bench -n "$N" -c "$C" -d "$D" \
        -r 100000 -t put | ours put
    stop_ftkv
    rm -rf "$dir"
}
etcd_round() { # -> "<ops> <p50> <p99>"
    cargo bench --quiet --bench etcd_put -- --endpoints "$url" -n "$N" -c "$C" -d "$D" \
        -r 100000 --conns "$ETCD_CONNS" | ours etcd-put
}

rows=()
# One measurement of side $1: its best so far goes to the variable named $1, a row to rows.
measure() {
    local side=$1 before result
    before=$(load)
    log "round $round: $side (load $before)"
    result=$("${side}_round")
    [ -n "$result" ] || { log "$side gave no result"; exit 1; }
    rows+=("| $round | $side | ${result// / | } | $before | $(load) |")
    printf -v "$side" '%s' "$(best "${!side}" "$result")"
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
ftkv= etcd=
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then measure ftkv; measure etcd; else measure etcd; measure ftkv; fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r fo fp f99 <<<"$ftkv"
read -r eo ep e99 <<<"$etcd"
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(etcd --version | head -1); ftkv $(git describe --always --dirty)"
echo
echo "| round | side | puts/s | p50 µs | p99 µs | load (1 min) before | after |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| what (c=$C, $D B values, $N puts, best of $ROUNDS) | puts/s | p50 µs | p99 µs |"
echo "|---|---|---|---|"
echo "| ftkv --fsync always (3 servers, both copies on disk) | $fo | $fp | $f99 |"
echo "| etcd 3.4, one member (WAL fsync'ed), etcd-client | $eo | $ep | $e99 |"
awk -v f="$fo" -v e="$eo" 'BEGIN { printf "\nftkv always / etcd: %.2f (target 5)\n", f / e }'
echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after."
