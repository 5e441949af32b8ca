#!/usr/bin/env python3
"""End-to-end test of the firmware on the emulated board, scraped by a real
Prometheus (Debian's `prometheus`, on 127.0.0.1).

Boots out/board/system.img with scripts/board/boot-board, then runs Prometheus
with five jobs against the board: basic auth with the device password, the
metrics token (credentials_file), a wrong password, mTLS against the
metrics service (with a client certificate), and the operator's kit's
credential-free /healthz job. Checks through Prometheus's
HTTP API, changes the device password inside the board (in place, as the
device does), kills the daemon with SIGKILL and watches it come back,
turns the device's TLS on and off (the general port follows it), checks that
the system log stays bounded under a flood of refusals, enables
the mTLS metrics service and restarts the daemon through its init script,
checks that the init script says FAIL when the daemon cannot start and OK
when /var/log cannot be written, reads the KVM's own state from real kernel
drivers on the test disk (vivid, dummy_hcd, a gadget), runs a stand-in for
the device's app in both of its generations (roles, capture, native killed
and started again, the kit's app alerts, the open-files helper's
privileges), re-exposes an exposition
shaped like the app's served by BusyBox httpd, cuts and restores the board's
network link through QEMU's QMP socket and checks the carrier metrics, and
loads the operator's kit's rules (short `for:`) and sees its alerts fire on
what the board can provoke, checks every selector of the kit's rules and
dashboard against the series it scraped, and shuts the board down cleanly.

usage: tests/e2e/board.py [--keep]
On failure the board's console log is copied to out/artifacts/.
"""

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import types
import urllib.request

# (No __pycache__ in the tree for the import below.)
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import (  # noqa: E402  (next to this file)
    GADGET, ROOT, TEST_DRIVERS, Board, Prometheus, basic, check, device_certificates, device_hash,
    app_metrics as app_exposition, free_port, http_status, https_status, run_board, until,
)


def measure_mtls_handshakes(board, n=20):
    """Sessions are never resumed on the mTLS listener: each new connection
    pays a full handshake. Measures it against requests on one kept-alive
    connection (what Prometheus does between scrapes) and records both."""
    s = f"{board.state}/secrets"
    ctx = ssl.create_default_context(cafile=f"{s}/board-ca.pem")
    ctx.load_cert_chain(f"{s}/client.crt", f"{s}/client.key")
    req = b"GET /healthz HTTP/1.1\r\nHost: jetkvm.local\r\n\r\n"

    def exchange(conn):
        conn.sendall(req)
        buf = b""
        while not buf.endswith(b"ok\n"):
            chunk = conn.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed: {buf!r}")
            buf += chunk

    def connect():
        raw = socket.create_connection(("127.0.0.1", board.metrics), timeout=10)
        return ctx.wrap_socket(raw, server_hostname="jetkvm.local", session=last[0])

    last = [None]
    t = time.monotonic()
    resumed = 0
    for _ in range(n):
        with connect() as conn:
            exchange(conn)
            resumed += conn.session_reused
            last[0] = conn.session
    fresh = (time.monotonic() - t) / n
    with connect() as conn:
        exchange(conn)
        t = time.monotonic()
        for _ in range(n):
            exchange(conn)
        kept = (time.monotonic() - t) / n
    check("board: mTLS sessions never resumed", resumed == 0, f"{resumed} of {n} resumed")
    print(f"board: mTLS new connection (full handshake) {fresh * 1000:.0f} ms, "
          f"request on a kept-alive connection {kept * 1000:.0f} ms", flush=True)
    with open(f"{board.state}/mtls-handshake-ms", "w") as f:
        f.write(f"{fresh * 1000:.0f} {kept * 1000:.0f}\n")


def boot(c):
    """Boot the image; the daemon as init started it: its user, capabilities, version, probe."""
    board = c.board
    subprocess.run(
        [f"{ROOT}/scripts/board/boot-board", "--detach", "--state", board.state,
         "--http-port", str(board.http), "--metrics-port", str(board.metrics),
         "--test-disk", f"{ROOT}/out/board/testdisk.img"],
        check=True, stdout=subprocess.DEVNULL,
    )
    with open(f"{board.state}/boot-to-scrape-seconds") as f:
        print(f"board up: first successful scrape {f.read().strip()}s after power-on", flush=True)
    check("board: daemon started by BusyBox init from S95jetkvm-metrics",
          "supervise" in board.sh("ps") and "Starting jetkvm-metrics: OK" in board.console_text())
    check("board: no C library in the image", board.sh("ls /lib/ld-* /lib/libc.so* 2>/dev/null | wc -l").strip() == "0")
    # Least privilege: its own user, one capability, no way back.
    status = board.sh("grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs):' "
                      "/proc/$(cat /var/run/jetkvm-metrics.pid)/status")
    print(status, flush=True)
    fields = {k: v.split() for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)}
    uid = board.sh("grep '^jetkvm-metrics:' /etc/passwd | cut -d: -f3").strip()
    dac_read_search = ["0000000000000004"]
    check("board: the daemon runs as jetkvm-metrics, no groups, CAP_DAC_READ_SEARCH only, no_new_privs",
          uid.isdigit() and uid != "0" and fields.get("Uid") == [uid] * 4 and fields.get("Groups") == []
          and all(fields.get(cap) == dac_read_search for cap in ("CapEff", "CapPrm", "CapBnd"))
          and all(fields.get(cap) == ["0000000000000000"] for cap in ("CapInh", "CapAmb"))
          and fields.get("NoNewPrivs") == ["1"], status)
    owners = board.sh("stat -c %u /userdata/jetkvm/metrics /userdata/jetkvm/metrics/token /var/run/jetkvm-metrics.pid"
                      " /userdata/jetkvm/metrics/config-mtls.toml").split()
    check("board: its token directory alone is its own; the configuration's directory, files and pid file root's",
          owners == ["0", uid, "0", "0"], repr(owners))
    # The system version is told to a client on the device (the update's
    # probe), never to the LAN.
    version = board.sh("cat /version").strip()
    with urllib.request.urlopen(f"http://127.0.0.1:{board.http}/healthz", timeout=10) as r:
        lan = r.read()
    check("board: /healthz tells the LAN only ok", lan == b"ok\n", repr(lan))
    local = board.sh("wget -q -O - http://127.0.0.1:3080/healthz")
    check("board: /healthz tells a client on the device the version", local == f"ok {version}\n", repr(local))
    probe = board.sh("/etc/init.d/S95jetkvm-metrics probe; echo exit=$?")
    check("board: S95 probe answers with the daemon's configuration", "answered with version" in probe and "exit=0" in probe, probe)
    c.token = {"Authorization": "Bearer " + board.secret("token")}


