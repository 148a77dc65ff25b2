#!/usr/bin/env bash
# Installs what the tests need and is not there yet: cargo-nextest, and for the remote-host
# tests (network namespaces with an sshd each, cut off with nftables) iproute2, openssh and
# nftables from Debian's packages; tmux for `client watch`'s terminal test, and prometheus
# (with promtool) for the metrics test. Those tests need root; without root they skip, and so does
# this script's package step.
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
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
