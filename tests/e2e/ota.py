#!/usr/bin/env python3
"""End-to-end test of the system update on the A/B emulated board, scraped
by a real Prometheus (Debian's `prometheus`, on 127.0.0.1).

First the bootloader's A/B flow on a scratch disk (a corrupt record, tries
running out). Then three releases signed with one key, built by
scripts/build-ota: N, N+1, and N+2 whose daemon cannot start. The board
boots N in slot a (scripts/boot-board --ab) and reaches the releases on
127.0.0.1 through its one forwarded address. Checks that:
  1. N serves metrics to Prometheus; a token made on the board and a
     /userdata configuration are in use;
  2. the board updates itself to N+1, reboots into slot b, confirms it,
     reports N+1, keeps the token and configuration, and Prometheus' `up` is
     1 again within UP_BOUND seconds of the reboot;
  3. a tar with one byte changed (with its old hash, and with a recomputed
     one), a signature by another key and an empty signature are refused
     with one line each, and no partition changes;
  4. N+2 boots, is never confirmed, runs out of tries, the board is back on
     N+1 serving metrics, and the update log says why.

usage: tests/e2e/ota.py [--keep]
Figures are printed and written to out/ota-figures.json. On failure the
board's console log is copied to out/artifacts/.
"""

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib

# (No __pycache__ in the tree for the import below.)
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import board as e2e  # noqa: E402  (the board test's helpers)

ROOT = e2e.ROOT
check, until, free_port = e2e.check, e2e.until, e2e.free_port
# Seconds from the board's reboot into the new slot until Prometheus scrapes
# it again (boot about 10 s, scrape interval 1 s; slack for a busy host).
UP_BOUND = 60
# The rollback: 7 tries of boot plus the confirm window, and the boot back
# into the good slot.
BROKEN_CONFIRM_TIMEOUT = 8
ROLLBACK_BOUND = 400
PARTS = ("misc", "boot_a", "boot_b", "system_a", "system_b")