def scrapes(c):
    """Prometheus scrapes the board: basic auth, token, a wrong password, mTLS while off."""
    board = c.board
    c.t0 = time.time()
    prom = c.prom = Prometheus.for_board(c.work, free_port(), board, kit_rules=True)
    until("Prometheus", lambda: prom.query("up") is not None, 60)
    until("basic and token jobs up", lambda: prom.up("basic") == 1 and prom.up("token") == 1, 60)
    check("prometheus: basic-auth job up", prom.up("basic") == 1)
    check("prometheus: token job up", prom.up("token") == 1)
    until("wrong-password job scraped", lambda: prom.up("jetkvm-wrong") is not None, 30)
    check("prometheus: wrong-password job down", prom.up("jetkvm-wrong") == 0)
    check("prometheus: mTLS job down while the metrics service is off", prom.up("mtls") == 0)
    uptime = until("uptime from the board", lambda: prom.value('jetkvm_system_uptime_seconds{job="token"}'), 30)
    check("prometheus: board uptime above 0", uptime > 0, str(uptime))
    failures = until(
        "auth failure counted",
        lambda: prom.value('jetkvm_exporter_auth_failures_total{job="token",reason="bad_password"}'),
        30,
    )
    check("board: auth failure counter rose", failures >= 1, str(failures))
    # The kit's two jobs: /healthz answers Prometheus without a credential,
    # so a refused credential is told from a device that cannot be reached.
    check("prometheus: the credential-free health job up",
          until("health job up", lambda: prom.up("jetkvm-health") == 1, 30))
    check("alerts: JetKVMScrapeRefused fires for the wrong-password job while /healthz answers",
          until("JetKVMScrapeRefused", lambda: prom.firing("JetKVMScrapeRefused", job="jetkvm-wrong"), 60))
    check("alerts: JetKVMDeviceUnreachable silent while /healthz answers", not prom.firing("JetKVMDeviceUnreachable"))


def password_change(c):
    """The device password changes in place: the next scrape follows, no restart."""
    board = c.board
    prom = c.prom
    url = c.url
    old = board.secret("device-password")
    new = "changed-" + old
    hashed = c.hashed = device_hash(new)
    c.new = new
    doc = json.dumps({"localAuthMode": "password", "hashed_password": hashed, "local_auth_token": "", "tls_mode": ""}, indent=2)
    board.sh(f"printf '%s\\n' '{doc}' > /userdata/kvm_config.json")
    # Prometheus's basic job sends the old password every second from the
    # same address: while its check runs, the same password is answered 503
    # (busy), and the two share the address's failure budget (429).
    status = until("old password answered", lambda: (st := http_status(url, basic(old))) != 503 and st, 30)
    check("board: old password refused on the next scrape, no restart", status in (401, 429), str(status))
    check("board: new password accepted", http_status(url, basic(new)) == 200)
    until("basic job down with the old password", lambda: prom.up("basic") == 0, 30)
    with open(prom.password_file, "w") as f:
        f.write(new)
    until("basic job back with the new password", lambda: prom.up("basic") == 1, 30)
    check("prometheus: basic job follows the password change", prom.up("basic") == 1)


def kill_9(c):
    """kill -9: the supervisor brings the daemon back."""
    board = c.board
    url = c.url
    token = c.token
    pid = board.sh("cat /var/run/jetkvm-metrics.pid").strip()
    board.sh(f"kill -9 {pid}")
    killed = time.monotonic()
    until("daemon back after kill -9", lambda: http_status(url, token) == 200, 10)
    back = time.monotonic() - killed
    check("board: daemon back within 5 s of kill -9", back < 5, f"{back:.1f}s")
    check("board: a new daemon process", board.sh("cat /var/run/jetkvm-metrics.pid").strip() != pid)


