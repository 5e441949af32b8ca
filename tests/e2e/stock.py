#!/usr/bin/env python3
"""End-to-end test of the stock-shaped board (board/stock): a JetKVM as its
owner has it, before anything of ours is on it. Boots out/stock/system.tar
(scripts/build/build-image --stock, the "vendor's release") with
scripts/board/boot-board --stock, once, and checks in named phases:

- the start flow is the device's: inittab, rcS, S21appinit, the launcher
  (RkLunch.sh), the app from /userdata as three processes by role, which
  wrote kvm_config.json itself;
- the userland is the stock one: only the applets of the device's BusyBox
  configuration, the device's users, no logger, no syslogd, no stat, no su,
  and nothing of ours (no daemon, nothing listening on its ports);
- its release is in the device's format (uboot.img, boot.img, system.img
  and the tar's SHA-256).

Then, on the same board, what an owner does: the release folded
(scripts/build/fold-into-system), fetched onto the device, its hash checked
there, and installed with the device's own flasher (rk_ota, as the app
runs it), then a reboot. In the folded slot: the app runs whole, the
daemon runs from the launcher's hook as nobody with its one capability,
logs to a bounded file in RAM (no logger), serves the HDMI state on vivid
to the real Prometheus with the token, and the slot is kept (its app and
daemon both up). Last, a release whose app cannot start, folded and
installed the same way: never kept, the watchdog restarts the board until
the bootloader's tries run out, and the folded slot (the KVM) is back.

usage: tests/e2e/stock.py [--keep]
On failure the board's console log is copied to out/artifacts/.
"""

import functools
import http.server
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import ROOT, Board, Prometheus, check, free_port, run_board, until  # noqa: E402

STOCK = f"{ROOT}/out/stock"


def release(c):
    """The vendor's release as the device's updater takes it."""
    with tarfile.open(f"{STOCK}/system.tar") as t:
        members = [(m.name, m.isreg()) for m in t.getmembers()]
    check("release: system.tar holds uboot.img, boot.img, system.img at its top level, regular files",
          members == [("uboot.img", True), ("boot.img", True), ("system.img", True)], repr(members))
    digest = subprocess.run(["sha256sum", f"{STOCK}/system.tar"], capture_output=True, text=True, check=True)
    with open(f"{STOCK}/system.tar.sha256") as f:
        check("release: system.tar.sha256 is the tar's hash alone, as the vendor publishes it",
              f.read().strip() == digest.stdout.split()[0])


def boot(c):
    """The stock-shaped board from the vendor's release."""
    board = c.board
    subprocess.run(
        [f"{ROOT}/scripts/board/boot-board", "--stock", "--detach", "--state", board.state,
         "--http-port", str(board.http), "--metrics-port", str(board.metrics),
         "--node-port", str(free_port()), "--test-disk", f"{ROOT}/out/board/testdisk.img",
         "--update-port", str(c.port)],
        check=True, stdout=subprocess.DEVNULL,
    )
    with open(f"{board.state}/boot-to-scrape-seconds") as f:
        print(f"stock board up: the app running {f.read().strip()}s after power-on", flush=True)


def start_flow(c):
    """inittab, rcS, S21appinit, the launcher, the app from /userdata."""
    board = c.board
    roles = until("the app's three processes", lambda: (ps := board.sh("ps -o pid,ppid,args | grep '[j]etkvm:'"))
                  .count("jetkvm:") == 3 and ps, 30)
    check("stock: the app runs from /userdata as supervisor, app and native",
          all(f"[{r}]" in roles for r in ("supervisor", "app", "native")), roles)
    check("stock: started by the launcher, its output in /userdata/jetkvm/last.log",
          board.sh("ls /userdata/jetkvm/last.log && grep -c 'sh /oem/usr/bin/RkLunch.sh' /etc/init.d/S21appinit")
          .split()[-1] == "1")
    config = board.sh("cat /userdata/kvm_config.json")
    check("stock: the app wrote the device's kvm_config.json (password mode)", '"localAuthMode": "password"' in config, config)
    check("stock: no hook of anyone's in /oem/usr/etc/init.d", board.sh("ls /oem/usr/etc/init.d | wc -l").strip() == "0")


