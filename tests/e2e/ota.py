#!/usr/bin/env python3
"""End-to-end test of the system update on the A/B emulated board, scraped
by a real Prometheus (Debian's `prometheus`, on 127.0.0.1).

On the host: the bootloader's A/B flow on a scratch disk (a corrupt record,
tries running out), and semver precedence in the image's own BusyBox. Then
four releases signed with one key, built by scripts/build/build-ota: N, N+1, N+2,
and N+3 whose daemon cannot start; and hostile ones, as a man in the middle
or a broken server would serve them. The board boots N in slot a
(scripts/board/boot-board --ab) and reaches the releases on 127.0.0.1 through its
one forwarded address. Checks that:
  1. a slot is confirmed by the daemon's own probe in every configuration
     it supports: the device's TLS off, pending, self-signed and custom;
     password mode with and without a session; no-password mode; the mTLS
     metrics service; listen_addr in single quotes, bound to one address;
     the configuration in /userdata; and no secret is ever on a command line;
  2. with the device's TLS on, the board updates itself to N+1, reboots into
     slot b and confirms it over HTTPS; Prometheus' `up` is 1 again within
     UP_BOUND seconds of the reboot, the token and configuration kept;
  3. each hostile release is refused with one line, exit 1, nothing written
     and nothing left on /userdata: a tampered tar, an edited or unsigned
     release.json, signatures by another key or empty, an older or expired
     release, an endless and a trickling download, a release larger than
     its slot or than the room on /userdata, bad URLs, links and device
     nodes in the tar, a running slot not yet confirmed, a lock held;
  4. in no-password mode, power is cut while N+2 is being written: the same
     disk powered on again runs N+1, confirmed, with the half-written slot
     unbootable; N+2 then installs cleanly and is confirmed; its cable taken
     out and put back through QEMU's QMP socket (set_link), the console sees
     the carrier go and come back and the forwarded port answers again;
  5. N+3, applied from a directory anyone could write to and swapped there
     after it was copied, boots, is never confirmed, runs out of tries, and
     the board is back on N+2 serving metrics, the update log saying why.

usage: tests/e2e/ota.py [--keep]
Figures are printed and written to out/ota-figures.json. On failure the
board's console log is copied to out/artifacts/.
"""

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import types
import urllib.request
import zlib

# (No __pycache__ in the tree for the import below.)
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as e2e  # noqa: E402  (the end-to-end library, next to this file)

ROOT = e2e.ROOT
check, until, free_port = e2e.check, e2e.until, e2e.free_port
# Seconds from the board's reboot into the new slot until Prometheus scrapes
# it again (boot about 10 s, scrape interval 1 s; slack for a busy host).
UP_BOUND = 60
# The rollback: 7 tries of boot plus the confirm window, and the boot back
# into the good slot.
BROKEN_CONFIRM_TIMEOUT = 6
ROLLBACK_BOUND = 400
PARTS = ("misc", "boot_a", "boot_b", "system_a", "system_b")
URL = "http://10.0.2.100:8080"
FUTURE = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
PAST = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
# The device's default configuration with the listener bound to the board's
# one address, written in single quotes, and /run collected.
USERDATA_CONFIG = """listen_addr = '10.0.2.15:3080'
device_config = "/userdata/kvm_config.json"
token_file = "/userdata/jetkvm/metrics/token/token.sha256"
connection_ports = [80, 443]
filesystems = ["/", "/userdata", "/run"]
"""