def device_tls(c):
    """The device turns its TLS on and off: port 3080 follows."""
    board = c.board
    prom = c.prom
    url = c.url
    token = c.token
    # The device turns its TLS on (self-signed): port 3080 follows, no
    # restart; nothing answers in clear until the device has issued its
    # certificate, then HTTPS with it; off again, plain HTTP returns.
    device = lambda tls_mode: json.dumps({"localAuthMode": "password", "hashed_password": c.hashed,
                                          "local_auth_token": "", "tls_mode": tls_mode}, indent=2)
    board.sh(f"printf '%s\\n' '{device('self-signed')}' > /userdata/kvm_config.json")
    check("board: device TLS on, certificates pending: plain HTTP refused", http_status(url, token) == 400)
    certs = device_certificates(c.work)
    board.sh("mkdir -p /userdata/jetkvm/tls")
    for name in ("__ca__.crt", "jetkvm.local.key", "jetkvm.local.crt"):
        board.sh(f"printf '%s\\n' '{certs[name]}' > /userdata/jetkvm/tls/{name}")
    cafile = f"{c.work}/__ca__.crt"
    status = until("HTTPS with the device's certificate",
                   lambda: https_status(board.http, "/metrics", token, cafile, "jetkvm.local"), 30)
    check("board: HTTPS on the same port with the device's certificate", status == 200, str(status))
    check("board: plain HTTP still refused with TLS on", http_status(url, token) == 400)
    check("board: settings page over HTTPS with the device password",
          https_status(board.http, "/settings", basic(c.new), cafile, "jetkvm.local") == 200)
    board.sh(f"printf '%s\\n' '{device('')}' > /userdata/kvm_config.json")
    check("board: device TLS off: plain HTTP again", http_status(url, token) == 200)
    check("board: and no TLS", https_status(board.http, "/metrics", token, cafile, "jetkvm.local") is None)
    until("token job up again", lambda: prom.up("token") == 1, 30)


def bounded_log(c):
    """A flood of refusals: the system log stays within its buffer."""
    board = c.board
    prom = c.prom
    url = c.url
    # Logs are bounded: the daemon logs to syslogd's fixed ring buffer,
    # never to a file in /var/log (RAM on the device). Fill the buffer
    # with other messages, then flood refusals: the daemon's lines are
    # there, and the log is no bigger than the buffer.
    board.sh("yes 'filler: a long line to fill the system log buffer past its size, over and over' "
             "| head -n 8000 | logger -t filler", timeout=120)
    for _ in range(150):
        http_status(url)
    check("board: refusals still answered during the flood", http_status(url) in (401, 429))
    logged = board.sh("logread | grep -c 'jetkvm-metrics.*refused /metrics'").strip()
    check("board: refusals reach the system log", int(logged or 0) >= 1, logged)
    size = int(board.sh("logread | wc -c").strip())
    check("board: system log within its 256 KiB buffer after a flood", size <= 256 * 1024, f"{size} bytes")
    files = board.sh("find /var/log/ -type f | wc -l").strip()
    check("board: no log file grows in /var/log", files == "0", board.sh("ls -la /var/log/"))
    print(f"board: system log {size} bytes after 8000 filler lines and 150 refusals", flush=True)
    check("prometheus: token job up through the flood (checked over budget)", prom.up("token") == 1)
    # A burst of wrong passwords (one, guessed again and again): the kit's
    # alert fires on them, not only on the limiter's refusals of the flood.
    for _ in range(80):
        http_status(url, basic("not-the-password"))
    guesses = 'sum(instance_reason:jetkvm_exporter_auth_failures:increase5m{job="token",reason="bad_password"})'
    check("alerts: over 60 wrong passwords in 5 minutes recorded after the burst",
          until("wrong passwords recorded", lambda: (prom.value(guesses) or 0) > 60, 60))
    check("alerts: JetKVMBruteForce fires after a burst of wrong passwords",
          until("JetKVMBruteForce", lambda: prom.firing("JetKVMBruteForce", job="token"), 60))


def mtls_service(c):
    """The mTLS metrics service, enabled the way a user migrates."""
    board = c.board
    prom = c.prom
    url = c.url
    token = c.token
    # Enable the mTLS metrics service (the migration: the job exists first).
    board.sh("cp /userdata/jetkvm/metrics/config-mtls.toml /userdata/jetkvm/metrics/config.toml"
             " && /etc/init.d/S95jetkvm-metrics restart")
    until("mTLS job up", lambda: prom.up("mtls") == 1, 60)
    check("prometheus: mTLS job up with a client certificate", prom.up("mtls") == 1)
    check("board: /metrics moved off the general listener", http_status(url, token) == 404)
    until("general jobs down after the move", lambda: prom.up("token") == 0, 30)
    tls = until("listener state", lambda: prom.value('jetkvm_exporter_listener_info{job="mtls",listener="metrics_service",tls="mtls"}'), 30)
    check("prometheus: metrics service reports mTLS", tls == 1)
    measure_mtls_handshakes(board)
    rss = board.sh("grep '^Rss' /proc/$(cat /var/run/jetkvm-metrics.pid)/smaps_rollup").split()[1]
    print(f"board: daemon RSS (smaps_rollup) {rss} kB", flush=True)
    with open(f"{board.state}/daemon-rss-kb", "w") as f:
        f.write(rss)


