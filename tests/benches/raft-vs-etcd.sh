#!/usr/bin/env bash
# Umbra's Raft against etcd's in one run (tests/benches/raft_bench): installs etcd from
# Debian (etcd-server) when it is missing, builds the release binaries, runs the bench.
# Arguments go to the bench, e.g. `bash tests/benches/raft-vs-etcd.sh --kills 20`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q 'install ok installed'; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "installing Debian's etcd-server" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends etcd-server >&2
    # The package starts a system etcd on the default ports; the bench runs its own.
    if command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

cargo build --release --workspace --bins
cargo bench -p umbra-tests --bench raft_bench -- "$@"
