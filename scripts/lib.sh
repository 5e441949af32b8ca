# shellcheck shell=bash
# What the scripts share; sourced, never run:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# need COMMAND [DEBIAN_PACKAGE]: stops the script with one line if COMMAND
# is missing.
need() {
    command -v "$1" >/dev/null && return 0
    echo "${0##*/}: $1 missing (${2:+apt-get install $2, or }run scripts/setup)" >&2
    exit 1
}

# The helpers the Python tests have too, from their one implementation
# (tests/e2e/lib.py).
E2E_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e" && pwd)/lib.py"

# device_hash PASSWORD: bcrypt in the device's form ($2a$, cost 10). The
# password goes through stdin: it may begin with "-", and stays out of argv.
device_hash() {
    printf '%s' "$1" | python3 "$E2E_LIB" device-hash
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 "$E2E_LIB" free-port
}

# rss_kib PID: resident memory of a process, KiB.
rss_kib() {
    python3 "$E2E_LIB" rss-kib "$1"
}

# bound_addr PORTS_FILE PID [ROLE]: the address a daemon started with
# `serve --ports-file PORTS_FILE` listens on for ROLE (default general),
# once it has written the file; fails if PID exits or 20 s pass first.
bound_addr() {
    python3 "$E2E_LIB" bound-addr "$@"
}