def userland(c):
    """Only the stock applets and users; nothing of ours."""
    board = c.board
    with open(f"{ROOT}/board/stock/busybox-applets") as f:
        stock = {a.strip() for a in f if a.strip() and not a.startswith("#")}
    links = set(board.sh("for f in /bin/* /sbin/* /usr/bin/* /usr/sbin/*; do [ \"$(readlink $f)\" = /bin/busybox ]"
                         " && basename $f; done").split())
    check("stock: every BusyBox link is an applet of the device's configuration",
          links <= stock and len(links) > 150, ", ".join(sorted(links - stock)))
    # (By the links: Debian's static BusyBox runs any applet it has from its
    # shell, linked or not; scripts/checks/check-stock-applets.py holds the device's
    # scripts to the stock applets.)
    present = board.sh("for a in logger syslogd klogd stat su adduser unshare; do for d in /bin /sbin /usr/bin /usr/sbin; do"
                       " [ -e $d/$a ] && echo $a; done; done; true").split()
    check("stock: no logger, syslogd, klogd, stat, su, adduser or unshare", present == [], repr(present))
    with open(f"{ROOT}/board/stock/rootfs/etc/passwd") as f:
        check("stock: the device's users", board.sh("cat /etc/passwd").replace("\r", "") == f.read())
    ours = board.sh("ls /usr/bin/jetkvm-metrics /etc/init.d/S95jetkvm-metrics /oem/usr/etc/init.d/S95jetkvm-metrics"
                    " 2>/dev/null | wc -l").strip()
    check("stock: nothing of ours in the vendor's system", ours == "0", ours)
    check("stock: nothing answers on the daemon's port", board.healthz() is None)


# Where the board fetches releases (scripts/board/boot-board --update-port).
URL = "http://10.0.2.100:8080"


def serve(directory, port):
    """The owner's computer, serving its folded releases on 127.0.0.1."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=directory))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def fold(c, tar, name):
    out = f"{c.work}/releases/{name}"
    r = subprocess.run([f"{ROOT}/scripts/build/fold-into-system", "--max-size", "64M", tar, out], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"fold-into-system {tar}: {r.stderr}")
    return out


def install(board, name):
    """The owner's way (docs/FIRMWARE.md, "You own a JetKVM"): fetch, check
    the hash on the device, hand the tar to the device's flasher, reboot."""
    out = board.sh(f"cd /userdata/jetkvm && wget -q -O update_system.tar.unverified {URL}/{name}/system.tar"
                   f" && wget -q -O system.tar.sha256 {URL}/{name}/system.tar.sha256"
                   " && echo \"$(cat system.tar.sha256)  update_system.tar.unverified\" | sha256sum -c"
                   " && mv update_system.tar.unverified update_system.tar"
                   " && rk_ota --misc=update --tar_path=/userdata/jetkvm/update_system.tar"
                   " --save_dir=/userdata/jetkvm/ota_save --partition=all && echo installed", timeout=240)
    return out


def bootloader_lines(board):
    with open(f"{board.state}/console.log", errors="replace") as f:
        return [ln for ln in f.read().splitlines() if ln.startswith("ab-bootloader: ")]