def run(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def cargo_version():
    with open(f"{ROOT}/Cargo.toml") as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Releases(http.server.SimpleHTTPRequestHandler):
    """Static files, and two system.tar that never end: one streams without
    end, one trickles."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path in ("/endless/system.tar", "/trickle/system.tar"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            chunk, pause = (b"\0" * 65536, 0) if self.path.startswith("/endless") else (b"\0" * 64, 0.1)
            try:
                while True:
                    self.wfile.write(chunk)
                    if pause:
                        time.sleep(pause)
            except OSError:
                return
        super().do_GET()


def serve(directory, port):
    """The release host, on 127.0.0.1."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Releases, directory=directory))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def ab_flow_checks(work, boot_img):
    """The bootloader's flow on a scratch GPT disk: no QEMU needed."""
    disk = f"{work}/scratch.img"
    with open(disk, "wb") as f:
        f.truncate(40 << 20)
    layout = "label: gpt\n" + "".join(
        f"start={s}MiB, size={n}MiB, name={name}\n"
        for name, s, n in (("misc", 1, 1), ("boot_a", 2, 8), ("boot_b", 10, 8), ("system_a", 18, 8), ("system_b", 26, 8)))
    subprocess.run(["sfdisk", "--quiet", disk], input=layout, text=True, check=True)
    parts = {}
    out = run("sfdisk", "--json", disk).stdout
    for p in json.loads(out)["partitiontable"]["partitions"]:
        parts[p["name"]] = p["start"] * 512
    for slot in ("a", "b"):
        with open(boot_img, "rb") as src, open(disk, "r+b") as dst:
            dst.seek(parts[f"boot_{slot}"])
            dst.write(src.read())
    tool = f"{ROOT}/scripts/board/ab-bootloader.py"

    def select():
        return subprocess.run([tool, "select", disk], capture_output=True, text=True).stdout.strip()

    def show():
        return json.loads(run(tool, "show", disk).stdout)

    def poke(offset, data):
        with open(disk, "r+b") as f:
            f.seek(parts["misc"] + 2048 + offset)
            f.write(data)

    check("bootloader: an all-zero misc (bad magic) is reset to the default record and boots a",
          not show()["valid"] and select() == "a" and show()["a"] == {"priority": 15, "tries": 6, "successful": 0})
    poke(9, b"\x03")  # tries of slot a, without fixing the CRC
    check("bootloader: a record with a wrong CRC is reset to the default", select() == "a" and show()["a"]["tries"] == 6)
    run(tool, "init", disk)
    check("bootloader: a confirmed slot keeps its tries at 0", select() == "a" and show()["a"] == {"priority": 15, "tries": 0, "successful": 1})
    # Slot b freshly flashed (priority 15, 7 tries), slot a lowered to 14.
    rec = bytearray(b"\0AB0\x01\x00\x00\x00" + bytes([14, 0, 1, 0, 15, 7, 0, 0]) + bytes(12))
    poke(0, bytes(rec) + zlib.crc32(rec).to_bytes(4, "big"))
    picks = [select() for _ in range(8)]
    check("bootloader: a new slot gets 7 tries, then the confirmed slot boots again",
          picks == ["b"] * 7 + ["a"] and show()["b"] == {"priority": 0, "tries": 0, "successful": 0}, str(picks))
    with open(disk, "r+b") as f:
        f.seek(parts["boot_a"])
        f.write(bytes(1024))
    check("bootloader: no bootable slot when the last one's boot.img is unreadable", select() == "none")


def semver_checks(work, image):
    """Semver precedence (semver.org's own examples) in the image's BusyBox
    and its release library, run under qemu-arm-static."""
    for src, dst in (("/bin/busybox", "busybox"), ("/usr/lib/jetkvm-ota/release.sh", "release.sh")):
        run("debugfs", "-R", f"dump {src} {work}/{dst}", image)
    os.chmod(f"{work}/busybox", 0o755)
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
             "1.0.0-rc.1", "1.0.0", "1.0.1", "1.9.0", "1.10.0", "2.0.0", "10.0.0"]
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    pairs += [("1.0.0+build.1", "1.0.0+build.2"), ("0.1.0-ota.2+g1a2b3c4", "0.1.0-ota.2")]
    script = f". {work}/release.sh\n" + "".join(f"echo $(semver_cmp {a} {b}) $(semver_cmp {b} {a})\n" for a, b in pairs)
    script += "".join(f"semver_valid '{v}' && echo valid || echo invalid\n"
                      for v in ("0.1.0-ota.1+g1a2b3c.dirty", "1.0", "01.0.0", "1.0.0-", "1.0.0-a..b", "unknown", "-1.0.0"))
    out = run("qemu-arm-static", f"{work}/busybox", "sh", "-c", script).stdout.split("\n")
    want = ["-1 1"] * (len(pairs) - 2) + ["0 0", "0 0"] + ["valid"] + ["invalid"] * 6
    check(f"semver: precedence of {len(pairs)} pairs and validity, in the image's BusyBox", out[:len(want)] == want, str(out))


def derive(releases, base, version, key, edit=None):
    """A release whose image is `base`'s with /version (and `edit`) changed,
    repacked and signed by build-ota."""
    images = f"{releases}/{version}/images"
    os.makedirs(images)
    for f in ("system.img", "vmlinuz", "initrd.cpio.gz"):
        shutil.copy(f"{releases}/{base}/images/{f}", images)
    img = f"{images}/system.img"
    with open(f"{images}/version", "w") as f:
        f.write(version + "\n")
    run("debugfs", "-w", "-R", "rm /version", img)
    run("debugfs", "-w", "-R", f"write {images}/version /version", img)
    os.remove(f"{images}/version")
    if edit:
        edit(img)
    run(f"{ROOT}/scripts/build/build-ota", "--images", images, "--out", f"{releases}/{version}", "--version", version, "--key", key)


def release_json(version, tar, **fields):
    """release.json as build-ota writes it; fields set to None are left out."""
    with open(tar, "rb") as f:
        data = f.read()
    rel = {"systemVersion": version, "systemUrl": "system.tar", "systemHash": hashlib.sha256(data).hexdigest(),
           "systemSigUrl": "system.tar.sig", "systemSize": len(data), "expires": FUTURE}
    rel.update(fields)
    return json.dumps({k: v for k, v in rel.items() if v is not None}, indent=2) + "\n"


def sign(key, path):
    run(f"{ROOT}/board/jetkvm/ota-key.sh", "sign", key, path)