def init_script(c):
    """The init script: stop (the kit's "unreachable" alert), FAIL, OK with
    /var/log read-only, a restart during the back-off."""
    board = c.board
    prom = c.prom
    out = board.sh("/etc/init.d/S95jetkvm-metrics stop; echo exit=$?", timeout=60)
    try:
        check("alerts: JetKVMDeviceUnreachable fires with the daemon stopped by its init script",
              until("JetKVMDeviceUnreachable", lambda: prom.firing("JetKVMDeviceUnreachable", job="jetkvm-health"), 60), out)
    finally:
        board.sh("/etc/init.d/S95jetkvm-metrics start", timeout=60)
    until("mTLS job up after the stop", lambda: prom.up("mtls") == 1, 60)
    # The init script reports what happened. A daemon that cannot start
    # (a bad configuration) is FAIL with a non-zero exit...
    cfg = "/userdata/jetkvm/metrics/config.toml"
    out = board.sh(f"cp {cfg} /tmp/config.good && echo 'bogus = 1' > {cfg} && "
                   "/etc/init.d/S95jetkvm-metrics restart; echo exit=$?", timeout=60)
    check("board: init script says FAIL when the daemon cannot start",
          "Starting jetkvm-metrics: FAIL" in out and "exit=1" in out, out)
    # ...and one that starts is OK even where /var/log cannot be written.
    out = board.sh(f"cp /tmp/config.good {cfg} && mount -o remount,ro /tmp && "
                   "/etc/init.d/S95jetkvm-metrics restart; echo exit=$?; mount -o remount,rw /tmp", timeout=60)
    check("board: init script OK with /var/log read-only", "Starting jetkvm-metrics: OK" in out and "exit=0" in out, out)
    until("mTLS job up after the restarts", lambda: prom.up("mtls") == 1, 60)
    # A restart while the supervisor backs off from a crash-looping
    # configuration: the old supervisor stops at once and never removes
    # the new daemon's pid file or log pipe.
    out = board.sh(f"echo 'bogus = 1' > {cfg} && /etc/init.d/S95jetkvm-metrics restart; sleep 12;"
                   f" cp /tmp/config.good {cfg} && /etc/init.d/S95jetkvm-metrics restart; echo exit=$?", timeout=90)
    check("board: restart during the back-off starts the fixed daemon", out.rstrip().endswith("Starting jetkvm-metrics: OK\nexit=0"), out)
    time.sleep(40)
    # Every process whose command line is the supervisor's, as "(comm) ppid":
    # the supervisor is a shell whose parent is init (as an old one would
    # be); an applet a shell runs without exec keeps that command line under
    # its own name, and no other shell (one waiting for the logger) is there.
    state = board.sh("cat /var/run/jetkvm-metrics.pid && kill -0 $(cat /var/run/jetkvm-metrics.pid) && echo alive;"
                     " ls /var/run/ | grep -c '^jetkvm-metrics.log';"
                     " for d in /proc/[0-9]*; do tr '\\0' ' ' <$d/cmdline 2>/dev/null | grep -q ' [s]upervise' &&"
                     " cut -d' ' -f2,4 $d/stat 2>/dev/null; done; true")
    words = state.split()
    check("board: 40 s later the daemon's pid file, one log pipe and one supervisor remain",
          words[1:3] == ["alive", "1"] and words[3:].count("(sh)") == 1
          and [words[i + 1] for i in range(3, len(words), 2) if words[i] == "(sh)"] == ["1"], state)
    until("mTLS job up after the back-off", lambda: prom.up("mtls") == 1, 60)


def daemon_user_against_root(c):
    """What the daemon's user can do to root (a third review): nothing root
    reads is that user's to write. As that uid, it cannot replace the
    configuration, put a FIFO or a link in its place, or touch the pid file.
    A configuration of that user's, a FIFO or a link to /dev/zero in its
    place (what an earlier release's layout allowed) is refused by serve,
    probe and check-config at once, each naming it. And that earlier layout
    is taken back at start, the token kept."""
    board, prom = c.board, c.prom
    uid, gid = board.sh("grep '^jetkvm-metrics:' /etc/passwd | cut -d: -f3,4").strip().split(":")
    m = "/userdata/jetkvm/metrics"
    cfg = f"{m}/config.toml"
    saved = board.sh(f"cp {cfg} /tmp/config.saved && sha256sum {cfg}").split()[0]
    for what, command in (("write the configuration", f"echo bogus > {cfg}"),
                          ("put a FIFO in its place", f"rm -f {cfg}; mkfifo {cfg}"),
                          ("put a link to /dev/zero in its place", f"ln -sf /dev/zero {cfg}"),
                          ("put a configuration beside it", f"touch {m}/other.toml"),
                          ("rewrite the pid file", "echo 1 > /var/run/jetkvm-metrics.pid")):
        out = board.sh(f"setpriv --reuid={uid} --regid={gid} --clear-groups sh -c '{command}' 2>&1; echo exit=$?")
        check(f"board: as the daemon's user, it cannot {what}", "exit=0" not in out, out)
    check("board: the configuration as root left it", board.sh(f"sha256sum {cfg}").split()[0] == saved)
    for what, setup, why in (
            ("a configuration the daemon's user owns", f"chown {uid} {cfg}",
             f"owned by uid {uid}, not by the user running this (uid 0)"),
            ("a FIFO", f"rm -f {cfg} && mkfifo {cfg}", "not a regular file"),
            ("a link to /dev/zero", f"rm -f {cfg} && ln -s /dev/zero {cfg}", "a symbolic link")):
        line = f"config {cfg}: {why}"
        out = board.sh(f"{setup} && /etc/init.d/S95jetkvm-metrics restart; echo start=$?;"
                       " timeout 20 /etc/init.d/S95jetkvm-metrics probe; echo probe=$?;"
                       f" timeout 20 jetkvm-metrics check-config --config {cfg}; echo check=$?;"
                       f" logread | grep -cF '{line}'", timeout=120)
        said = out.split()
        check(f"board: {what} as the configuration: serve refuses it (FAIL), probe and check-config at once, each naming it",
              "Starting jetkvm-metrics: FAIL" in out and "start=1" in said and "probe=124" not in said
              and "probe=0" not in said and "check=1" in said and out.count(line) >= 2 and said[-1] != "0", out)
        board.sh(f"rm -f {cfg} && cp /tmp/config.saved {cfg}")
    # The layout of earlier releases: the metrics directory the daemon's
    # user's, the token in it.
    board.sh(f"chown {uid} {m} && mv {m}/token/token.sha256 {m}/token.sha256 && rmdir {m}/token")
    out = board.sh("/etc/init.d/S95jetkvm-metrics restart; echo exit=$?", timeout=60)
    owners = board.sh(f"stat -c %u {m} {m}/token {m}/token/token.sha256").split()
    token = board.sh(f"jetkvm-metrics token status --config {cfg}")
    check("board: an earlier release's layout taken back at start: the directory root's, the token moved to the user's",
          "exit=0" in out and owners[:2] == ["0", uid] and token.startswith("token set since"), f"{out} {owners} {token}")
    until("mTLS job up", lambda: prom.up("mtls") == 1, 60)


