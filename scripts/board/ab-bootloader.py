#!/usr/bin/env python3
"""The emulated board's bootloader, standing outside the board as the
device's U-Boot does: reads the A/B record (libavb's AvbABData) at byte 2048
of the `misc` partition of the board's GPT disk, picks the slot to boot as
libavb's A/B flow does, takes that slot's kernel and initramfs out of its
`boot_a`/`boot_b` partition (boot.img: a tar of vmlinuz and initrd.cpio.gz),
and boots QEMU with androidboot.slot_suffix=_a or _b on the kernel command
line. QEMU runs with -no-reboot: a reboot in the board ends QEMU and the
loop boots again; a power-off ends the loop. The QEMU command comes from
scripts/board/boot-board and carries the board's QMP control socket
(-qmp unix:STATE/qmp.sock,server=on,wait=off, beside STATE/console.sock and
the console log): each QEMU the loop starts opens it again at the same path,
so `set_link` on netdev net0 reaches whichever boot is running (between two
boots nothing listens there).

usage: scripts/board/ab-bootloader.py init DISK     factory state: slot a good, slot b empty
       scripts/board/ab-bootloader.py show DISK     the record, as JSON
       scripts/board/ab-bootloader.py select DISK   one pass of the A/B flow (updates the record)
       scripts/board/ab-bootloader.py boot DISK --console-log FILE -- QEMU-COMMAND...

The flow, as libavb's avb_ab_flow: a record with a bad magic, an unknown
major version or a wrong CRC is replaced by the default (slot a priority 15,
slot b 14, 7 tries each); unbootable and illegal slot states are normalized
(priority 0); a bootable slot whose boot.img cannot be read is marked
unbootable; the bootable slot with the higher priority boots (a on a tie);
its tries_remaining drops by one while it is unconfirmed; a slot with no
tries left and unconfirmed is unbootable, so the other slot boots.
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

SECTOR = 512
RECORD_OFFSET = 2048
MAGIC = b"\0AB0"
MAJOR, MINOR = 1, 0
MAX_PRIORITY, MAX_TRIES = 15, 7
SLOTS = ("a", "b")


def partitions(disk):
    """{name: (offset, size)} from the GPT of the disk image."""
    with open(disk, "rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if header[:8] != b"EFI PART":
            raise SystemExit(f"ab-bootloader: {disk}: no GPT")
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    parts = {}
    for i in range(count):
        e = table[i * entry_size:(i + 1) * entry_size]
        first, last = struct.unpack_from("<QQ", e, 32)
        if first == 0:
            continue
        name = e[56:128].decode("utf-16-le").rstrip("\0")
        parts[name] = (first * SECTOR, (last - first + 1) * SECTOR)
    return parts


def read_part(disk, parts, name, offset, length):
    start, size = parts[name]
    with open(disk, "rb") as f:
        f.seek(start + offset)
        return f.read(min(length, size - offset))


def write_part(disk, parts, name, offset, data):
    start, _ = parts[name]
    with open(disk, "r+b") as f:
        f.seek(start + offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def default_record():
    return {"raw": bytearray(MAGIC + bytes([MAJOR, MINOR]) + bytes(26)),
            "a": [MAX_PRIORITY, MAX_TRIES, 0], "b": [MAX_PRIORITY - 1, MAX_TRIES, 0]}


def parse(raw):
    """The record in raw (32 bytes), or (None, why) if it is invalid."""
    if len(raw) != 32:
        return None, "short read"
    if raw[:4] != MAGIC:
        return None, "bad magic"
    if raw[4] > MAJOR:
        return None, f"major version {raw[4]}"
    if zlib.crc32(raw[:28]) != struct.unpack(">I", raw[28:32])[0]:
        return None, "CRC mismatch"
    return {"raw": bytearray(raw[:28]), "a": list(raw[8:11]), "b": list(raw[12:15])}, None


def serialize(rec):
    raw = bytearray(rec["raw"][:28])
    raw[8:11], raw[12:15] = bytes(rec["a"]), bytes(rec["b"])
    return bytes(raw) + struct.pack(">I", zlib.crc32(bytes(raw)))


def load(disk, parts, log):
    rec, why = parse(read_part(disk, parts, "misc", RECORD_OFFSET, 32))
    if rec is None:
        log(f"A/B record invalid ({why}): resetting it to the default")
        rec = default_record()
        write_part(disk, parts, "misc", RECORD_OFFSET, serialize(rec))
    return rec


def bootable(slot):
    priority, tries, ok = slot
    return priority > 0 and (ok == 1 or tries > 0)


def normalize(slot):
    priority, tries, ok = slot
    if priority == 0 or (tries == 0 and not ok) or (tries > 0 and ok):
        slot[:] = [0, 0, 0]


def boot_files(disk, parts, s):
    """(vmlinuz, initrd) from boot_<s>, or None if it holds no boot.img."""
    name = f"boot_{s}"
    if name not in parts or f"system_{s}" not in parts:
        return None
    data = read_part(disk, parts, name, 0, parts[name][1])
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            return t.extractfile("vmlinuz").read(), t.extractfile("initrd.cpio.gz").read()
    except (tarfile.TarError, KeyError, AttributeError):
        return None


def flow(disk, log):
    """One pass of the A/B flow: (slot, vmlinuz, initrd) or None."""
    parts = partitions(disk)
    rec = load(disk, parts, log)
    before = serialize(rec)
    for s in SLOTS:
        normalize(rec[s])
    files = {}
    for s in SLOTS:
        if bootable(rec[s]):
            files[s] = boot_files(disk, parts, s)
            if files[s] is None:
                log(f"slot _{s}: no readable boot.img in boot_{s}: marking it unbootable")
                rec[s] = [0, 0, 0]
    chosen = None
    if bootable(rec["a"]) and bootable(rec["b"]):
        chosen = "b" if rec["b"][0] > rec["a"][0] else "a"
    elif bootable(rec["a"]):
        chosen = "a"
    elif bootable(rec["b"]):
        chosen = "b"
    if chosen and not rec[chosen][2] and rec[chosen][1] > 0:
        rec[chosen][1] -= 1
    if serialize(rec) != before:
        write_part(disk, parts, "misc", RECORD_OFFSET, serialize(rec))
    if chosen is None:
        log("no bootable slot")
        return None
    p, t, ok = rec[chosen]
    log(f"A/B slot _{chosen}: priority {p}, successful {ok}, tries remaining {t}")
    return (chosen,) + files[chosen]


def show(disk):
    parts = partitions(disk)
    rec, why = parse(read_part(disk, parts, "misc", RECORD_OFFSET, 32))
    if rec is None:
        return {"valid": False, "why": why}
    return {"valid": True, **{s: dict(zip(("priority", "tries", "successful"), rec[s])) for s in SLOTS}}


def init(disk):
    parts = partitions(disk)
    rec = default_record()
    rec["a"], rec["b"] = [MAX_PRIORITY, 0, 1], [0, 0, 0]
    write_part(disk, parts, "misc", RECORD_OFFSET, serialize(rec))


def boot(disk, console_log, qemu):
    child = None
    stopping = []

    def log(msg):
        line = f"ab-bootloader: {msg}\n"
        sys.stderr.write(line)
        with open(console_log, "a") as f:
            f.write(line)

    # Only signal QEMU here: the main loop is inside child.wait(), which a
    # second wait from a handler would deadlock on.
    def stop(*_):
        stopping.append(True)
        if child:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with tempfile.TemporaryDirectory(prefix="ab-boot-") as tmp:
        while not stopping:
            chosen = flow(disk, log)
            if chosen is None:
                return 1
            slot, kernel, initrd = chosen
            for name, data in (("vmlinuz", kernel), ("initrd.cpio.gz", initrd)):
                with open(f"{tmp}/{name}", "wb") as f:
                    f.write(data)
            start = os.path.getsize(console_log) if os.path.exists(console_log) else 0
            child = subprocess.Popen(qemu + [
                "-kernel", f"{tmp}/vmlinuz", "-initrd", f"{tmp}/initrd.cpio.gz",
                "-append", f"console=ttyAMA0 panic=5 androidboot.slot_suffix=_{slot}"])
            code = child.wait()
            if stopping:
                log("stopped")
                return 143
            with open(console_log, "rb") as f:
                f.seek(start)
                said = f.read().decode(errors="replace")
            # A reboot, a panic's, or a watchdog's (softdog says so).
            if any(m in said for m in ("reboot: Restarting system", "Rebooting in", "Initiating system reboot")):
                log("the board rebooted")
                continue
            log(f"the board powered off (QEMU exited {code})")
            return 0
    return 143


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "init":
        init(args[1])
        return 0
    if len(args) == 2 and args[0] == "show":
        print(json.dumps(show(args[1])))
        return 0
    if len(args) == 2 and args[0] == "select":
        chosen = flow(args[1], lambda m: sys.stderr.write(f"ab-bootloader: {m}\n"))
        print(chosen[0] if chosen else "none")
        return 0 if chosen else 1
    if len(args) >= 5 and args[0] == "boot" and args[2] == "--console-log" and args[4] == "--":
        return boot(args[1], args[3], args[5:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
