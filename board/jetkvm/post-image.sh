#!/usr/bin/env bash
# Post-image script for the JetKVM system image (Buildroot's
# BR2_ROOTFS_POST_IMAGE_SCRIPT; scripts/build-image runs it too).
# $1: the images directory, holding rootfs.ext4. Writes system.img and
# system.img.sha256, the form in which the device's system partition is
# updated (the update is checked against the SHA-256 before it is written).
set -euo pipefail

main() {
    local images="${1:?usage: post-image.sh BINARIES_DIR}"
    cp "$images/rootfs.ext4" "$images/system.img"
    (cd "$images" && sha256sum system.img >system.img.sha256)
}

main "$@"