# The device's gadget, on dummy_hcd's controller: keyboard, absolute and
# relative mouse (a minimal report descriptor each), mass storage.


def kvm_state(c):
    """The KVM's own state on real kernel drivers from the test disk: vivid's
    HDMI input through its signal modes and timings (interlaced too), a
    gadget shaped like the device's on dummy_hcd, virtual media, unbinding,
    the RTC."""
    board, prom = c.board, c.prom
    board.sh(TEST_DRIVERS, timeout=90)
    board.sh(GADGET, timeout=60)
    cfg = "/userdata/jetkvm/metrics/config.toml"
    board.sh(f"cp {cfg} /tmp/config.kvm && {{ printf 'video_driver = \"vivid-000-vid-cap\"\\nvideo_query_interval = \"5s\"\\n';"
             f" cat /tmp/config.kvm; }} > {cfg} && /etc/init.d/S95jetkvm-metrics restart", timeout=60)
    until("mTLS job up with vivid", lambda: prom.up("mtls") == 1, 60)

    value = mtls_value(prom)

    def state(s):
        return until(f"HDMI {s}", lambda: value(f'jetkvm_hdmi_signal{{state="{s}"}}') == 1, 30)

    state("ok")
    check("board: HDMI ok at vivid's 1280x720, 60 Hz, +5 V",
          (value("jetkvm_hdmi_width_pixels"), value("jetkvm_hdmi_height_pixels"), value("jetkvm_hdmi_refresh_hertz"),
           value("jetkvm_hdmi_power_present")) == (1280, 720, 60, 1))
    # vivid drops +5 V with the signal, and keeps it without a lock or in range.
    for mode, name, power in ((1, "no_signal", 0), (2, "no_lock", 1), (3, "out_of_range", 1)):
        board.sh(f"/tmp/t/bin/dv-signal /dev/video0 mode {mode}")
        state(name)
        check(f"board: HDMI {name} after vivid's signal mode {mode}, no picture, +5 V {power}",
              value("jetkvm_hdmi_width_pixels") is None and value("jetkvm_hdmi_power_present") == power)
        alert = {"no_signal": "JetKVMHDMICableOrHostOff", "out_of_range": "JetKVMHDMIOutOfRange"}.get(name)
        if alert:
            check(f"alerts: {alert} fires on vivid's {name}",
                  until(alert, lambda: prom.firing(alert, job="mtls", state=name), 60))
    board.sh("/tmp/t/bin/dv-signal /dev/video0 mode 0 && /tmp/t/bin/dv-signal /dev/video0 timings 1080p60")
    state("ok")
    check("board: new timings 1920x1080", until("1080p", lambda: value("jetkvm_hdmi_width_pixels") == 1920, 30)
          and value("jetkvm_hdmi_height_pixels") == 1080)
    age = value("jetkvm_hdmi_query_age_seconds")
    check("board: the receiver is asked at most every 5 s", age is not None and age < 5.5, str(age))
    # Interlaced: vivid keeps V4L2's own CEA-861 timings (the frame's clock,
    # both fields' lines); 1080i60 is 60 fields a second.
    board.sh("/tmp/t/bin/dv-signal /dev/video0 timings 1080i60")
    check("board: 1080i60 reads interlaced, 1080 lines, 60 fields a second",
          until("1080i", lambda: value("jetkvm_hdmi_interlaced") == 1, 30)
          and (value("jetkvm_hdmi_height_pixels"), value("jetkvm_hdmi_refresh_hertz")) == (1080, 60),
          f"{value('jetkvm_hdmi_height_pixels')} {value('jetkvm_hdmi_refresh_hertz')}")
    board.sh("/tmp/t/bin/dv-signal /dev/video0 timings 1080p60")
    until("progressive again", lambda: value("jetkvm_hdmi_interlaced") == 0, 30)

    check("board: host USB configured at high speed", until(
        "USB configured", lambda: value('jetkvm_usb_gadget_state{state="configured"}') == 1, 30)
        and value('jetkvm_usb_gadget_speed_info{speed="high-speed"}') == 1)
    check("board: the gadget's four functions enabled", all(value(
        f'jetkvm_usb_gadget_function_enabled{{role="{r}"}}') == 1
        for r in ("keyboard", "absolute_mouse", "relative_mouse", "mass_storage")))
    check("board: no virtual media", value("jetkvm_virtual_media_mounted") == 0)
    lun = "/sys/kernel/config/usb_gadget/jetkvm/functions/mass_storage.usb0/lun.0"
    board.sh(f"mkdir -p /userdata/jetkvm/images && dd if=/dev/zero of=/userdata/jetkvm/images/debian.iso bs=1024 count=2048"
             f" 2>/dev/null && echo 1 > {lun}/cdrom && echo 1 > {lun}/ro && echo /userdata/jetkvm/images/debian.iso > {lun}/file")
    check("board: virtual media mounted, a 2 MiB read-only CD-ROM image",
          until("media", lambda: value("jetkvm_virtual_media_mounted") == 1, 30)
          and value('jetkvm_virtual_media_info{image="debian.iso",source="local",type="cdrom"}') == 1
          and value("jetkvm_virtual_media_size_bytes") == 2097152 and value("jetkvm_virtual_media_read_only") == 1)
    board.sh("echo '' > /sys/kernel/config/usb_gadget/jetkvm/UDC")
    check("board: unbound, the host USB link is down", until(
        "USB down", lambda: value('jetkvm_usb_gadget_state{state="not attached"}') == 1, 30)
        and value("jetkvm_usb_gadget_bound") == 0)
    check("alerts: JetKVMHostUSBDown fires with the gadget unbound",
          until("JetKVMHostUSBDown", lambda: prom.firing("JetKVMHostUSBDown", job="mtls"), 60))
    # Virtual media turned off in the app: the function unlinked from the
    # configuration, its LUN's file left behind.
    board.sh("rm /sys/kernel/config/usb_gadget/jetkvm/configs/c.1/mass_storage.usb0")
    check("board: virtual media turned off (unlinked, its file left behind): not mounted",
          until("media off", lambda: value("jetkvm_virtual_media_mounted") == 0, 30)
          and value('jetkvm_virtual_media_info{image="debian.iso"}') is None
          and "debian.iso" in board.sh(f"cat {lun}/file"))

    board.sh("date -s @$(( $(date +%s) + 120 )) >/dev/null")
    offset = until("RTC offset", lambda: (v := value('jetkvm_rtc_offset_seconds{rtc="rtc0"}')) is not None and v > 100 and v, 30)
    try:
        drift = until("JetKVMClockDrift", lambda: prom.firing("JetKVMClockDrift", job="mtls"), 60)
    finally:  # the board's certificates are short-lived: the clock goes back whatever happened
        board.sh("date -s @$(( $(date +%s) - 120 )) >/dev/null")
    check("alerts: JetKVMClockDrift fires with the clock 2 minutes off the RTC", drift)
    check("board: the system clock 2 minutes ahead of the RTC shows", offset and 115 <= offset <= 125, str(offset))


