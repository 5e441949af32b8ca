#!/usr/bin/env bash
# Post-image script for the JetKVM system image (Buildroot's
# BR2_ROOTFS_POST_IMAGE_SCRIPT; scripts/build/build-image runs it too).
# $1: the images directory, holding rootfs.ext4 and, for the emulated
# board, vmlinuz and initrd.cpio.gz. Writes:
#   system.img, system.img.sha256  the system partition
#   boot.img                       the emulated board's boot partition: a
#                                  tar of vmlinuz and initrd.cpio.gz
#   system.tar                     the update as the device flashes it: the
#                                  raw partition images at the top level
#   system.tar.sha256              its SHA-256, as the device checks it
#   system.tar.sig                 with JETKVM_OTA_SIGNING_KEY (a secret key
#                                  file): its detached OpenPGP signature
# SOURCE_DATE_EPOCH (optional) fixes the tar's timestamps.
set -euo pipefail

# A tar with fixed owners, order and times: the same inputs give the same
# bytes, hence the same hash.
pack() {
    local dir="$1" out="$2"
    shift 2
    tar --format=ustar --owner=0 --group=0 --numeric-owner --sort=name \
        --mtime="@${SOURCE_DATE_EPOCH:-0}" -C "$dir" -cf "$out" "$@"
}

main() {
    local images="${1:?usage: post-image.sh BINARIES_DIR}"
    cp "$images/rootfs.ext4" "$images/system.img"
    (cd "$images" && sha256sum system.img >system.img.sha256)

    local parts=(system.img)
    rm -f "$images/boot.img"
    if [[ -f "$images/vmlinuz" && -f "$images/initrd.cpio.gz" ]]; then
        pack "$images" "$images/boot.img" vmlinuz initrd.cpio.gz
        parts=(boot.img system.img)
    else
        echo "post-image.sh: no vmlinuz and initrd.cpio.gz: system.tar holds system.img only" >&2
    fi
    pack "$images" "$images/system.tar" "${parts[@]}"
    (cd "$images" && sha256sum system.tar | cut -d' ' -f1 >system.tar.sha256)
    rm -f "$images/system.tar.sig"
    if [[ -n "${JETKVM_OTA_SIGNING_KEY:-}" ]]; then
        "$(dirname "${BASH_SOURCE[0]}")/ota-key.sh" sign "$JETKVM_OTA_SIGNING_KEY" "$images/system.tar"
    else
        echo "post-image.sh: no JETKVM_OTA_SIGNING_KEY: system.tar is not signed" >&2
    fi
}

main "$@"