def small_tar(path, members):
    """A ustar of (name, bytes | tarfile.TarInfo) members."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, content in members:
            if isinstance(content, tarfile.TarInfo):
                t.addfile(content)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))


def hostile_releases(releases, version, key, other):
    """Each as a man in the middle, a broken server or a careless publisher
    would serve it, with the line its refusal must carry. All use small
    tars: they are refused before anything is written."""
    def publish(name, members=None, tar_sig=key, rel_sig=key, after=None, **fields):
        d = f"{releases}/{name}"
        os.makedirs(d)
        small_tar(f"{d}/system.tar", members or [("boot.img", os.urandom(65536))])
        if tar_sig:
            sign(tar_sig, f"{d}/system.tar")
        with open(f"{d}/release.json", "w") as f:
            f.write(release_json(version, f"{d}/system.tar", **fields))
        if rel_sig:
            sign(rel_sig, f"{d}/release.json")
        if after:
            after(d)
        return name

    def flip(path):
        with open(path, "r+b") as f:
            f.seek(1024)
            b = f.read(1)
            f.seek(1024)
            f.write(bytes([b[0] ^ 1]))

    def edit_version(d):
        text = open(f"{d}/release.json").read().replace(version, version + "9")
        open(f"{d}/release.json", "w").write(text)

    def empty(path):
        open(path, "w").close()

    link = tarfile.TarInfo("system.img")
    link.type, link.linkname = tarfile.SYMTYPE, "/dev/vda"
    node = tarfile.TarInfo("system.img")
    node.type, node.devmajor, node.devminor = tarfile.CHRTYPE, 254, 0
    boot = ("boot.img", os.urandom(4096))
    return [
        (publish("tampered", after=lambda d: flip(f"{d}/system.tar")), {}, "does not match its SHA-256"),
        (publish("edited", after=edit_version), {}, "release.json: signature does not verify"),
        (publish("unsigned", rel_sig=None), {}, "cannot fetch"),
        (publish("release-other-key", rel_sig=other), {}, "release.json: signature does not verify"),
        (publish("tar-other-key", tar_sig=other), {}, "the tar: signature does not verify"),
        (publish("empty-sig", after=lambda d: empty(f"{d}/system.tar.sig")), {}, "empty or missing signature"),
        (publish("expired", expires=PAST), {}, "expired at"),
        (publish("no-size", systemSize=None), {}, "systemSize is missing"),
        (publish("too-large", systemSize=8 << 30), {}, "larger than slot a's partitions"),
        (publish("option-url", systemUrl="-O/etc/passwd"), {}, "is not an http(s) URL or a file name"),
        (publish("file-url", systemUrl="file:///etc/shadow"), {}, "is not an http(s) URL or a file name"),
        (publish("symlink", members=[boot, ("system.img", link)]), {}, "only regular files <name>.img"),
        (publish("device-node", members=[boot, ("system.img", node)]), {}, "only regular files <name>.img"),
        (publish("pattern-name", members=[boot, ("sys.em.img", os.urandom(4096))]), {}, "only regular files <name>.img"),
        (publish("no-room"), {"USERDATA_RESERVE_MB": "100000"}, "not enough room on /userdata/jetkvm"),
        (publish("endless", systemSize=1 << 20), {}, "is larger than 1048576 bytes"),
        (publish("trickle", systemSize=1 << 20), {"DOWNLOAD_TIMEOUT": "8"}, "did not finish within 8s"),
    ]


class AbBoard(e2e.Board):
    def partition_sums(self):
        out = self.sh("for p in " + " ".join(PARTS) + "; do . /usr/lib/jetkvm-ota/ab.sh;"
                      " echo \"$p $(sha256sum $(ab_partition $p) | cut -d' ' -f1)\"; done", timeout=120)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def status(self):
        return self.sh("jetkvm-ota status")

    def console(self):
        with open(f"{self.state}/console.log", errors="replace") as f:
            return f.read()

    def bootloader_lines(self):
        return [ln for ln in self.console().splitlines() if ln.startswith("ab-bootloader: ")]

    def install(self, url, env=""):
        """Runs the updater in the background (it reboots the board)."""
        self.sh(f"{env} start-stop-daemon --start --background --exec /usr/sbin/jetkvm-ota -- install {url}")

    def ota_log(self):
        return self.sh("cat /userdata/jetkvm/ota.log")

    def write(self, path, text):
        quoted = text.replace("'", "'\\''")
        self.sh(f"printf '%s' '{quoted}' > {path}")

    def set_record(self, slot, priority, tries, ok):
        self.sh(f". /usr/lib/jetkvm-ota/ab.sh; m=$(ab_partition misc); ab_read $m; ab_set {slot} PRIORITY {priority};"
                f" ab_set {slot} TRIES {tries}; ab_set {slot} OK {ok}; ab_write $m")

    def confirm(self, slot):
        """Makes the running slot unconfirmed, as after an update, and runs
        the confirm step in the foreground: its last log line."""
        self.set_record(slot, 15, 6, 0)
        self.sh("CONFIRM_TIMEOUT=30 jetkvm-ota confirm", timeout=60)
        return self.ota_log().strip().splitlines()[-1]

    def stop(self):
        try:
            os.kill(self.qemu_pid(), signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def cut_power(self):
        """Kills QEMU itself (the bootloader, whose pid boot-board keeps,
        then sees the board off and ends): nothing in the board is flushed."""
        loader = self.qemu_pid()
        for stat in os.listdir("/proc"):
            try:
                with open(f"/proc/{stat}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{stat}/comm") as f:
                    comm = f.read().strip()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == loader and comm.startswith("qemu-system"):
                os.kill(int(stat), signal.SIGKILL)
                until("power off", lambda: not os.path.exists(f"/proc/{loader}"), 30)
                return
        raise AssertionError("no QEMU under the bootloader")


def device_config(mode, tls_mode="", session=""):
    return json.dumps({"localAuthMode": mode, "hashed_password": "", "local_auth_token": session,
                       "tls_mode": tls_mode}, indent=2)


def version_from(prom):
    """The version the board reports, through whichever job scrapes it."""
    for job in ("token", "token_tls"):
        if prom.up(job) == 1:
            v = prom.query(f'jetkvm_device_info{{job="{job}"}}')
            if v:
                return dict(next(iter(v))).get("version")
    return None


def confirm_checks(board, work, certs, token):
    """The confirm step in each configuration, on the running board (no
    reboot: the slot is marked unconfirmed, then confirm runs)."""
    # The confirm step sends no credential (so none is on any command line,
    # where any local user could read it from /proc): the daemon counts no
    # use of the device's session cookie while it confirms in password mode
    # with a session.
    session = board.sh("sed -n 's/.*\"local_auth_token\": *\"\\([^\"]*\\)\".*/\\1/p' /userdata/kvm_config.json").strip()
    check("board: the device has a browser session", len(session) > 8, session)

    def cookie_uses():
        r = urllib.request.Request(f"http://127.0.0.1:{board.http}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(r, timeout=10) as f:
            text = f.read().decode()
        return sum(float(ln.split()[-1]) for ln in text.splitlines()
                   if ln.startswith("jetkvm_exporter_auth_") and ('method="cookie"' in ln or 'reason="bad_cookie"' in ln))
    before = cookie_uses()
    line = board.confirm("a")
    check("confirm: password mode with a session, /etc config", "confirmed" in line and "(http)" in line, line)
    check("confirm: no credential sent (the session cookie is not used, nor on any command line)",
          cookie_uses() == before, f"{before} -> {cookie_uses()}")

    kvm = "/userdata/kvm_config.json"
    hashed = board.sh(f"sed -n 's/.*\"hashed_password\": *\"\\([^\"]*\\)\".*/\\1/p' {kvm}").strip()
    password = lambda tls="", session="": json.dumps(
        {"localAuthMode": "password", "hashed_password": hashed, "local_auth_token": session, "tls_mode": tls}, indent=2)
    board.write(kvm, password())
    line = board.confirm("a")
    check("confirm: password mode without a session", "confirmed" in line and "(http)" in line, line)

    board.write("/userdata/jetkvm/metrics/config.toml", USERDATA_CONFIG)
    board.sh("/etc/init.d/S95jetkvm-metrics restart")
    board.write(kvm, device_config("noPassword"))
    line = board.confirm("a")
    check("confirm: no-password mode, /userdata config, listen_addr '10.0.2.15:3080' in single quotes",
          "confirmed" in line and "listen_addr 10.0.2.15:3080 (http)" in line, line)

    board.write(kvm, password("self-signed", session))
    board.sh("rm -rf /userdata/jetkvm/tls")
    line = board.confirm("a")
    check("confirm: device TLS self-signed, certificate not issued yet", "confirmed" in line and "self-signed pending" in line, line)
    board.sh("mkdir -p /userdata/jetkvm/tls")
    for name in ("__ca__.crt", "jetkvm.local.key", "jetkvm.local.crt"):
        board.write(f"/userdata/jetkvm/tls/{name}", certs[name] + "\n")
    line = board.confirm("a")
    check("confirm: device TLS self-signed", "confirmed" in line and "(https, device TLS self-signed)" in line, line)

    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=kvm.example", "-addext", "subjectAltName=DNS:kvm.example", "-days", "30",
                    "-keyout", f"{work}/custom.key", "-out", f"{work}/custom.crt"], check=True, capture_output=True)
    for ext in ("crt", "key"):
        board.write(f"/userdata/jetkvm/tls/user-defined.{ext}", open(f"{work}/custom.{ext}").read())
    board.write(kvm, password("custom", session))
    line = board.confirm("a")
    check("confirm: device TLS custom", "confirmed" in line and "(https, device TLS custom)" in line, line)

    board.sh("cp /userdata/jetkvm/metrics/config-mtls.toml /userdata/jetkvm/metrics/config.toml"
             " && /etc/init.d/S95jetkvm-metrics restart")
    line = board.confirm("a")
    check("confirm: metrics on the mTLS metrics service",
          "confirmed" in line and "metrics_service 127.0.0.1:3081 (mtls) served its configured certificate" in line, line)

    # The update to N+1 runs with the device's TLS on (self-signed) and the
    # single-quoted /userdata configuration.
    board.write("/userdata/jetkvm/metrics/config.toml", USERDATA_CONFIG)
    board.sh("/etc/init.d/S95jetkvm-metrics restart")
    board.write(kvm, password("self-signed", session))
    status = board.status()
    check("board: slot a confirmed after the confirm checks", "slot a: priority 15 tries 0 successful 1" in status, status)


def refusal_checks(board, hostile, older):
    """Every hostile release refused: one line, exit 1, nothing written, the
    work directory gone; then the lock, an unconfirmed slot, a downgrade,
    a bad URL on the command line and the log's bounds."""
    def refused(cmd, why, env=""):
        out = board.sh(f"{env} {cmd} 2>&1; echo \"exit=$?\"; ls -d /userdata/jetkvm/ota_work /userdata/jetkvm/ota_save 2>&1"
                       " | grep -vc 'No such file'; true", timeout=120)
        lines = out.splitlines()
        return (len(lines) == 3 and lines[0].startswith("jetkvm-ota: refused: ") and why in lines[0]
                and lines[1] == "exit=1" and lines[2] == "0"), out

    before = board.partition_sums()
    started = time.monotonic()
    for name, env, why in hostile:
        ok, out = refused(f"jetkvm-ota install {URL}/{name}/release.json", why, " ".join(f"{k}={v}" for k, v in env.items()))
        check(f"updater: {name} refused with one line ({why}), nothing left", ok, out)
    ok, out = refused(f"jetkvm-ota install {URL}/{older}/release.json", f"{older} is not newer than the running")
    check("updater: an older signed release refused", ok, out)
    ok, out = refused(f"jetkvm-ota install --allow-downgrade {URL}/{older}/release.json </dev/null",
                      "--allow-downgrade is taken only from a terminal")
    check("updater: --allow-downgrade refused without a terminal", ok, out)
    out = board.sh(f"USERDATA_RESERVE_MB=100000 jetkvm-ota install --allow-downgrade {URL}/{older}/release.json 2>&1;"
                   " echo \"exit=$?\"", timeout=120)
    check("updater: --allow-downgrade from the console passes the version check (stopped here by the room check)",
          f"installing {older} over" in out and "not enough room" in out and "exit=1" in out, out)
    # The same older release, downloaded and applied locally: apply checks
    # the signed version as install does (it once flashed any signed tar).
    board.sh(f"mkdir -p /tmp/older && cd /tmp/older && for f in release.json release.json.sig system.tar system.tar.sig;"
             f" do wget -q -O $f {URL}/{older}/$f; done", timeout=120)
    ok, out = refused("jetkvm-ota apply /tmp/older/release.json", f"{older} is not newer than the running")
    check("updater: an older signed release refused by apply too", ok, out)
    ok, out = refused("jetkvm-ota apply --allow-downgrade /tmp/older/release.json </dev/null",
                      "--allow-downgrade is taken only from a terminal")
    check("updater: apply's --allow-downgrade refused without a terminal", ok, out)
    board.sh("rm -rf /tmp/older")

    # One lock for install, apply and confirm; an owner that died is noticed.
    board.sh("sleep 600 & mkdir /run/jetkvm-ota.lock; echo $! > /run/jetkvm-ota.lock/pid")
    ok, out = refused(f"jetkvm-ota install {URL}/{older}/release.json", "another update is running")
    check("updater: install refused while another update holds the lock", ok, out)
    ok, out = refused("jetkvm-ota apply /dev/null", "another update is running")
    check("updater: apply refused while another update holds the lock", ok, out)
    board.sh("kill $(cat /run/jetkvm-ota.lock/pid); sleep 0.5")
    ok, out = refused(f"jetkvm-ota install {URL}/{older}/release.json", "is not newer")
    check("updater: a lock whose owner died is taken over", ok, out)

    # Never over the only good slot: the running slot unconfirmed.
    board.set_record("b", 15, 5, 0)
    ok, out = refused(f"jetkvm-ota install {URL}/{older}/release.json", "the running slot b is not confirmed yet")
    board.set_record("b", 15, 0, 1)
    check("updater: refused while the running slot is unconfirmed", ok, out)

    # gpgv runs in a fresh private home each time (never a shared
    # directory such as /tmp), removed after: a spy in its place records it.
    board.write("/tmp/gpgv-spy", "#!/bin/sh\necho \"$2 $(stat -c '%a %u' \"$2\") $(ls -A \"$2\" | wc -l)\" >>/tmp/gpgv-homes\n"
                "exec /tmp/gpgv.real \"$@\"\n")
    board.sh("rm -f /tmp/gpgv-homes; cp /usr/bin/gpgv /tmp/gpgv.real; chmod 755 /tmp/gpgv-spy; mount --bind /tmp/gpgv-spy /usr/bin/gpgv")
    ok, out = refused(f"jetkvm-ota install {URL}/tar-other-key/release.json", "the tar: signature does not verify")
    board.sh("umount /usr/bin/gpgv")
    homes = [ln.split() for ln in board.sh("cat /tmp/gpgv-homes").splitlines()]
    gone = board.sh("for d in " + " ".join(h[0] for h in homes) + "; do [ -e $d ] && echo $d; done; true").strip()
    check("updater: gpgv ran twice, each time in a fresh empty home only root can enter, removed after",
          ok and len(homes) == 2 and all(h[1:] == ["700", "0", "0"] and h[0].startswith("/tmp/") for h in homes)
          and homes[0][0] != homes[1][0] and gone == "", f"{homes} {gone!r} {out}")

    # Partition names are names, not patterns.
    out = board.sh(". /usr/lib/jetkvm-ota/ab.sh; ab_partition system.b; echo \"exit=$?\"; ab_partition system_b")
    check("updater: partitions found by their exact name (system.b is not system_b)",
          out.splitlines()[0] == "exit=1" and out.splitlines()[1].startswith("/dev/"), out)

    # What reaches the log is one bounded line without control characters.
    out = board.sh("u=\"http://10.0.2.100:8080/$(printf '\\033[2J')$(head -c 1500 /dev/zero | tr '\\000' x)\";"
                   " jetkvm-ota install \"$u\" 2>&1; echo \"exit=$?\"")
    last = board.sh("tail -n 1 /userdata/jetkvm/ota.log")
    check("updater: a hostile URL is refused and logged as one bounded line",
          "exit=1" in out and "\x1b" not in last and last.count("\n") == 1 and len(last) <= 450 and "refused" in last,
          repr(last[:200]))
    after = board.partition_sums()
    check("updater: no partition written by any refused update", before == after and len(before) == len(PARTS), f"{before} {after}")
    return round(time.monotonic() - started, 1)


