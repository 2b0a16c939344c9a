#!/usr/bin/env bash
# The example cluster on one machine: three orchestrators, two regions (us-east, eu-west) with
# one agent each, the sample service `shop`. With no argument it does the whole tour and exits
# 0 only if both outcomes were seen:
#
#   1. issues the certificates and the API token (`umbra certs init`),
#   2. starts the three orchestrators and the two agents, logs under the state directory,
#   3. waits for a leader, applies plan.toml and waits until us-east serves shop,
#   4. migrates shop to eu-west (`umbra migrate shop --to eu-west --at now`) and follows it
#      until it has completed,
#   5. migrates it back to us-east and, once the cutover has begun, rolls that back
#      (`umbra rollback ID --reason drill`), and follows it until it has rolled back,
#   6. prints a summary, and stops every process it started (also on failure or Ctrl-C).
#
#   bash examples/cluster/run.sh        # the whole tour
#   bash examples/cluster/run.sh up     # steps 1-3, then keeps the cluster up until Ctrl-C,
#                                       # for trying the `umbra` commands by hand
#
# Environment:
#   UMBRA_BIN_DIR             where umbra, umbra-orchestrator, umbra-agent and umbra-sample
#                             are (default: target/release of this repository if built there,
#                             else the PATH); build them with `cargo build --release --bins`
#   UMBRA_EXAMPLE_DIR         state directory: certificates, data, configs and logs (default:
#                             a new /tmp/umbra-example.XXXXXX); must be empty or absent
#   UMBRA_EXAMPLE_PORT_BASE   ports are BASE+1.. (default 17100: 17101-17103 Raft/agents,
#                             17111-17113 API, 17121-17123 admin, 17131-17133 DNS, 17141-17142
#                             agent metrics, 17180 the fronts on 127.0.0.11 and 127.0.0.12)
#   UMBRA_EXAMPLE_WAIT_SECS   longest wait for each step (default 180)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
mode=${1:-tour}
case "$mode" in
tour | up) ;;
*)
    echo "usage: bash examples/cluster/run.sh [up]   (no argument: the whole tour; up: start and keep running)" >&2
    exit 2
    ;;
esac

wait_secs=${UMBRA_EXAMPLE_WAIT_SECS:-180}
port_base=${UMBRA_EXAMPLE_PORT_BASE:-17100}
if ! [[ $port_base =~ ^[0-9]+$ ]] || ((port_base < 1024 || port_base > 65435)); then
    echo "error: UMBRA_EXAMPLE_PORT_BASE=$port_base: give a number from 1024 to 65435 (ports BASE+1..BASE+99 are used)" >&2
    exit 2
fi
if ! [[ $wait_secs =~ ^[0-9]+$ ]] || ((wait_secs == 0)); then
    echo "error: UMBRA_EXAMPLE_WAIT_SECS=$wait_secs: give a whole number of seconds, more than 0" >&2
    exit 2
