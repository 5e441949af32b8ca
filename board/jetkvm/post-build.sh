#!/usr/bin/env bash
# Post-build script for the JetKVM system image (Buildroot's
# BR2_ROOTFS_POST_BUILD_SCRIPT; scripts/build-image runs it too).
# $1: the target root directory. VERSION (optional): the system version.
set -euo pipefail

main() {
    local target="${1:?usage: post-build.sh TARGET_DIR}"
    # The persistent partition is mounted here (see etc/fstab).
    mkdir -p "$target/userdata"
    # Buildroot's skeleton links these into tmpfs; keep it so for any rootfs.
    mkdir -p "$target/var"
    [[ -e "$target/var/run" ]] || ln -s ../run "$target/var/run"
    [[ -e "$target/var/log" ]] || ln -s ../tmp "$target/var/log"
    # The device's system version, read by jetkvm_device_info.
    printf '%s\n' "${VERSION:-${BR2_VERSION:-dev}}" >"$target/version"
}

main "$@"
