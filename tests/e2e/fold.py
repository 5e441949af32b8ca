#!/usr/bin/env python3
"""scripts/build/fold-into-system on the stock-shaped board's release
(out/stock/system.tar, scripts/build/build-image --stock), checked from outside:
every file of the vendor's system the same (content, mode, owner, link
target), uboot.img and boot.img byte-identical, ours added as
buildroot/package/jetkvm-metrics/files.txt lists them, the result in the
device's format with its .sha256 (and .sig with a key); and the refusals,
each one line: a tar not in the device's format, a system.img that is not
ext4 or has no room, a release already folded.

usage: tests/e2e/fold.py
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, check, failed, RESULTS  # noqa: E402

FOLD = f"{ROOT}/scripts/build/fold-into-system"
STOCK = f"{ROOT}/out/stock/system.tar"


def fold(tar, out, *args, env=None):
    return subprocess.run([FOLD, *args, tar, out], capture_output=True, text=True, env=env)


def members(tar, into):
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
        return [m.name for m in t.getmembers()]


def tree(image, into):
    """{path: (kind, mode, uid, gid, content hash or link target)} of an ext4 image."""
    os.makedirs(into)
    subprocess.run(["debugfs", "-R", f"rdump / {into}", image], check=True, capture_output=True)
    out = {}
    for base, dirs, files in os.walk(into):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, into)
            if os.path.islink(path):
                what = ("link", os.readlink(path))
            elif os.path.isdir(path):
                what = ("dir", "")
            else:
                with open(path, "rb") as f:
                    what = ("file", hashlib.sha256(f.read()).hexdigest())
            out[rel] = (what[0], st.st_mode & 0o7777, st.st_uid, st.st_gid, what[1])
    return out


def ours():
    """What files.txt says a folded stock system gains: {path: (mode, source)}."""
    pkg = f"{ROOT}/buildroot/package/jetkvm-metrics"
    out = {}
    with open(f"{pkg}/files.txt") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            _, mode, path, source = line.split()
            path = path.replace("INITDIR", "/oem/usr/etc/init.d")
            source = f"{ROOT}/out/armv7/jetkvm-metrics" if source == "binary" else f"{pkg}/{source}"
            out[path.lstrip("/")] = (int(mode, 8), source)
    return out


def same_bytes(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        return x.read() == y.read()


def main():
    work = tempfile.mkdtemp(prefix="jetkvm-fold-")
    try:
        folded = f"{work}/folded"
        key = f"{work}/key.asc"
        subprocess.run([f"{ROOT}/board/jetkvm/ota-key.sh", "new", key], check=True, capture_output=True)
        r = fold(STOCK, folded, "--max-size", "64M", env=dict(os.environ, JETKVM_OTA_SIGNING_KEY=key))
        check("fold: folds the stock release", r.returncode == 0, r.stdout + r.stderr)
        for path in ours():
            check(f"fold: says it added /{path}", f"/{path} " in r.stdout, r.stdout)
        vendor, mine = f"{work}/vendor", f"{work}/mine"
        check("fold: the result in the device's format",
              members(STOCK, vendor) == members(f"{folded}/system.tar", mine) == ["uboot.img", "boot.img", "system.img"])
        for img in ("uboot.img", "boot.img"):
            check(f"fold: {img} byte-identical", same_bytes(f"{vendor}/{img}", f"{mine}/{img}"))
        before, after = tree(f"{vendor}/system.img", f"{work}/t1"), tree(f"{mine}/system.img", f"{work}/t2")
        changed = [p for p in before if after.get(p) != before[p]]
        check(f"fold: each of the vendor's {len(before)} files and directories the same (content, mode, owner, link)",
              not changed and len(before) > 200, ", ".join(changed[:5]))
        added = {p: after[p] for p in after if p not in before}
        want = ours()
        for path, (mode, source) in want.items():
            with open(source, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            check(f"fold: /{path} added, root's, mode {mode:o}", added.get(path) == ("file", mode, 0, 0, digest),
                  repr(added.get(path)))
        extra = [p for p, v in added.items() if p not in want and v[0] != "dir"]
        check("fold: nothing else added but their directories", not extra, ", ".join(extra))
        with open(f"{folded}/system.tar", "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(f"{folded}/system.tar.sha256") as f:
            check("fold: system.tar.sha256 is its hash", f.read().strip() == digest)
        pub = f"{work}/pub.gpg"
        subprocess.run([f"{ROOT}/board/jetkvm/ota-key.sh", "public", key, pub], check=True, capture_output=True)
        v = subprocess.run(["gpgv", "--keyring", pub, f"{folded}/system.tar.sig", f"{folded}/system.tar"],
                           capture_output=True, text=True)
        check("fold: system.tar.sig verifies against the signing key", v.returncode == 0, v.stderr)
        refusals(work, folded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for _, ok in RESULTS if ok)
    print(f"fold: {passed} passed, {len(RESULTS) - passed} failed")
    return 1 if failed() else 0


def refusals(work, folded):
    """Each one line on stderr, nothing written."""
    def refused(tar, why, *args):
        out = f"{work}/refused"
        r = fold(tar, out, *args)
        lines = r.stderr.strip().splitlines()
        return r.returncode == 1 and len(lines) == 1 and why in lines[0] and not os.path.exists(out), r.stderr

    bad = f"{work}/bad"
    os.makedirs(bad)
    with tarfile.open(f"{bad}/two.tar", "w") as t:
        for img in ("boot.img", "system.img"):
            t.add(f"{work}/vendor/{img}", img)
    check("fold: refuses a tar without uboot.img", *refused(f"{bad}/two.tar", "not a release in the device's format"))
    with open(f"{bad}/zero.img", "wb") as f:
        f.write(bytes(1 << 20))
    with tarfile.open(f"{bad}/notext4.tar", "w") as t:
        t.add(f"{work}/vendor/uboot.img", "uboot.img")
        t.add(f"{work}/vendor/boot.img", "boot.img")
        t.add(f"{bad}/zero.img", "system.img")
    check("fold: refuses a system.img that is not ext4", *refused(f"{bad}/notext4.tar", "is not an ext4 filesystem"))
    check("fold: refuses a system.img without room for it", *refused(STOCK, "has no room", "--max-size", "10M"))
    check("fold: refuses a release already folded", *refused(f"{folded}/system.tar", "already folded"))


if __name__ == "__main__":
    sys.exit(main())