def build_releases(c):
    """Release N and its successors (N+3 broken on purpose), with two keys."""
    work, releases, figures = c.work, c.releases, c.figures
    n, n1, n2, n3 = c.versions
    t0 = c.t0
    key, other = f"{work}/key.asc", f"{work}/other.asc"
    build = f"{ROOT}/scripts/build/build-ota"
    run(build, "--new-key", key)
    run(build, "--new-key", other)
    run(build, "--out", f"{releases}/{n}", "--version", n, "--key", key)
    derive(releases, n, n1, key)
    derive(releases, n, n2, key)

    def broken(img):
        # N+3: a daemon that cannot start, and shorter waits for it in
        # this release only (each of its 7 tries waits that long): the
        # init script's for a listening daemon, the confirm window.
        with open(f"{work}/broken-daemon", "w") as f:
            f.write("#!/bin/sh\necho 'jetkvm-metrics: cannot start: this build is broken on purpose' >&2\nexit 1\n")
        with open(f"{work}/ota-default", "w") as f:
            f.write(f"CONFIRM_TIMEOUT={BROKEN_CONFIRM_TIMEOUT}\n")
        with open(f"{work}/metrics-default", "w") as f:
            f.write("START_TIMEOUT=2\n")
        for cmd in ("rm /usr/bin/jetkvm-metrics", f"write {work}/broken-daemon /usr/bin/jetkvm-metrics",
                    "sif /usr/bin/jetkvm-metrics mode 0100755", "rm /etc/default/jetkvm-ota",
                    f"write {work}/ota-default /etc/default/jetkvm-ota",
                    f"write {work}/metrics-default /etc/default/jetkvm-metrics"):
            run("debugfs", "-w", "-R", cmd, img)
    derive(releases, n, n3, key, broken)
    figures["system_tar_bytes"] = os.path.getsize(f"{releases}/{n1}/system.tar")
    figures["releases_built_seconds"] = round(time.monotonic() - t0)
    print(f"releases built in {figures['releases_built_seconds']}s; system.tar {figures['system_tar_bytes']} bytes", flush=True)
    c.key, c.other = key, other