def record(board):
    out = subprocess.run([f"{ROOT}/scripts/board/ab-bootloader.py", "show", f"{board.state}/disk.img"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def folded(c):
    """The release folded, installed the owner's way; the folded slot."""
    board = c.board
    good = fold(c, f"{ROOT}/out/stock/system.tar", "good")
    check("fold: the vendor's release folded", os.path.exists(f"{good}/system.tar"))
    # The owner's configuration, root's, before the install (the board's
    # HDMI receiver is vivid's).
    board.sh("printf 'video_driver = \"vivid-000-vid-cap\"\\nvideo_query_interval = \"5s\"\\n'"
             " > /userdata/jetkvm/metrics/config.toml")
    booted = len(bootloader_lines(board))
    out = install(board, "good")
    check("owner: the folded release fetched, its hash checked on the device, written by rk_ota",
          "OK" in out and out.rstrip().endswith("installed"), out)
    board.sh("reboot", timeout=5)
    until("the folded slot booted", lambda: any("A/B slot _b" in ln for ln in bootloader_lines(board)[booted:]), 120)
    roles = until("the app's three processes", lambda: (ps := board.sh("ps -o args | grep '[j]etkvm:'"))
                  .count("jetkvm:") == 3 and ps, 60)
    check("folded: the app runs whole", all(f"[{r}]" in roles for r in ("supervisor", "app", "native")), roles)
    until("the daemon answering", lambda: board.healthz() == 200, 60)
    pid = board.sh("cat /run/jetkvm-metrics.pid").strip()
    status = board.sh(f"grep -E '^(Uid|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/{pid}/status")
    fields = {k: v.split() for k, v in (ln.split(":", 1) for ln in status.splitlines() if ":" in ln)}
    check("folded: the daemon runs as nobody, CAP_DAC_READ_SEARCH alone, no_new_privs",
          fields.get("Uid") == ["65534"] * 4 and fields.get("CapEff") == ["0000000000000004"]
          and fields.get("CapBnd") == ["0000000000000004"] and fields.get("NoNewPrivs") == ["1"], status)
    check("folded: started by the launcher's hook, which returned at once",
          "in the background" in board.console_text() or board.sh("ls /oem/usr/etc/init.d").split() == ["S95jetkvm-metrics"])
    log = board.sh("ls -l /run/jetkvm-metrics.log; ls /var/log 2>/dev/null | wc -l")
    check("folded: its log in RAM, bounded (no logger here)", "/run/jetkvm-metrics.log" in log, log)
    prom = c.prom = Prometheus.for_board(c.work, free_port(), board)
    check("prometheus: the token job scrapes the folded stock device",
          until("token job up", lambda: prom.up("token") == 1, 90))
    check("prometheus: the HDMI state on vivid, through the folded daemon",
          until("HDMI ok", lambda: prom.value('jetkvm_hdmi_signal{job="token",state="ok"}') == 1, 60))
    check("prometheus: the app by role, through the folded daemon",
          until("app roles", lambda: prom.value('sum(jetkvm_app_up{job="token"})') == 3, 60))
    slot_b = until("slot b kept", lambda: (r := record(board))["b"]["successful"] == 1 and r, 150)
    check("folded: the slot kept once the app runs whole and the daemon answers",
          slot_b["b"]["successful"] == 1, json.dumps(slot_b))
    check("folded: the hook said why it kept the slot", "slot kept" in board.sh("cat /run/jetkvm-metrics.log"))


def broken(c):
    """A release whose app cannot start, folded and installed the same way:
    never kept; the watchdog restarts the board until the bootloader's
    tries run out; the folded slot is back."""
    board = c.board
    work = f"{c.work}/broken"
    os.makedirs(work)
    with tarfile.open(f"{ROOT}/out/stock/system.tar") as t:
        t.extractall(work, filter="data")
    marker = f"{work}/marker"
    with open(marker, "w") as f:
        f.write("this system cannot run the app\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {marker} /etc/jetkvm-standin-exit", f"{work}/system.img"],
                   check=True, capture_output=True)
    subprocess.run(["tar", "-cf", f"{work}/system.tar", "-C", work, "uboot.img", "boot.img", "system.img"], check=True)
    fold(c, f"{work}/system.tar", "broken")
    booted = len(bootloader_lines(board))
    out = install(board, "broken")
    check("owner: the broken release installed the same way", out.rstrip().endswith("installed"), out)
    board.sh("reboot", timeout=5)
    tried = lambda: [ln for ln in bootloader_lines(board)[booted:] if "A/B slot _a" in ln]
    until("slot a tried until its tries ran out", lambda: len(tried()) >= 7, 600)
    until("slot b again", lambda: bootloader_lines(board)[-1:] and "A/B slot _b" in bootloader_lines(board)[-1], 120)
    lines = tried()
    check("broken: slot a tried 7 times, never kept, then slot b", len(lines) == 7 and "tries remaining 0" in lines[-1],
          "\n".join(lines))
    until("the daemon answering again", lambda: board.healthz() == 200, 90)
    check("broken: the KVM is back: the app runs whole in slot b",
          board.sh("ps -o args | grep -c '[j]etkvm:'").strip() == "3")
    check("prometheus: the token job up again", until("token job up again", lambda: c.prom.up("token") == 1, 90))


def shutdown(c):
    board = c.board
    qpid = board.qemu_pid()
    board.sh("poweroff", timeout=5)
    until("board powered off", lambda: not os.path.exists(f"/proc/{qpid}"), 60)


PHASES = [
    ("the vendor's release", release),
    ("boot", boot),
    ("the device's start flow", start_flow),
    ("the stock userland", userland),
    ("folded and installed the owner's way", folded),
    ("a release whose app cannot start", broken),
    ("shutdown", shutdown),
]


def main():
    work = tempfile.mkdtemp(prefix="jetkvm-stock-")
    board = Board(f"{work}/board", free_port(), free_port())
    c = types.SimpleNamespace(work=work, board=board, port=free_port(), prom=None)
    os.makedirs(f"{work}/releases")
    server = serve(f"{work}/releases", c.port)
    try:
        return run_board("stock", PHASES, c)
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