# The board's stand-in for the device's app (the test disk's jetkvm_app,
# board/jetkvm/qemu/test-disk/jetkvm-app.c) and its control files.
STANDIN = "/tmp/jetkvm-standin"
ROLES = ("supervisor", "app", "native")


def app_generations(c):
    """The device's app in both generations, by the board's stand-in: the
    same binary executed again (supervisor, app, native with
    -subcomponent=native), or the app and a separate jetkvm_native. Through
    the real Prometheus: no app alert while it runs whole, capture through
    native only with a session and a signal, native killed (the alert, no
    capture), native started again (a new start time; twice, the restart
    alert)."""
    board, prom = c.board, c.prom
    value = mtls_value(prom)
    cfg = "/userdata/jetkvm/metrics/config.toml"
    up = {r: value(f'jetkvm_app_up{{role="{r}"}}') for r in ROLES}
    check("board: the device's app down, nothing seen yet: only the app's series, 0",
          up == {"supervisor": None, "app": 0, "native": None}, repr(up))
    # The daemon asks the same node every 5 s: its own descriptor never counts.
    check("board: nobody captures while the app is down, though the daemon queries the node",
          value("jetkvm_video_capture_open") == 0 and value('jetkvm_scrape_collector_success{collector="video_capture"}') == 1)
    check("alerts: JetKVMAppDown fires while the app is down",
          until("JetKVMAppDown", lambda: prom.firing("JetKVMAppDown", job="mtls", role="app"), 60))
    for shape, roles in (("one_binary", ROLES), ("two_binaries", ROLES[1:])):
        app_generation(c, shape, roles)
    board.sh(f"cp /tmp/config.kvm {cfg} && /etc/init.d/S95jetkvm-metrics restart", timeout=60)


def mtls_value(prom):
    """A query's value on the mTLS job."""
    return lambda q: prom.value(q.replace("{", '{job="mtls",', 1) if "{" in q else q + '{job="mtls"}')