def release_checks(c):
    """What build-ota wrote, the bootloader's A/B flow, versions, and the
    hostile releases the board is offered later."""
    work, releases, figures = c.work, c.releases, c.figures
    n, n1, n2, n3 = c.versions
    key, other = c.key, c.other
    with open(f"{releases}/{n1}/system.tar.sha256") as f:
        check("build-ota: system.tar.sha256 is the tar's SHA-256", f.read().strip() == sha256(f"{releases}/{n1}/system.tar"))
    with open(f"{releases}/{n1}/release.json") as f:
        text = f.read()
    rel = json.loads(text)
    check("build-ota: release.json names version, tar, hash, size, signature and expiry",
          rel["systemVersion"] == n1 and rel["systemUrl"] == "system.tar" and rel["systemSigUrl"] == "system.tar.sig"
          and rel["systemHash"] == sha256(f"{releases}/{n1}/system.tar")
          and rel["systemSize"] == figures["system_tar_bytes"]
          and time.time() + 29 * 86400 < time.mktime(time.strptime(rel["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
          and not any(k.startswith("app") for k in rel), text)
    check("build-ota: release.json in the one shape the device reads (as this test writes it)",
          text == json.dumps(rel, indent=2) + "\n", text)
    gpg_home = tempfile.mkdtemp(dir=work)
    run(f"{ROOT}/board/jetkvm/ota-key.sh", "public", key, f"{work}/key.gpg")
    run("gpgv", "--homedir", gpg_home, "--keyring", f"{work}/key.gpg",
        f"{releases}/{n1}/release.json.sig", f"{releases}/{n1}/release.json")
    check("build-ota: release.json.sig verifies against the release key", True)
    check("build-ota: tar holds boot.img and system.img at the top level",
          sorted(run("tar", "-tf", f"{releases}/{n1}/system.tar").stdout.split()) == ["boot.img", "system.img"])

    ab_flow_checks(work, f"{releases}/{n}/images/boot.img")
    semver_checks(work, f"{releases}/{n}/images/system.img")
    hostile = hostile_releases(releases, n2, key, other)
    c.hostile = hostile


def first_boot(c):
    """N in slot a, confirmed at first boot, scraped by Prometheus."""
    work, releases, board = c.work, c.releases, c.board
    n, n1, n2, n3 = c.versions
    port = free_port()
    server = serve(releases, port)

    # N in slot a, scraped by Prometheus.
    subprocess.run(
        [f"{ROOT}/scripts/board/boot-board", "--ab", "--detach", "--images", f"{releases}/{n}/images",
         "--state", board.state, "--http-port", str(board.http), "--metrics-port", str(board.metrics),
         "--node-port", str(free_port()), "--update-port", str(port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    check("board: slot a confirmed at first boot", "running slot: a" in board.status() and "slot a: priority 15 tries 0 successful 1" in board.status())
    token = board.sh("jetkvm-metrics token new --config /etc/jetkvm-metrics/config.toml 2>/dev/null").strip()
    with open(f"{board.state}/secrets/token", "w") as f:
        f.write(token)
    s = f"{board.state}/secrets"
    # The device's self-signed TLS, turned on during the confirm checks.
    certs = e2e.device_certificates(work)
    prom = e2e.Prometheus.for_board(work, free_port(), board, extra_jobs=f"""
  - job_name: token_tls
    scheme: https
    authorization: {{type: Bearer, credentials_file: {s}/token}}
    tls_config: {{ca_file: {work}/__ca__.crt, server_name: jetkvm.local}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
""")
    until("Prometheus scraping the board with the new token", lambda: prom.up("token") == 1, 90)
    check("prometheus: the board reports version N", until("version N", lambda: version_from(prom) == n, 30))
    c.server, c.port, c.token, c.certs, c.prom = server, port, token, certs, prom


def confirm_everywhere(c):
    """The confirm step in every configuration."""
    work, board, figures = c.work, c.board, c.figures
    prom, certs, token = c.prom, c.certs, c.token
    t = time.monotonic()
    confirm_checks(board, work, certs, token)
    figures["confirm_checks_seconds"] = round(time.monotonic() - t, 1)
    config_sum = board.sh("sha256sum /userdata/jetkvm/metrics/config.toml").split()[0]
    until("Prometheus over the device's TLS", lambda: prom.up("token_tls") == 1, 60)
    check("prometheus: /userdata config in use (/run is collected)",
          until("config", lambda: prom.value('jetkvm_filesystem_size_bytes{job="token_tls",mountpoint="/run"}') is not None, 30))
    c.config_sum = config_sum


def update_with_tls(c):
    """The update to N+1 with the device's TLS on."""
    work, board, figures = c.work, c.board, c.figures
    n, n1, n2, n3 = c.versions
    prom, token, config_sum = c.prom, c.token, c.config_sum
    booted = len(board.bootloader_lines())
    started = time.monotonic()
    board.install(f"{URL}/{n1}/release.json")

    # The bootloader prints its choice of slot just after the reboot line.
    def slot_chosen_after_reboot():
        lines = board.bootloader_lines()[booted:]
        reboot = "ab-bootloader: the board rebooted"
        return reboot in lines and any("A/B slot _" in ln for ln in lines[lines.index(reboot) + 1:])
    until("the board rebooting and choosing a slot", slot_chosen_after_reboot, 300)
    rebooted = time.monotonic()
    figures["apply_seconds"] = round(rebooted - started, 1)
    lines = board.bootloader_lines()[booted:]
    check("board: reboots into slot b with 7 tries, one used", any("A/B slot _b: priority 15, successful 0, tries remaining 6" in ln for ln in lines), str(lines))
    tok = {"Authorization": f"Bearer {token}"}
    until("first scrape of N+1 over HTTPS", lambda: e2e.https_status(board.http, "/metrics", tok, f"{work}/__ca__.crt", "jetkvm.local") == 200, UP_BOUND)
    figures["reboot_to_first_scrape_seconds"] = round(time.monotonic() - rebooted, 1)
    until("Prometheus reporting N+1", lambda: version_from(prom) == n1, UP_BOUND)
    figures["reboot_to_prometheus_up_seconds"] = round(time.monotonic() - rebooted, 1)
    check(f"prometheus: up again over the device's TLS with version N+1 within {UP_BOUND}s of the reboot",
          figures["reboot_to_prometheus_up_seconds"] <= UP_BOUND and prom.up("token_tls") == 1, str(figures["reboot_to_prometheus_up_seconds"]))
    status = until("slot b confirmed", lambda: "slot b: priority 15 tries 0 successful 1" in (st := board.status()) and st, 60)
    check("board: running slot b, confirmed; slot a kept as fallback (priority 14)",
          "running slot: b" in status and "slot a: priority 14 tries 0 successful 1" in status, status)
    check("board: token survived the update", "token set since" in board.sh("jetkvm-metrics token status --config /etc/jetkvm-metrics/config.toml"))
    check("board: /userdata config survived the update", board.sh("sha256sum /userdata/jetkvm/metrics/config.toml").split()[0] == config_sum)
    log = board.ota_log()
    check("board: slot b confirmed by the probe over the device's TLS, after read-back",
          "read back identical" in log and re.search(rf"slot b \({re.escape(n1)}\) confirmed after \d+s: listen_addr 10\.0\.2\.15:3080 "
                                                     r"\(https, device TLS self-signed\) answered", log), log)
    c.tok = tok


def refusals(c):
    """Releases and requests the updater refuses."""
    n, n1, n2, n3 = c.versions
    figures = c.figures
    figures["refusals_seconds"] = refusal_checks(c.board, c.hostile, n)


def power_cut(c):
    """No-password mode; the power is cut while N+2 is being written, and
    the same disk boots the old slot."""
    releases, board = c.releases, c.board
    n, n1, n2, n3 = c.versions
    prom, port = c.prom, c.port
    board.write("/userdata/kvm_config.json", device_config("noPassword"))
    until("plain HTTP job up in no-password mode", lambda: prom.up("token") == 1, 60)
    # A watcher on the board says when the first image (boot.img) is
    # being written; the power is cut then (QEMU killed), so the slot
    # holds at most part of the release. (ash runs BusyBox's dd in a
    # forked shell, whose cmdline stays the shell's: the process is
    # found by its name and its open file.)
    board.sh("(while :; do f=0; for p in /proc/[0-9]*; do read -r c < $p/comm || continue; [ \"$c\" = dd ] || continue;"
             " ls -l $p/fd | grep -q 'ota_save/boot[.]img' && f=1; done 2>/dev/null; [ $f = 1 ] && break;"
             " usleep 50000; done; echo POWER-CUT-NOW >/dev/console) >/dev/null 2>&1 & true")
    cut = len(board.console())
    board.install(f"{URL}/{n2}/release.json")
    until("N+2 being written", lambda: "POWER-CUT-NOW" in board.console()[cut:], 300)
    board.cut_power()
    disk = f"{board.state}/disk.img"
    record = json.loads(run(f"{ROOT}/scripts/board/ab-bootloader.py", "show", disk).stdout)
    check("power cut: the slot being written is unbootable on the disk",
          record["a"] == {"priority": 0, "tries": 0, "successful": 0}
          and record["b"] == {"priority": 15, "tries": 0, "successful": 1}, str(record))
    parts = {p["name"]: p for p in json.loads(run("sfdisk", "--json", disk).stdout)["partitiontable"]["partitions"]}
    size = os.path.getsize(f"{releases}/{n2}/images/system.img")
    with open(disk, "rb") as f:
        f.seek(parts["system_a"]["start"] * 512)
        written = hashlib.sha256(f.read(size)).hexdigest()
    check("power cut: system_a does not hold N+2's image (the write was cut)", written != sha256(f"{releases}/{n2}/images/system.img"))
    booted = len(board.bootloader_lines())
    subprocess.run(
        [f"{ROOT}/scripts/board/boot-board", "--ab", "--keep-disk", "--detach", "--images", f"{releases}/{n}/images",
         "--state", board.state, "--http-port", str(board.http), "--metrics-port", str(board.metrics),
         "--node-port", str(free_port()), "--update-port", str(port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    lines = board.bootloader_lines()[booted:]
    check("power cut: the same disk boots the old slot b", any("A/B slot _b: priority 15, successful 1" in ln for ln in lines), str(lines))
    status = until("confirm step done", lambda: "cut off while writing" in board.ota_log() and board.status(), 60)
    check("power cut: slot b confirmed, slot a unbootable",
          "running slot: b" in status and "slot b: priority 15 tries 0 successful 1" in status
          and "slot a: priority 0 tries 0 successful 0" in status, status)
    check("power cut: the log says the update was cut off, and the download is gone",
          "an update was cut off while writing (slot=a" in board.ota_log()
          and board.sh("ls /userdata/jetkvm/ota_save /userdata/jetkvm/ota_work 2>/dev/null | wc -l").strip() == "0")
    until("Prometheus reporting N+1 again", lambda: version_from(prom) == n1, UP_BOUND)


def clean_install(c):
    """N+2 installed cleanly after the power cut; the cable out and in again
    through the QMP socket of the QEMU the bootloader started."""
    board, prom = c.board, c.prom
    n, n1, n2, n3 = c.versions
    booted = len(board.bootloader_lines())
    board.install(f"{URL}/{n2}/release.json")
    until("N+2 booting", lambda: any("A/B slot _a: priority 15, successful 0, tries remaining 6" in ln
                                    for ln in board.bootloader_lines()[booted:]), 300)
    until("Prometheus reporting N+2", lambda: version_from(prom) == n2, UP_BOUND)
    status = until("slot a confirmed", lambda: "slot a: priority 15 tries 0 successful 1" in (st := board.status()) and st, 60)
    check("no-password mode: N+2 installed cleanly after the power cut and confirmed", "running slot: a" in status, status)
    check("no-password mode: confirmed by the probe without a credential",
          re.search(rf"slot a \({re.escape(n2)}\) confirmed after \d+s: listen_addr 10\.0\.2\.15:3080 \(http\)", board.ota_log()), board.ota_log())
    # The QMP socket is the same path whichever boot is running.
    flap = board.flap_link()
    check("board: cable out through QMP after the reboots: carrier 0 on the console, the forwarded port cut",
          flap["out"] == "0 down" and flap["port_out"] is None, str(flap))
    check("board: cable in: carrier 1 on the console, the forwarded port answers again",
          flap["in"] == "1 up" and flap["port_in"] == 200, str(flap))
    until("Prometheus scraping the board again after the flap", lambda: prom.up("token") == 1, UP_BOUND)


def rollback(c):
    """N+3, applied from a directory anyone can write and swapped there once
    copied, cannot start its daemon: rolled back to N+2."""
    board, prom, tok, figures = c.board, c.prom, c.tok, c.figures
    n, n1, n2, n3 = c.versions
    board.sh("mkdir -m 1777 /tmp/pub && cd /tmp/pub && for f in release.json release.json.sig system.tar system.tar.sig; do"
             f" wget -q -O $f {URL}/{n3}/$f; done && chmod 666 /tmp/pub/*", timeout=120)
    booted = len(board.bootloader_lines())
    board.sh("start-stop-daemon --start --background --exec /usr/sbin/jetkvm-ota -- apply /tmp/pub/release.json")
    until("the release copied to the private work directory", lambda: "copied /tmp/pub/release.json" in board.ota_log(), 120)
    board.sh("head -c 1048576 /dev/urandom > /tmp/pub/system.tar")
    until("the first boot of N+3", lambda: any("A/B slot _b" in ln for ln in board.bootloader_lines()[booted:]), 300)
    first = time.monotonic()
    until("back on slot a", lambda: any("A/B slot _a" in ln for ln in board.bootloader_lines()[booted:]), ROLLBACK_BOUND)
    until("N+2 serving again", lambda: e2e.http_status(f"http://127.0.0.1:{board.http}/metrics", tok) == 200, UP_BOUND)
    figures["rollback_seconds"] = round(time.monotonic() - first, 1)
    lines = board.bootloader_lines()[booted:]
    tries = [ln for ln in lines if "A/B slot _b" in ln]
    check("bootloader: N+3 (the verified copy, not the swapped file) tried 7 times, then slot a again",
          len(tries) == 7 and "tries remaining 0" in tries[-1] and not any("no readable boot.img" in ln for ln in lines), "\n".join(lines))
    until("Prometheus reporting N+2 again", lambda: version_from(prom) == n2, UP_BOUND)
    status = board.status()
    check("board: slot b unbootable, slot a still confirmed",
          "slot b: priority 0 tries 0 successful 0" in status and "slot a: priority 14 tries 0 successful 1" in status, status)
    log = until("rollback logged", lambda: "rolled back" in (t := board.ota_log()) and t, 30)
    check("board: update log says N+3 was never confirmed, and why",
          log.count(f"slot b ({n3}) not confirmed: the metrics daemon did not serve within {BROKEN_CONFIRM_TIMEOUT}s") == 7
          and "cannot start: this build is broken on purpose" in log
          and "rolled back: slot b was never confirmed" in log, log)


def power_off(c):
    """The board powered off cleanly; the figures written."""
    board, figures = c.board, c.figures
    qpid = board.qemu_pid()
    board.sh("poweroff", timeout=5)
    until("board powered off", lambda: not os.path.exists(f"/proc/{qpid}"), 60)
    check("board: powered off cleanly, bootloader ended", "ab-bootloader: the board powered off" in board.console())
    figures["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    figures["total_seconds"] = round(time.monotonic() - c.t0)
    print("figures: " + json.dumps(figures), flush=True)
    os.makedirs(f"{ROOT}/out", exist_ok=True)
    with open(f"{ROOT}/out/ota-figures.json", "w") as f:
        json.dump(figures, f, indent=2)


PHASES = [
    ("build the releases", build_releases),
    ("check the releases, the A/B flow and versions", release_checks),
    ("first boot, scraped by Prometheus", first_boot),
    ("confirm in every configuration", confirm_everywhere),
    ("update to N+1 over the device's TLS", update_with_tls),
    ("refusals", refusals),
    ("power cut while writing N+2", power_cut),
    ("N+2 installed cleanly", clean_install),
    ("N+3 rolled back", rollback),
    ("power off", power_off),
]


def main():
    keep = "--keep" in sys.argv
    work = tempfile.mkdtemp(prefix="jetkvm-ota-")
    board = AbBoard(f"{work}/board", free_port(), free_port())
    base = cargo_version()
    c = types.SimpleNamespace(work=work, releases=f"{work}/releases", board=board, prom=None, server=None,
                              figures={}, versions=tuple(f"{base}-ota.{i}" for i in (1, 2, 3, 4)),
                              t0=time.monotonic())
    try:
        e2e.run_phases(PHASES, c)
    finally:
        if c.prom:
            c.prom.stop()
        board.stop()
        if c.server:
            c.server.shutdown()
    return e2e.finish("ota", board, work, keep)


if __name__ == "__main__":
    sys.exit(main())