fi
for tool in jq curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is needed (jq reads \`umbra status --json\`, curl writes and reads the sample data): apt-get install $tool" >&2
        exit 2
    fi
done

# The binaries: UMBRA_BIN_DIR, else this repository's release build, else the PATH.
binaries=(umbra umbra-orchestrator umbra-agent umbra-sample)
if [[ -n ${UMBRA_BIN_DIR:-} ]]; then
    bin_dir=$(cd "$UMBRA_BIN_DIR" 2>/dev/null && pwd) || {
        echo "error: UMBRA_BIN_DIR=$UMBRA_BIN_DIR is not a directory" >&2
        exit 2
    }
elif [[ -x $repo/target/release/umbra-orchestrator ]]; then
    bin_dir=$repo/target/release
elif command -v umbra-orchestrator >/dev/null; then
    bin_dir=$(dirname "$(command -v umbra-orchestrator)")
else
    echo "error: no umbra-orchestrator in $repo/target/release or on the PATH: build the binaries with \`cargo build --release --bins\` (or set UMBRA_BIN_DIR to where they are)" >&2
    exit 2
fi
for binary in "${binaries[@]}"; do
    if [[ ! -x $bin_dir/$binary ]]; then
        echo "error: $bin_dir/$binary is missing: build the binaries with \`cargo build --release --bins\` (umbra-agent runs the umbra-sample next to it)" >&2
        exit 2
    fi
done
umbra=$bin_dir/umbra

# The state directory, empty, by its physical path: the agents' instances carry it in their
# environment, which is how they are found when the example stops.
if [[ -n ${UMBRA_EXAMPLE_DIR:-} ]]; then
    mkdir -p "$UMBRA_EXAMPLE_DIR"
    if [[ -n $(ls -A "$UMBRA_EXAMPLE_DIR") ]]; then
        echo "error: UMBRA_EXAMPLE_DIR=$UMBRA_EXAMPLE_DIR is not empty: name a new directory (a cluster's certificates and Raft data cannot be reused by a new run)" >&2
        exit 2
    fi
    state=$(cd "$UMBRA_EXAMPLE_DIR" && pwd -P)
else
    state=$(cd "$(mktemp -d /tmp/umbra-example.XXXXXX)" && pwd -P)
fi
cd "$state"

say() { echo "[$(date -u +%H:%M:%S)] $*"; }

# --- stopping: every process started here, then the instances the agents started ----------

pids=()
names=()

reap_instances() {
    # Sample instances run in sessions of their own so that a restarted agent adopts them;
    # they carry UMBRA_PROVIDER_STATE=<an agent's state dir>, which lies under $state.
    local environ pid var
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        {
            while IFS= read -r -d '' var; do
                if [[ $var == "UMBRA_PROVIDER_STATE=$state/"* ]]; then
                    kill -KILL "$pid" || true
                    break
                fi
            done <"$environ"
        } 2>/dev/null || true
    done
}

stop_all() {
    local status=$? i deadline
    trap - EXIT INT TERM
    if ((${#pids[@]} > 0)); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        for i in "${!pids[@]}"; do
            while kill -0 "${pids[$i]}" 2>/dev/null && ((SECONDS < deadline)); do
                sleep 0.1
            done
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            wait "${pids[$i]}" 2>/dev/null || true
        done
    fi
    reap_instances
    say "stopped every process the example started; configs and logs are in $state"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    local i
    echo "error: $*" >&2
    for i in "${!names[@]}"; do
        echo "--- the end of ${names[$i]}'s log ($state/${names[$i]}.log):" >&2
        tail -n 15 "$state/${names[$i]}.log" >&2 || true
    done
    exit 1
}

# Starts "$@" in the background as $1's name, its output into NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$state/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

# Fails if a process started here has exited: nothing would come of waiting on.
check_alive() {
    local i
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            fail "${names[$i]} exited; see its log below"
        fi
    done
}

# --- the files: copied from examples/cluster, ports moved to the chosen base ---------------

# Every port 171NN becomes BASE+NN, in one pass (a port is marked first, so that a new port
# is never moved again by a later expression).
render() {
    local expressions=(-e 's/\b171\([0-9][0-9]\)\b/@PORT\1@/g') n
    for n in $(seq -w 0 99); do
        expressions+=(-e "s/@PORT$n@/$((port_base + 10#$n))/g")
    done
    sed "${expressions[@]}" "$here/$1" >"$state/$1"
}
for file in node-1.toml node-2.toml node-3.toml agent-us-east.toml agent-eu-west.toml plan.toml; do
    render "$file"
done

api_port() { echo $((port_base + 10 + $1)); }
for port in $(api_port 1) $(api_port 2) $(api_port 3) $((port_base + 21)) $((port_base + 22)) \
    $((port_base + 23)) $((port_base + 41)) $((port_base + 42)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "127.0.0.1:$port is in use by another program: set UMBRA_EXAMPLE_PORT_BASE to another base (e.g. 27100)"
    fi
done
for ip in 127.0.0.11 127.0.0.12; do
    if (exec 3<>"/dev/tcp/$ip/$((port_base + 80))") 2>/dev/null; then
        fail "$ip:$((port_base + 80)) is in use by another program: set UMBRA_EXAMPLE_PORT_BASE to another base (e.g. 27100)"
    fi
done

say "state directory: $state (binaries from $bin_dir)"

# --- 1. certificates and the API token ----------------------------------------------------

"$umbra" certs init --out certs --orchestrators 3 --regions us-east,eu-west --operators admin >certs.log
say "issued the CA, the members' certificates and the API token (certs/api-token)"
export UMBRA_API=https://127.0.0.1:$(api_port 1)
export UMBRA_CERTS=$state/certs
export RUST_LOG=${RUST_LOG:-info}

# --- 2. three orchestrators and two agents ------------------------------------------------

for n in 1 2 3; do
    start "node-$n" "$bin_dir/umbra-orchestrator" --config "node-$n.toml"
done
for region in us-east eu-west; do
    start "agent-$region" "$bin_dir/umbra-agent" run --config "agent-$region.toml"
done
say "started orchestrators 1-3 (API https://127.0.0.1:$(api_port 1)..$(api_port 3)) and the agents of us-east and eu-west"

# --- 3. a leader, the plan, the service serving in us-east --------------------------------

# Polls "$@" every second until it succeeds, for up to UMBRA_EXAMPLE_WAIT_SECS; $1 says what.
wait_until() {
    local what=$1 deadline=$((SECONDS + wait_secs))
    shift
    until "$@"; do
        check_alive
        if ((SECONDS >= deadline)); then
            fail "$what did not happen within $wait_secs s"
        fi
        sleep 1
    done
}

status_json() { "$umbra" status --json 2>/dev/null; }

has_leader() {
    leader=$(status_json | jq -er '.leader.leader // empty') || return 1
}
wait_until "a leader elected" has_leader
say "orchestrator $leader leads"

"$umbra" apply -f plan.toml
say "applied plan.toml"

# Pools are shown by the leader only, so this asks the leader's API.
serving_in() {
    local region=$1 lead
    lead=$(status_json | jq -er '.leader.leader // empty') || return 1
    UMBRA_API=https://127.0.0.1:$(api_port "$lead") "$umbra" status --json 2>/dev/null |
        jq -e --arg region "$region" \
            'any(.pools[]; .service == "shop" and .region == $region and .actual.warm >= 1)' \
            >/dev/null
}
wait_until "shop serving in us-east" serving_in us-east
front_us_east=http://127.0.0.11:$((port_base + 80))
front_eu_west=http://127.0.0.12:$((port_base + 80))
# The data to move: the keys the plan's warm-up reads (key-0 .. key-499), written through the
# us-east front. A shadow is warmed on data it already holds (replication starts first), so a
# warm-up of absent keys would measure nothing.
curl -sS --fail --fail-early -X PUT --data seeded "$front_us_east/kv/key-[0-499]" >/dev/null ||
    fail "writing key-0..key-499 through the us-east front $front_us_east failed"
say "shop is served in us-east ($front_us_east); wrote key-0 .. key-499 through it"

if [[ $mode == up ]]; then
    say "the cluster is up; in another shell:"
    echo "  export UMBRA_API=$UMBRA_API UMBRA_CERTS=$UMBRA_CERTS PATH=$bin_dir:\$PATH"
    echo "  umbra status; umbra migrate shop --to eu-west --at now; umbra status --watch"
    say "Ctrl-C stops everything"
    wait
    exit 0
fi

# --- 4 and 5: a migration to completion, then one rolled back -----------------------------

# The newest migration of shop that has not ended.
active_migration() {
    id=$(status_json | jq -er \
        'first(.migrations[] | select(.service == "shop" and (.terminal | not)) | .id)') ||
        return 1
}

phase_of() { status_json | jq -er --arg id "$1" '.migrations[] | select(.id == $id) | .phase'; }

# Prints each phase of migration $1 as it is reached; returns once $2 (a jq test on the
# phase, e.g. `. == "completed"`) holds or the migration has ended.
follow() {
    local id=$1 until=$2 deadline=$((SECONDS + wait_secs)) last="" now
    while true; do
        check_alive
        if now=$(phase_of "$id"); then
            if [[ $now != "$last" ]]; then
                say "$id: $now"
                last=$now
            fi
            if jq -en --arg p "$now" "\$p | ($until) or IN(\"completed\", \"rolled_back\", \"failed\")" >/dev/null; then
                phase=$now
                return 0
            fi
        fi
        if ((SECONDS >= deadline)); then
            fail "migration $id is still $last after $wait_secs s"
        fi
        sleep 0.5
    done
}

started=$SECONDS
"$umbra" migrate shop --to eu-west --at now
wait_until "the migration to appear" active_migration
first=$id
follow "$first" '. == "completed"'
first_phase=$phase
first_secs=$((SECONDS - started))
if [[ $first_phase != completed ]]; then
    fail "migration $first to eu-west ended $first_phase, not completed"
fi
wait_until "shop serving in eu-west" serving_in eu-west
read_back=$(curl -sS --fail --fail-early "$front_eu_west/kv/key-[0-499]" | grep -o seeded | wc -l) ||
    fail "reading key-0..key-499 through the eu-west front $front_eu_west failed"
if ((read_back != 500)); then
    fail "of key-0..key-499 written in us-east, $read_back read back through the eu-west front"
fi
say "shop is served in eu-west ($front_eu_west); key-0 .. key-499 read back through it"

started=$SECONDS
"$umbra" migrate shop --to us-east --at now
wait_until "the migration to appear" active_migration
second=$id
follow "$second" 'startswith("cutting_over")'
rolled_back_in=$phase
if [[ $rolled_back_in != cutting_over* ]]; then
    fail "migration $second ended $rolled_back_in before its cutover began; nothing to roll back"
fi
"$umbra" rollback "$second" --reason drill
follow "$second" 'false'
second_phase=$phase
second_secs=$((SECONDS - started))
if [[ $second_phase != rolled_back ]]; then
    fail "migration $second ended $second_phase after the rollback, not rolled_back"
fi

# --- 6. summary ---------------------------------------------------------------------------

"$umbra" status
echo
say "summary: migration $first us-east → eu-west ended completed after $first_secs s"
say "summary: migration $second eu-west → us-east ended rolled_back after $second_secs s (rollback asked in $rolled_back_in)"
