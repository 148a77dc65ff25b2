#!/usr/bin/env bash
# Test hosts on one machine: network namespaces joined by veth pairs to a bridge that lives in
# a namespace of its own, addresses in 10.213.77.0/24 that exist only inside these namespaces
# (the root namespace gets a blackhole route for the range and never sends to it), and one
# sshd per host with a host key and a client key made for the run.
#
#   hosts.sh up P DIR N    hosts P-h0 (10.213.77.10) ... P-hN (10.213.77.(10+N)) joined by the
#                          bridge in P-sw; keys, sshd configs and logs in DIR
#   hosts.sh down P DIR    tears everything of prefix P down (also after a failed run)
#   hosts.sh cut P I       link of host I down at the bridge (full partition)
#   hosts.sh heal P I      link of host I up again
# Each test uses its own prefix P, so tests can run side by side (each namespace has its own
# network stack, so they may all use the same addresses).
# Needs root, iproute2 and openssh-server.
set -euo pipefail

NET=10.213.77

addr() { echo "$NET.$((10 + $1))"; }

up() {
    local p=$1 dir=$2 n=$3 SW=$1-sw
    mkdir -p "$dir" /run/sshd
    down "$p" "$dir" 2>/dev/null || true
    ip route replace blackhole "$NET.0/24"
    ip netns add $SW
    ip -n $SW link add br0 type bridge
    ip -n $SW link set br0 up
    ip -n $SW link set lo up
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key" <<<y >/dev/null 2>&1 || true
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key" <<<y >/dev/null 2>&1 || true
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    chmod 600 "$dir/host_key" "$dir/client_key"
    for i in $(seq 0 "$n"); do
        local ns=$p-h$i
        ip netns add "$ns"
        # Made inside the switch's namespace, so names never meet another test's.
        ip -n "$SW" link add "v$i" type veth peer name eth0 netns "$ns"
        ip -n $SW link set "v$i" master br0
        ip -n $SW link set "v$i" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$(addr "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        cat >"$dir/sshd_$i.conf" <<CONF
ListenAddress $(addr "$i")
Port 22
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd_$i.pid
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AcceptEnv FTKV_*
LogLevel ERROR
CONF
        ip netns exec "$ns" /usr/sbin/sshd -D -f "$dir/sshd_$i.conf" -E "$dir/sshd_$i.log" &
        echo $! >"$dir/sshd_$i.launcher"
    done
    # Wait until every sshd answers.
    for i in $(seq 1 "$n"); do
        for _ in $(seq 1 100); do
            if ip netns exec "$p-h0" bash -c "exec 3<>/dev/tcp/$(addr "$i")/22" 2>/dev/null; then break; fi
            sleep 0.05
        done
    done
}

down() {
    local p=$1 dir=$2
    for pidfile in "$dir"/sshd_*.pid "$dir"/sshd_*.launcher; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for ns in $(ip netns list | awk -v p="$p-" 'index($1, p) == 1 {print $1}'); do
        # Anything still running in a test host (servers, sshd) goes with it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    # The blackhole route goes with the last set of test hosts.
    if ! ip netns list | grep -q -- '-sw'; then
        ip route del blackhole "$NET.0/24" 2>/dev/null || true
    fi
}

case "${1:-}" in
    up) up "$2" "$3" "$4" ;;
    down) down "$2" "$3" ;;
    cut) ip -n "$2-sw" link set "v$3" down ;;
    heal) ip -n "$2-sw" link set "v$3" up ;;
    *) echo "usage: $0 up P DIR N | down P DIR | cut P I | heal P I" >&2; exit 2 ;;
esac
