#!/usr/bin/env bash
# Installs what the tests need and is not there yet: cargo-nextest, and for the remote-host
# tests (network namespaces with an sshd each, cut off with nftables) iproute2, openssh and
# nftables from Debian's packages, bsdutils (`script`) and tmux for the client's terminal
# tests (the REPL, `client watch`), prometheus (with promtool) for the metrics test, etcd and
# etcdctl (Debian's etcd-server and etcd-client) for the tests that start their own etcd
# (tests/support/etcd.rs: the standby coordinators' leader election), python3-fusepy for the
# file system that forgets what was not synced (tests/power_cut.rs: a power cut). Packages
# need root, and so do the remote-host tests: without root those skip, as do the tool tests
# whose tool is missing, and this script's package step is skipped. As root a missing tool
# fails its tests.
set -euo pipefail

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || exit 0
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
/usr/bin/python3 -c 'import fusepy' >/dev/null 2>&1 || need+=(python3-fusepy)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
