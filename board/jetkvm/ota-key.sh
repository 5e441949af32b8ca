#!/usr/bin/env bash
# The system update's OpenPGP signing key, with Debian's GnuPG in a
# throwaway home (the caller's keyrings are never touched). Used by
# post-build.sh (the public key pinned in the image), post-image.sh (the
# detached signature of system.tar) and scripts/build/build-ota.
#   ota-key.sh new KEYFILE        a new unprotected Ed25519 signing key
#   ota-key.sh public KEYFILE OUT the binary public key, for gpgv --keyring
#   ota-key.sh sign KEYFILE FILE  FILE.sig, a detached binary signature
# KEYFILE is an exported secret key (armored or not). A passphrase, if the
# key has one, is read from the file JETKVM_OTA_PASSPHRASE_FILE.
set -euo pipefail

usage() {
    sed -n '6,11s/^# //p' "${BASH_SOURCE[0]}"
}

HOME_DIR=""

cleanup() {
    if [[ -n "$HOME_DIR" ]]; then
        gpgconf --homedir "$HOME_DIR" --kill all 2>/dev/null || true
        rm -rf "$HOME_DIR"
    fi
}

gpg_() {
    local pass=()
    [[ -n "${JETKVM_OTA_PASSPHRASE_FILE:-}" ]] &&
        pass=(--pinentry-mode loopback --passphrase-file "$JETKVM_OTA_PASSPHRASE_FILE")
    gpg --homedir "$HOME_DIR" --batch --quiet --no-tty "${pass[@]}" "$@"
}

main() {
    command -v gpg >/dev/null || { echo "ota-key.sh: gpg missing (run scripts/setup)" >&2; exit 1; }
    local cmd="${1:-}" key="${2:-}"
    [[ -n "$key" ]] || { usage >&2; exit 2; }
    HOME_DIR="$(mktemp -d)"
    trap cleanup EXIT
    case "$cmd" in
        new)
            [[ $# == 2 ]] || { usage >&2; exit 2; }
            gpg_ --passphrase '' --quick-gen-key "jetkvm-metrics system update <ota@jetkvm.invalid>" ed25519 sign never
            (umask 077 && gpg_ --armor --export-secret-keys >"$key")
            ;;
        public)
            [[ $# == 3 ]] || { usage >&2; exit 2; }
            gpg_ --import "$key"
            gpg_ --export >"$3"
            [[ -s "$3" ]] || { echo "ota-key.sh: no key in $key" >&2; exit 1; }
            ;;
        sign)
            [[ $# == 3 ]] || { usage >&2; exit 2; }
            gpg_ --import "$key"
            gpg_ --yes --detach-sign --output "$3.sig" "$3"
            ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
