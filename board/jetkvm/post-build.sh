#!/usr/bin/env bash
# Post-build script for the JetKVM system image (Buildroot's
# BR2_ROOTFS_POST_BUILD_SCRIPT; scripts/build/build-image runs it too).
# $1: the target root directory. VERSION (optional): the system version.
# JETKVM_OTA_SIGNING_KEY (a secret key file) or JETKVM_OTA_PUBLIC_KEY (a
# public key file): the key system updates must be signed with, pinned in
# the image for /usr/sbin/jetkvm-ota. With neither, the image refuses every
# update.
set -euo pipefail

main() {
    local target="${1:?usage: post-build.sh TARGET_DIR}"
    # The persistent partition is mounted here (see etc/fstab).
    mkdir -p "$target/userdata"
    # Buildroot's skeleton links these into tmpfs; keep it so for any rootfs.
    # (-L too: the links dangle outside the board, and Buildroot runs this
    # again on every make.)
    mkdir -p "$target/var"
    [[ -e "$target/var/run" || -L "$target/var/run" ]] || ln -s ../run "$target/var/run"
    [[ -e "$target/var/log" || -L "$target/var/log" ]] || ln -s ../tmp "$target/var/log"
    # The device's system version, read by jetkvm_device_info.
    printf '%s\n' "${VERSION:-${BR2_VERSION:-dev}}" >"$target/version"
    local keyring="$target/etc/jetkvm/ota-key.gpg"
    rm -f "$keyring"
    if [[ -n "${JETKVM_OTA_SIGNING_KEY:-}" ]]; then
        mkdir -p "$target/etc/jetkvm"
        "$(dirname "${BASH_SOURCE[0]}")/ota-key.sh" public "$JETKVM_OTA_SIGNING_KEY" "$keyring"
    elif [[ -n "${JETKVM_OTA_PUBLIC_KEY:-}" ]]; then
        install -D -m 0644 "$JETKVM_OTA_PUBLIC_KEY" "$keyring"
    else
        echo "post-build.sh: no JETKVM_OTA_SIGNING_KEY or JETKVM_OTA_PUBLIC_KEY: this image refuses every system update" >&2
    fi
}

main "$@"