def app_generation(c, shape, roles):
    """One generation of the app, started, used, its native killed and
    started again, then stopped."""
    board, prom = c.board, c.prom
    value = mtls_value(prom)
    ups = lambda: {r: value(f'jetkvm_app_up{{role="{r}"}}') for r in ROLES}
    whole = {r: (1 if r in roles else None) for r in ROLES}
    board.sh(f"mkdir -p {STANDIN} && rm -f {STANDIN}/* && (STANDIN_SHAPE={shape} /tmp/t/bin/jetkvm_app"
             " </dev/null >/dev/null 2>&1 &)")
    check(f"board: {shape}: each of its roles up, no other", until(f"{shape} up", lambda: ups() == whole, 60), repr(ups()))
    check(f"board: {shape}: its generation known, each role's start time",
          value(f'jetkvm_app_generation_info{{generation="{shape}"}}') == 1
          and all(value(f'jetkvm_app_start_time_seconds{{role="{r}"}}') for r in roles))
    check(f"alerts: {shape}: no JetKVMAppDown while the app runs whole",
          until("JetKVMAppDown resolved", lambda: not prom.firing("JetKVMAppDown", job="mtls"), 60))
    capture = 'jetkvm_video_capture_open'
    check(f"board: {shape}: no session, no capture", value(capture) == 0)
    board.sh(f"touch {STANDIN}/session")
    check(f"board: {shape}: a session with the HDMI signal: native holds the capture node",
          until("capture", lambda: value(capture) == 1, 30))
    if shape == "one_binary":
        board.sh("/tmp/t/bin/dv-signal /dev/video0 mode 1")
        check("board: the signal gone under the session: native lets the node go",
              until("no capture", lambda: value(capture) == 0, 30))
        board.sh("/tmp/t/bin/dv-signal /dev/video0 mode 0")
        until("capture again", lambda: value(capture) == 1, 30)
        open_files_helper(board)
    native = "for p in $(pidof jetkvm_app jetkvm_native); do grep -qs native /proc/$p/cmdline && echo $p; done"
    first = value('jetkvm_app_start_time_seconds{role="native"}')
    board.sh(f"touch {STANDIN}/hold-native && kill $({native})")
    down = dict(whole, native=0)
    check(f"board: {shape}: native killed: it alone down", until("native down", lambda: ups() == down, 30), repr(ups()))
    check(f"board: {shape}: native killed: no capture", value(capture) == 0)
    check(f"alerts: {shape}: JetKVMAppDown fires for native while the app runs",
          until("JetKVMAppDown native", lambda: prom.firing("JetKVMAppDown", job="mtls", role="native"), 60))
    board.sh(f"rm {STANDIN}/hold-native")
    again = lambda: ups() == whole and (value('jetkvm_app_start_time_seconds{role="native"}') or 0) > first
    check(f"board: {shape}: native started again by the app: up, a later start time", until("native again", again, 60))
    check(f"alerts: {shape}: JetKVMAppDown clears", until("resolved", lambda: not prom.firing("JetKVMAppDown", job="mtls"), 60))
    check(f"board: {shape}: capturing again", until("capture", lambda: value(capture) == 1, 30))
    if shape == "one_binary":
        # A second restart within 30 minutes: a restart loop.
        board.sh(f"kill $({native})")
        check("alerts: JetKVMAppRestarting fires for native after a second restart",
              until("JetKVMAppRestarting", lambda: prom.firing("JetKVMAppRestarting", job="mtls", role="native"), 60))
    # (Native may end with the app before its own signal reaches it.)
    board.sh(f"touch {STANDIN}/hold-native && kill $(pidof jetkvm_app jetkvm_native) 2>/dev/null; true")
    until(f"{shape} stopped", lambda: value('jetkvm_app_up{role="app"}') == 0, 30)


def open_files_helper(board):
    """The one process with CAP_SYS_PTRACE: the daemon's child, its user,
    that capability and CAP_DAC_READ_SEARCH alone, no_new_privs, and no
    descriptor but its socket and the standard streams."""
    daemon = board.sh("cat /var/run/jetkvm-metrics.pid").strip()
    pids = board.sh("pidof jkm-openfiles").split()
    status = board.sh(f"grep -E '^(PPid|Uid|Cap...|NoNewPrivs|Seccomp):' /proc/{pids[0]}/status") if len(pids) == 1 else ""
    fields = {k: v.split() for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)}
    uid = board.sh("grep '^jetkvm-metrics:' /etc/passwd | cut -d: -f3").strip()
    check("board: one open-files helper, the daemon's child, as jetkvm-metrics with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
          fields.get("PPid") == [daemon] and fields.get("Uid") == [uid] * 4
          and all(fields.get(cap) == ["0000000000080004"] for cap in ("CapEff", "CapPrm", "CapBnd"))
          and all(fields.get(cap) == ["0000000000000000"] for cap in ("CapInh", "CapAmb"))
          and fields.get("NoNewPrivs") == ["1"], f"{pids} {status}")
    nets = board.sh(f"readlink /proc/{daemon}/ns/net; readlink /proc/{pids[0]}/ns/net").split() if pids else []
    check("board: the helper under its seccomp filter, in a network namespace of its own",
          fields.get("Seccomp") == ["2"] and len(nets) == 2 and nets[0] != nets[1], f"{status} {nets}")
    fds = board.sh(f"ls -l /proc/{pids[0]}/fd | grep -c socket:; ls /proc/{pids[0]}/fd | wc -l").split() if pids else []
    check("board: the helper holds its one socket and standard streams, no listener", fds == ["1", "4"], repr(fds))




def app_metrics(c):
    """The device app's own metrics, re-exposed: BusyBox httpd on the
    app's port serves an exposition shaped like the app's; the daemon merges
    its 120 clients away; the app silent reports success 0."""
    board, prom = c.board, c.prom

    value = mtls_value(prom)

    ok = 'jetkvm_scrape_collector_success{collector="app_metrics"}'
    check("board: the app's metrics: nothing on port 80, success 0", until("app metrics absent", lambda: value(ok) == 0, 60))
    board.sh(app_exposition(120), timeout=60)
    board.sh("httpd -p 127.0.0.1:80 -h /tmp/app")
    check("board: the app's metrics through BusyBox httpd: success 1", until("app metrics", lambda: value(ok) == 1, 60))
    check("board: 120 clients merged into one counter and one histogram, sums kept",
          value('jetkvm_connection_ping_sent_total{type="local"}') == 7260
          and prom.value('count(jetkvm_connection_ping_sent_total{job="mtls"})') == 1
          and value('jetkvm_connection_ping_duration_seconds_bucket{type="local",le="0.1"}') == 120
          and value('jetkvm_connection_ping_duration_seconds_count{type="local"}') == 120
          and prom.value('count({job="mtls",source=~"10.*"})') is None)
    check("board: the app's build info renamed, its cloud, time sync and DC families, no Go runtime",
          value('jetkvm_app_build_info{version="0.4.8"}') == 1 and value("jetkvm_cloud_connection_status") == 1
          and value("jetkvm_timesync_status") == 1 and value("jetkvm_dc_power_watts") == 12.5
          and value("go_goroutines") is None)
    board.sh("kill $(pidof httpd)")
    check("board: the app silent again: success 0, its families gone",
          until("app metrics gone", lambda: value(ok) == 0, 60) and value("jetkvm_timesync_status") is None)


