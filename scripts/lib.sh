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

# device_hash PASSWORD: bcrypt in the device's form. Go writes $2a$ at
# cost 10; mkpasswd (Debian's whois) writes the same algorithm as $2b$. The
# password goes through stdin: it may begin with "-", and stays out of argv.
device_hash() {
    local h
    h="$(printf '%s' "$1" | mkpasswd -m bcrypt -R 10 --stdin)"
    printf '%s\n' "\$2a\$${h#\$2b\$}"
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# rss_kib PID: resident memory of a process, KiB.
rss_kib() {
    awk '/^Rss:/ {print $2}' "/proc/$1/smaps_rollup"
}

# bound_addr PORTS_FILE PID [ROLE]: the address a daemon started with
# `serve --ports-file PORTS_FILE` listens on for ROLE (default general),
# once it has written the file; fails if PID exits or 20 s pass first.
bound_addr() {
    local file="$1" pid="$2" role="${3:-general}" i
    for ((i = 0; i < 200; i++)); do
        if [[ -s "$file" ]]; then
            awk -v r="$role" '$1 == r {print $2}' "$file"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
