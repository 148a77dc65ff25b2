# shellcheck shell=bash disable=SC2154,SC2034  # root and log come from, and coord_pid and
# ftkv_port go to, the sourcing script.
# Sourced by the bench scripts: starts an ftkv cluster of 3 local servers on free ports.
#
# start_ftkv DIR [COORD FLAGS...]: runs target/release/coord in DIR (cluster file, coord.out,
# coord.log there) with the flags given (e.g. --fsync always) and waits until the cluster is
# ready; sets coord_pid and ftkv_port. Exits with the coordinator's output if it does not
# start. Needs `root` (the repository) and `log`.
start_ftkv() {
    local dir=$1
    shift
    printf '3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n' >"$dir/cluster.txt"
    (cd "$dir" && exec "$root/target/release/coord" -c 0 -s 0 -C cluster.txt --ignore-stdin \
        -l coord.log "$@" >coord.out 2>&1) &
    coord_pid=$!
    for _ in $(seq 200); do
        grep -q '^cluster ready' "$dir/coord.out" 2>/dev/null && break
        kill -0 "$coord_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^cluster ready' "$dir/coord.out" \
        || { log "ftkv did not start:"; cat "$dir/coord.out" "$dir/coord.log" >&2; exit 1; }
    ftkv_port=$(sed -n 's/^ftkv coordinator: clients port \([0-9]*\),.*/\1/p' "$dir/coord.out")
}