def network_link(c):
    """QEMU unplugs and replugs the board's cable (set_link on its QMP
    socket): the kernel loses the carrier and gets it back, the forwarded
    ports follow, and the scrape after counts both changes."""
    board, prom = c.board, c.prom
    carrier, up = 'jetkvm_network_carrier{device="eth0"}', 'jetkvm_network_up{device="eth0"}'
    changes = 'jetkvm_network_carrier_changes_total{device="eth0"}'
    before = until("a scrape of the metrics service", board.scrape_mtls, 30)
    check("board: eth0 up with a carrier, its carrier changes counted",
          before.get(carrier) == 1 and before.get(up) == 1 and changes in before,
          f"{before.get(carrier)} {before.get(up)} {before.get(changes)}")
    # While the cable is out the forwards are cut too: only the console reaches the board.
    flap = board.flap_link()
    check("board: cable out: eth0 carrier 0, operstate down (console)", flap["out"] == "0 down", repr(flap["out"]))
    check("board: cable out: the forwarded port does not answer", flap["port_out"] is None, str(flap["port_out"]))
    check("board: cable in: eth0 carrier 1, operstate up (console)", flap["in"] == "1 up", repr(flap["in"]))
    check("board: cable in: the forwarded port answers again", flap["port_in"] == 200, str(flap["port_in"]))
    print(f"board: carrier lost {flap['out_seconds']:.1f}s after set_link off; back {flap['in_seconds']:.1f}s and "
          f"the forwarded port answering {flap['port_seconds']:.1f}s after set_link on", flush=True)
    after = board.scrape_mtls()
    info = [k for k, v in after.items() if k.startswith('jetkvm_network_info{device="eth0",') and v == 1]
    check("board: scraped after: carrier 1, operstate up",
          after.get(carrier) == 1 and after.get(up) == 1 and len(info) == 1 and 'operstate="up"' in info[0],
          f"{after.get(carrier)} {after.get(up)} {info}")
    grew = after.get(changes, 0) - before.get(changes, 0)
    check("board: scraped after: carrier changes grew by at least 2", grew >= 2, f"{before.get(changes)} -> {after.get(changes)}")
    q = 'jetkvm_network_carrier_changes_total{job="mtls",device="eth0"}'
    seen = until("Prometheus scraping the changes", lambda: (v := prom.value(q)) is not None and v >= after.get(changes, 0) and v, 60)
    check("prometheus: mTLS job up again after the flap, with the changes",
          seen - before.get(changes, 0) >= 2 and prom.up("mtls") == 1, str(seen))


# What the board cannot have, by selector: no extcon reports a USB cable,
# and QEMU's virt board has no thermal zone.
BOARD_CANNOT = {
    r"^jetkvm_usb_target_powered\b": "no extcon on the board",
    r"^jetkvm_thermal_zone_celsius\b": "no thermal zone on QEMU's virt board",
}


def kit(c):
    """The operator's kit against this Prometheus: every selector of the
    rules and the dashboard matched series of the board during the run
    (but for what the board cannot have), and every rule evaluates."""
    board, prom = c.board, c.prom
    instance = f"127.0.0.1:({board.http}|{board.metrics})"
    selectors = subprocess.run([f"{ROOT}/scripts/checks/check-kit.py", "--selectors", instance],
                               check=True, capture_output=True, text=True).stdout.split()
    missing = [s for s in selectors if not prom.series(s, c.t0)]
    unexpected = [s for s in missing if not any(re.search(p, s) for p in BOARD_CANNOT)]
    check(f"kit: each of {len(selectors)} selectors of the rules and the dashboard matched the board's series",
          not unexpected, "no series: " + ", ".join(unexpected))
    stale = [p for p in BOARD_CANNOT if not any(re.search(p, s) for s in missing)]
    check("kit: what the board cannot have is indeed missing (the list is current)", not stale, ", ".join(stale))
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in prom.rules() if r.get("health") != "ok"]
    check(f"kit: every rule evaluates without error ({len(prom.rules())} rules)", not unhealthy, "; ".join(unhealthy))


def shutdown(c):
    """A clean shutdown through init."""
    board = c.board
    qpid = board.qemu_pid()
    board.sh("poweroff", timeout=5)
    until("board powered off", lambda: not os.path.exists(f"/proc/{qpid}"), 60)
    log = board.console_text()
    with open(f"{board.state}/console.log", errors="replace") as f:
        kernel = f.read()
    check("board: clean shutdown stopped the daemon", "Stopping jetkvm-metrics: OK" in log and "reboot: Power down" in kernel)


PHASES = [
    ("boot", boot),
    ("scrapes", scrapes),
    ("password change", password_change),
    ("kill -9", kill_9),
    ("device TLS", device_tls),
    ("bounded log", bounded_log),
    ("mTLS service", mtls_service),
    ("init script", init_script),
    ("the daemon's user against root", daemon_user_against_root),
    ("the KVM's own state", kvm_state),
    ("the device's app, both generations", app_generations),
    ("the device app's own metrics", app_metrics),
    ("the network link through QMP", network_link),
    ("the operator's kit", kit),
    ("shutdown", shutdown),
]


def main():
    work = tempfile.mkdtemp(prefix="jetkvm-e2e-")
    board = Board(f"{work}/board", free_port(), free_port())
    c = types.SimpleNamespace(work=work, board=board, prom=None, token=None,
                              url=f"http://127.0.0.1:{board.http}/metrics")
    return run_board("board", PHASES, c, extra=[f"{work}/prometheus.log"])


if __name__ == "__main__":
    sys.exit(main())
