#!/usr/bin/env bash
# The servers that the outbox publisher tests need, on 127.0.0.1 only:
#   tansu (Kafka protocol, in-memory storage)  -> MINK_KAFKA_BROKERS=127.0.0.1:9092
#   moto  (SNS and SQS)                        -> MINK_SNS_ENDPOINT=http://127.0.0.1:5000
#
#   scripts/services.sh start    install what is missing, start both, wait for their
#                                ports, print the `export` lines (stdout; logs go to
#                                stderr), so:  eval "$(scripts/services.sh start)"
#   scripts/services.sh stop     stop exactly the processes `start` started
#   scripts/services.sh status   say what runs
#   scripts/services.sh env      print the `export` lines only
#
# Idempotent: a service this script started and that still runs is left running.
# It never touches a process it did not start: it kills only the PIDs it recorded in
# its state directory, after checking that each still runs the program it started.
#
# Settings (environment):
#   MINK_SERVICES_DIR      state directory (PIDs, logs)     default ${TMPDIR:-/tmp}/mink-services
#   MINK_KAFKA_PORT        tansu's port                      default 9092
#   MINK_SNS_PORT          moto's port                       default 5000
#   MINK_SERVICES_TIMEOUT  seconds to wait for each port     default 60
set -euo pipefail

STATE_DIR="${MINK_SERVICES_DIR:-${TMPDIR:-/tmp}/mink-services}"
KAFKA_PORT="${MINK_KAFKA_PORT:-9092}"
SNS_PORT="${MINK_SNS_PORT:-5000}"
TIMEOUT="${MINK_SERVICES_TIMEOUT:-60}"
TANSU_VERSION="0.6.0"
MOTO_VERSION="5.2.1"
TANSU="${HOME}/.cargo/bin/tansu"

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_file() { printf '%s/%s.pid\n' "$STATE_DIR" "$1"; }

# The PID recorded for service $1 when that process still runs the program we started
# (its command line contains $2); nothing otherwise.
live_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"; then
        printf '%s\n' "$pid"
    fi
}

install_tansu() {
    [[ -x "$TANSU" ]] && return 0
    mkdir -p "$STATE_DIR"
    log "installing tansu ${TANSU_VERSION} with cargo (about 20 minutes on 2 cores; log: $STATE_DIR/tansu-install.log)"
    # Built in cargo's own temporary directory, not in a shared CARGO_TARGET_DIR.
    if ! env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
        --no-default-features --features dynostore >"$STATE_DIR/tansu-install.log" 2>&1; then
        tail -n 30 "$STATE_DIR/tansu-install.log" >&2
        die "cargo install tansu failed (log: $STATE_DIR/tansu-install.log)"
    fi
    [[ -x "$TANSU" ]] || die "cargo install tansu finished, but $TANSU is missing"
}

# The command that starts moto's server, as an array in MOTO_CMD.
moto_command() {
    if command -v moto_server >/dev/null 2>&1; then
        MOTO_CMD=(moto_server)
    elif python3 -c 'import moto.server' >/dev/null 2>&1; then
        MOTO_CMD=(python3 -m moto.server)
    else
        log "installing moto[server]==${MOTO_VERSION} with pip"
        python3 -m pip install --quiet "moto[server]==${MOTO_VERSION}" >&2 \
            || die "pip install 'moto[server]==${MOTO_VERSION}' failed"
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
        # The module form works whether or not a shim for the script exists yet.
        MOTO_CMD=(python3 -m moto.server)
    fi
}

# start_service NAME MATCH PORT COMMAND...: starts COMMAND in the background unless our
# own instance already runs, then waits until PORT accepts connections.
start_service() {
    local name="$1" match="$2" port="$3"
    shift 3
    local pid logf
    logf="$STATE_DIR/$name.log"
    pid="$(live_pid "$name" "$match")"
    if [[ -n "$pid" ]]; then
        log "$name already runs (pid $pid, started by this script)"
    else
        rm -f "$(pid_file "$name")"
        if port_open "$port"; then
            die "127.0.0.1:$port is already in use by a process this script did not start; stop it, or choose another port (MINK_KAFKA_PORT / MINK_SNS_PORT)"
        fi
        log "starting $name on 127.0.0.1:$port (log: $logf)"
        # No OTLP export from tansu: the network stays on this machine.
        nohup env -u OTEL_EXPORTER_OTLP_ENDPOINT "$@" >"$logf" 2>&1 </dev/null &
        pid=$!
        disown "$pid" 2>/dev/null || true
        printf '%s\n' "$pid" >"$(pid_file "$name")"
    fi
    local waited=0
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            rm -f "$(pid_file "$name")"
            die "$name exited before listening on 127.0.0.1:$port (log: $logf)"
        fi
        if ((waited >= TIMEOUT * 10)); then
            tail -n 30 "$logf" >&2 || true
            die "$name (pid $pid) did not listen on 127.0.0.1:$port within ${TIMEOUT}s (log: $logf); stop it with: $0 stop"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "$name ready on 127.0.0.1:$port"
}

print_env() {
    printf 'export MINK_KAFKA_BROKERS=127.0.0.1:%s\n' "$KAFKA_PORT"
    printf 'export MINK_SNS_ENDPOINT=http://127.0.0.1:%s\n' "$SNS_PORT"
}

cmd_start() {
    mkdir -p "$STATE_DIR"
    install_tansu
    moto_command
    start_service tansu "tansu broker" "$KAFKA_PORT" \
        "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine "memory://tansu/"
    start_service moto "moto" "$SNS_PORT" \
        "${MOTO_CMD[@]}" -H 127.0.0.1 -p "$SNS_PORT"
    print_env
}

# stop_service NAME MATCH: stops the process this script started, if it still runs.
stop_service() {
    local name="$1" match="$2" pid
    pid="$(live_pid "$name" "$match")"
    if [[ -z "$pid" ]]; then
        [[ -f "$(pid_file "$name")" ]] && log "$name: recorded process no longer runs"
        rm -f "$(pid_file "$name")"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$(pid_file "$name")"
}

cmd_stop() {
    stop_service moto "moto"
    stop_service tansu "tansu broker"
}

cmd_status() {
    local name match pid
    for pair in "tansu:tansu broker" "moto:moto"; do
        name="${pair%%:*}"
        match="${pair#*:}"
        pid="$(live_pid "$name" "$match")"
        if [[ -n "$pid" ]]; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not started by this script"
        fi
    done
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) print_env ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