def run(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def cargo_version():
    with open(f"{ROOT}/Cargo.toml") as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def serve(directory, port):
    """A static HTTP server on 127.0.0.1 (the release host)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=directory))
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
    tool = f"{ROOT}/scripts/ab-bootloader"

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

    def install(self, url):
        """Runs the updater in the background (it reboots the board)."""
        self.sh(f"start-stop-daemon --start --background --exec /usr/sbin/jetkvm-ota -- install {url}")

    def stop(self):
        try:
            os.kill(self.qemu_pid(), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def version_from(prom):
    v = prom.query('jetkvm_device_info{job="token"}')
    return dict(next(iter(v))).get("version") if v else None


def main():
    keep = "--keep" in sys.argv
    work = tempfile.mkdtemp(prefix="jetkvm-ota-")
    releases = f"{work}/releases"
    board = AbBoard(f"{work}/board", free_port(), free_port())
    prom = server = None
    failed = False
    figures = {}
    base = cargo_version()
    n, n1, n2 = (f"{base}-ota.{i}" for i in (1, 2, 3))
    try:
        t0 = time.monotonic()
        key, other = f"{work}/key.asc", f"{work}/other.asc"
        build = f"{ROOT}/scripts/build-ota"
        run(build, "--new-key", key)
        run(build, "--new-key", other)
        for v in (n, n1, n2):
            run(build, "--out", f"{releases}/{v}", "--version", v, "--key", key)
        # N+2: a daemon that cannot start, repacked and signed as a release.
        img = f"{releases}/{n2}/images/system.img"
        broken = f"{work}/broken-daemon"
        with open(broken, "w") as f:
            f.write("#!/bin/sh\necho 'jetkvm-metrics: cannot start: this build is broken on purpose' >&2\nexit 1\n")
        run("debugfs", "-w", "-R", "rm /usr/bin/jetkvm-metrics", img)
        run("debugfs", "-w", "-R", f"write {broken} /usr/bin/jetkvm-metrics", img)
        run("debugfs", "-w", "-R", "sif /usr/bin/jetkvm-metrics mode 0100755", img)
        # A shorter confirm window in this release only: each of its 7 tries
        # waits that long, and the window's length is not what is tested.
        with open(f"{work}/ota-default", "w") as f:
            f.write(f"CONFIRM_TIMEOUT={BROKEN_CONFIRM_TIMEOUT}\n")
        run("debugfs", "-w", "-R", "mkdir /etc/default", img)
        run("debugfs", "-w", "-R", f"write {work}/ota-default /etc/default/jetkvm-ota", img)
        run(build, "--images", f"{releases}/{n2}/images", "--out", f"{releases}/{n2}", "--version", n2, "--key", key)
        figures["system_tar_bytes"] = os.path.getsize(f"{releases}/{n1}/system.tar")
        print(f"releases built in {time.monotonic() - t0:.0f}s; system.tar {figures['system_tar_bytes']} bytes", flush=True)
        with open(f"{releases}/{n1}/system.tar.sha256") as f:
            check("build-ota: system.tar.sha256 is the tar's SHA-256",
                  f.read().strip() == hashlib.sha256(open(f"{releases}/{n1}/system.tar", "rb").read()).hexdigest())
        with open(f"{releases}/{n1}/release.json") as f:
            rel = json.load(f)
        check("build-ota: release.json names version, tar, hash and signature",
              rel["systemVersion"] == n1 and rel["systemUrl"] == "system.tar" and rel["systemSigUrl"] == "system.tar.sig"
              and len(rel["systemHash"]) == 64 and not any(k.startswith("app") for k in rel))
        check("build-ota: tar holds boot.img and system.img at the top level",
              sorted(run("tar", "-tf", f"{releases}/{n1}/system.tar").stdout.split()) == ["boot.img", "system.img"])

        ab_flow_checks(work, f"{releases}/{n}/images/boot.img")

        # Refused releases: each beside the good one, as an attacker would serve it.
        good = f"{releases}/{n1}"
        for name in ("tampered", "tampered-rehashed", "other-key", "empty-sig"):
            os.makedirs(f"{releases}/{name}")
            for f in ("system.tar", "system.tar.sig", "system.tar.sha256", "release.json"):
                shutil.copy(f"{good}/{f}", f"{releases}/{name}/{f}")
        for name in ("tampered", "tampered-rehashed"):
            tar = f"{releases}/{name}/system.tar"
            with open(tar, "r+b") as f:
                f.seek(os.path.getsize(tar) // 2)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x01]))
        digest = hashlib.sha256(open(f"{releases}/tampered-rehashed/system.tar", "rb").read()).hexdigest()
        with open(f"{releases}/tampered-rehashed/release.json", "w") as f:
            json.dump({**rel, "systemHash": digest}, f, indent=2)
        run(f"{ROOT}/board/jetkvm/ota-key.sh", "sign", other, f"{releases}/other-key/system.tar")
        open(f"{releases}/empty-sig/system.tar.sig", "w").close()

        port = free_port()
        server = serve(releases, port)
        url = "http://10.0.2.100:8080"

        # 1. N in slot a, scraped by Prometheus.
        subprocess.run(
            [f"{ROOT}/scripts/boot-board", "--ab", "--detach", "--images", f"{releases}/{n}/images",
             "--state", board.state, "--http-port", str(board.http), "--metrics-port", str(board.metrics),
             "--node-port", str(free_port()), "--update-port", str(port)],
            check=True, stdout=subprocess.DEVNULL,
        )
        check("board: slot a confirmed at first boot", "running slot: a" in board.status() and "slot a: priority 15 tries 0 successful 1" in board.status())
        token = board.sh("jetkvm-metrics token new --config /etc/jetkvm-metrics/config.toml 2>/dev/null").strip()
        with open(f"{board.state}/secrets/token", "w") as f:
            f.write(token)
        board.sh("sed 's/^filesystems = .*/filesystems = [\"\\/\", \"\\/userdata\", \"\\/run\"]/'"
                 " /etc/jetkvm-metrics/config.toml > /userdata/jetkvm/metrics/config.toml"
                 " && /etc/init.d/S95jetkvm-metrics restart")
        config_sum = board.sh("sha256sum /userdata/jetkvm/metrics/config.toml").split()[0]
        prom = e2e.Prometheus(work, free_port(), board)
        until("Prometheus scraping the board with the new token", lambda: prom.up("token") == 1, 90)
        check("prometheus: token made on the board works", prom.up("token") == 1)
        check("prometheus: the board reports version N", until("version N", lambda: version_from(prom) == n, 30))
        check("prometheus: /userdata config in use (/run is collected)",
              until("config", lambda: prom.value('jetkvm_filesystem_size_bytes{job="token",mountpoint="/run"}') is not None, 30))

        # 2. The update to N+1, from inside the board.
        booted = len(board.bootloader_lines())
        started = time.monotonic()
        board.install(f"{url}/{n1}/release.json")
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
        until("first scrape of N+1", lambda: e2e.http_status(f"http://127.0.0.1:{board.http}/metrics", tok) == 200, UP_BOUND)
        figures["reboot_to_first_scrape_seconds"] = round(time.monotonic() - rebooted, 1)
        until("Prometheus reporting N+1", lambda: version_from(prom) == n1 and prom.up("token") == 1, UP_BOUND)
        figures["reboot_to_prometheus_up_seconds"] = round(time.monotonic() - rebooted, 1)
        check(f"prometheus: up again with version N+1 within {UP_BOUND}s of the reboot",
              figures["reboot_to_prometheus_up_seconds"] <= UP_BOUND, str(figures["reboot_to_prometheus_up_seconds"]))
        status = until("slot b confirmed", lambda: "slot b: priority 15 tries 0 successful 1" in board.status() and board.status(), 60)
        check("board: running slot b, confirmed; slot a kept as fallback (priority 14)",
              "running slot: b" in status and "slot a: priority 14 tries 0 successful 1" in status, status)
        check("board: token survived the update", prom.up("token") == 1 and "token set since" in board.sh("jetkvm-metrics token status --config /etc/jetkvm-metrics/config.toml"))
        check("board: /userdata config survived the update", board.sh("sha256sum /userdata/jetkvm/metrics/config.toml").split()[0] == config_sum)
        log = board.sh("cat /userdata/jetkvm/ota.log")
        check("board: update log shows read-back and confirmation", "read back identical" in log and f"slot b ({n1}) confirmed: authenticated scrape" in log, log)

        # 3. Refusals: nothing written.
        before = board.partition_sums()
        expect = {
            "tampered": "does not match its SHA-256",
            "tampered-rehashed": "signature does not verify",
            "other-key": "signature does not verify",
            "empty-sig": "empty or missing signature",
        }
        for name, why in expect.items():
            out = board.sh(f"jetkvm-ota install {url}/{name}/release.json 2>&1; echo \"exit=$?\"", timeout=120)
            lines = out.splitlines()
            check(f"updater: {name} refused with one line ({why}), exit 1",
                  len(lines) == 2 and lines[0].startswith("jetkvm-ota: refused: ") and why in lines[0] and lines[1] == "exit=1", out)
        after = board.partition_sums()
        check("updater: no partition written by the refused updates", before == after and len(before) == len(PARTS), f"{before} {after}")
        check("board: still on slot b after the refusals", "running slot: b" in board.status())

        # 4. N+2 cannot start its daemon: rolled back to N+1 by the bootloader.
        booted = len(board.bootloader_lines())
        board.install(f"{url}/{n2}/release.json")
        until("the first boot of N+2", lambda: any("A/B slot _a" in ln for ln in board.bootloader_lines()[booted:]), 300)
        first = time.monotonic()
        until("back on slot b", lambda: any("A/B slot _b" in ln for ln in board.bootloader_lines()[booted:]), ROLLBACK_BOUND)
        until("N+1 serving again", lambda: e2e.http_status(f"http://127.0.0.1:{board.http}/metrics", tok) == 200, UP_BOUND)
        figures["rollback_seconds"] = round(time.monotonic() - first, 1)
        lines = board.bootloader_lines()[booted:]
        tries = [ln for ln in lines if "A/B slot _a" in ln]
        check("bootloader: N+2 tried 7 times, then slot b again", len(tries) == 7 and "tries remaining 0" in tries[-1], "\n".join(lines))
        until("Prometheus reporting N+1 again", lambda: version_from(prom) == n1 and prom.up("token") == 1, UP_BOUND)
        check("prometheus: back on N+1, up", version_from(prom) == n1)
        status = board.status()
        check("board: slot a unbootable, slot b still confirmed",
              "slot a: priority 0 tries 0 successful 0" in status and "slot b: priority 14 tries 0 successful 1" in status, status)
        log = until("rollback logged", lambda: "rolled back" in (t := board.sh("cat /userdata/jetkvm/ota.log")) and t, 30)
        check("board: update log says N+2 was never confirmed, and why",
              log.count(f"slot a ({n2}) not confirmed: no authenticated scrape within {BROKEN_CONFIRM_TIMEOUT}s") == 7
              and "cannot start: this build is broken on purpose" in log
              and "rolled back: slot a was never confirmed" in log, log)

        qpid = board.qemu_pid()
        board.sh("poweroff", timeout=5)
        until("board powered off", lambda: not os.path.exists(f"/proc/{qpid}"), 60)
        check("board: powered off cleanly, bootloader ended", "ab-bootloader: the board powered off" in board.console())
        figures["date"] = time.strftime("%Y-%m-%d", time.gmtime())
        figures["total_seconds"] = round(time.monotonic() - t0)
        print("figures: " + json.dumps(figures), flush=True)
        os.makedirs(f"{ROOT}/out", exist_ok=True)
        with open(f"{ROOT}/out/ota-figures.json", "w") as f:
            json.dump(figures, f, indent=2)
    except Exception as e:  # report, keep the console log
        failed = True
        e2e.RESULTS.append((str(e), False))
        print(f"FAIL {e}", flush=True)
    finally:
        if prom:
            prom.stop()
        board.stop()
        if server:
            server.shutdown()
        if failed:
            os.makedirs(f"{ROOT}/out/artifacts", exist_ok=True)
            for name in ("console.log", "qemu.log"):
                if os.path.exists(f"{board.state}/{name}"):
                    shutil.copy(f"{board.state}/{name}", f"{ROOT}/out/artifacts/ota-board-{name}")
            print(f"artifacts: {ROOT}/out/artifacts/", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for _, ok in e2e.RESULTS if ok)
    print(f"ota e2e: {passed} passed, {len(e2e.RESULTS) - passed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
