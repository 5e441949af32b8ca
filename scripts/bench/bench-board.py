#!/usr/bin/env python3
"""The side-by-side comparison inside the emulated board: jetkvm-metrics
against Debian's armhf prometheus-node-exporter, on the benchmark variant of
the image (scripts/build/build-image --bench adds node_exporter and the glibc it
needs). Both serve TLS with basic auth against the device's own cost-10
bcrypt hash; node_exporter runs only the collectors that match ours. Rounds
alternate. Figures: RSS (smaps_rollup), CPU per scrape (from the guest's
/proc/PID/stat, the open-files helper's included) over keep-alive and on a
fresh TLS connection, scrape latencies, each collector's time, where the
daemon's resident memory is, the TLS cipher each chose.

The board runs with QEMU's instruction counting (boot-board --icount 0): the
guest's clock advances one nanosecond per instruction executed, so a CPU time
measured inside counts the work done, not how busy this machine was. Without
it, one configuration's CPU per scrape moved by a third between runs minutes
apart. Latencies are still measured here, on the host's clock.

With --kvm-state every source of the KVM's own state is there, as in the
end-to-end test: the test disk's drivers (vivid as the HDMI input, a gadget
on dummy_hcd), a stand-in for the device's app streaming from vivid's node,
a stand-in for its native helper, and BusyBox httpd serving an exposition
shaped like the app's (its Go runtime's families, three clients).

usage: scripts/bench/bench-board.py [--rounds N] [--scrapes N] [--fresh N] [--kvm-state] [--images DIR]
"""

import argparse
import base64
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.dont_write_bytecode = True
sys.path.insert(0, f"{ROOT}/tests/e2e")
from lib import GADGET, TEST_DRIVERS, app_metrics, free_port  # noqa: E402  (the end-to-end library)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    # CPU time is counted in 10 ms ticks: enough scrapes that one tick is
    # about 1% of a round.
    ap.add_argument("--scrapes", type=int, default=150)
    ap.add_argument("--fresh", type=int, default=30, help="scrapes on fresh TLS connections (default 30)")
    ap.add_argument("--kvm-state", action="store_true", help="every source of the KVM's own state present")
    ap.add_argument("--images", help="a benchmark image built elsewhere (default: out/board-bench, built if missing)")
    a = ap.parse_args()
    images = a.images or f"{ROOT}/out/board-bench"
    if not a.images and not os.path.exists(f"{images}/system.img"):
        subprocess.run([f"{ROOT}/scripts/build/build-image", "--bench"], check=True, stdout=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="jetkvm-bench-board-")
    state = f"{work}/state"
    http_port, metrics, node = free_port(), free_port(), free_port()
    disk = ["--test-disk", f"{ROOT}/out/board/testdisk.img"] if a.kvm_state else []
    subprocess.run([f"{ROOT}/scripts/board/boot-board", "--images", images, "--state", state, "--detach",
                    "--http-port", str(http_port), "--metrics-port", str(metrics), "--node-port", str(node),
                    "--icount", "0"] + disk,
                   check=True, stdout=subprocess.DEVNULL)
    qemu = int(open(f"{state}/qemu.pid").read())

    def sh(cmd, timeout=60):
        out = subprocess.run([f"{ROOT}/scripts/board/board-console.py", f"{state}/console.sock", cmd, "--timeout", str(timeout)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench-board: {cmd!r} failed: {out.stdout}{out.stderr}")
        return out.stdout

    try:
        password = open(f"{state}/secrets/device-password").read().strip()
        m = "/userdata/jetkvm/metrics"
        sh("H=$(sed -n 's/.*\"hashed_password\": \"\\(.*\\)\".*/\\1/p' /userdata/kvm_config.json); "
           f"printf 'tls_server_config:\\n  cert_file: {m}/server.crt\\n  key_file: {m}/server.key\\n"
           "basic_auth_users:\\n  admin: \"%s\"\\n' \"$H\" > /tmp/web.yml")
        sh("(prometheus-node-exporter --web.listen-address=:9100 --web.config.file=/tmp/web.yml "
           "--collector.disable-defaults --collector.cpu --collector.meminfo --collector.loadavg "
           "--collector.netdev --collector.filesystem --collector.thermal_zone --collector.stat "
           "--collector.time --collector.tcpstat --log.level=warn >/tmp/node.log 2>&1 &)")
        video = ""
        if a.kvm_state:
            sh(TEST_DRIVERS, timeout=90)
            sh(GADGET)
            # A KVM has a few viewers at once: three clients on the app's exposition.
            sh(app_metrics(3) + " && httpd -p 127.0.0.1:80 -h /tmp/app")
            # Today's app, capturing for a session: its three roles found,
            # /proc is not walked (see the app collector).
            sh("mkdir -p /tmp/jetkvm-standin && touch /tmp/jetkvm-standin/session"
               " && (/tmp/t/bin/jetkvm_app </dev/null >/dev/null 2>&1 &)")
            video = "video_driver = \"vivid-000-vid-cap\"\n"
        sh(f"{{ printf '{video}'; sed -e '/^\\[metrics_service\\]/,$d' {m}/config-mtls.toml; }} > {m}/config.toml && "
           f"printf '[metrics_service]\\nenabled = true\\nlisten_addr = \"0.0.0.0:3081\"\\n"
           f"[[metrics_service.keypairs]]\\ncert_file = \"{m}/server.crt\"\\nkey_file = \"{m}/server.key\"\\n' >> {m}/config.toml"
           " && /etc/init.d/S95jetkvm-metrics restart")
        ctx = ssl.create_default_context(cafile=f"{state}/secrets/board-ca.pem")
        auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode(),
                "Accept-Encoding": "gzip"}
        targets = {"node_exporter": node, "jetkvm-metrics": metrics}

        def get(conn):
            t = time.monotonic()
            conn.request("GET", "/metrics", headers=auth)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise SystemExit(f"bench-board: status {r.status}")
            return time.monotonic() - t, len(body)

        def pid(name):
            if name == "node_exporter":
                return sh("pidof prometheus-node-exporter").split()[0]
            return sh("cat /var/run/jetkvm-metrics.pid").strip()

        def ticks(p):
            f = sh(f"cat /proc/{p}/stat").split(")")[-1].split()
            return int(f[11]) + int(f[12])

        # The open-files helper works for the daemon's scrapes: its CPU counts.
        helper_pid = sh("pidof jkm-openfiles || true").strip()

        def cpu_ticks(name):
            extra = ticks(helper_pid) if name == "jetkvm-metrics" and helper_pid else 0
            return ticks(pids[name]) + extra

        # Wait for both, and pay the first bcrypt outside the measurements.
        for name, port in targets.items():
            end = time.monotonic() + 120
            while True:
                try:
                    get(http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60))
                    break
                except (OSError, SystemExit):
                    if time.monotonic() > end:
                        raise
                    time.sleep(1)
        pids = {n: pid(n) for n in targets}
        conn = http.client.HTTPSConnection("127.0.0.1", metrics, context=ctx, timeout=60)
        conn.request("GET", "/metrics", headers={"Authorization": auth["Authorization"]})
        text = conn.getresponse().read().decode()
        if a.kvm_state:
            # Every KVM-state collector must succeed, or the figure is not the one asked for.
            names = ("hdmi", "usb_gadget", "usb_functions", "virtual_media", "app", "video_capture", "app_metrics")
            for name in names:
                if f'jetkvm_scrape_collector_success{{collector="{name}"}} 1' not in text:
                    raise SystemExit(f"bench-board: collector {name} does not succeed:\n{text}")
        lat = {n: [] for n in targets}
        cpu = {n: [] for n in targets}
        size = {}
        for _ in range(a.rounds):
            for name, port in targets.items():
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
                get(conn)  # the handshake, outside the keep-alive figure
                t0 = cpu_ticks(name)
                for _ in range(a.scrapes):
                    d, n = get(conn)
                    lat[name].append(d)
                    size[name] = n
                t1 = cpu_ticks(name)
                cpu[name].append((t1 - t0) / 100.0 / a.scrapes)
        # Prometheus reconnects after any error: a scrape on a fresh TLS
        # connection (handshake, and for jetkvm-metrics the HTTP service
        # built for the connection), its latency and its CPU.
        fresh, fresh_cpu = {}, {}
        for name, port in targets.items():
            t0 = cpu_ticks(name)
            took = []
            for _ in range(a.fresh):
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
                took.append(get(conn)[0])
                conn.close()
            fresh_cpu[name] = (cpu_ticks(name) - t0) / 100.0 / a.fresh
            fresh[name] = statistics.median(took)
        rss = {n: int(sh(f"grep '^Rss' /proc/{p}/smaps_rollup").split()[1]) for n, p in pids.items()}
        anon = {n: int(sh(f"grep '^Anonymous' /proc/{p}/smaps_rollup").split()[1]) for n, p in pids.items()}
        # Where the daemon's resident memory is: its mapped program, the
        # heap, the main stack, other anonymous mappings (thread stacks,
        # mmap'd allocations), the rest.
        parts = sh(f"awk '/^[0-9a-f]+-[0-9a-f]+ / {{n = $6 == \"\" ? \"anonymous mappings\" : "
                   f"$6 ~ /jetkvm-metrics/ ? \"the program \" $2 : $6}} "
                   f"/^Rss:/ {{s[n] += $2}} END {{for (k in s) if (s[k]) printf \"%s %d KiB; \", k, s[k]}}' "
                   f"/proc/{pids['jetkvm-metrics']}/smaps").strip()
        ciphers = {}
        for name, port in targets.items():
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
            get(conn)
            ciphers[name] = conn.sock.cipher()[0]
        helper = sh("p=$(pidof jkm-openfiles) && grep -E '^(Rss|Pss|Private_Dirty):' /proc/$p/smaps_rollup | "
                    "awk '{printf \"%s %s kB; \", $1, $2}' || true").strip()

        # Idle: context switches over a quiet minute, per thread (a helper
        # thread that exits meanwhile takes its count with it), after the
        # runtimes' idle helper threads have had time to exit.
        def switches(p):
            out = sh(f"for t in /proc/{p}/task/*; do echo $t $(grep -h ctxt_switches $t/status | "
                     "awk '{s += $2} END {print s}'); done")
            return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) == 2}
        time.sleep(15)
        before = {n: switches(p) for n, p in pids.items()}
        idle_ticks = {n: ticks(p) for n, p in pids.items()}
        time.sleep(60)
        after = {n: switches(p) for n, p in pids.items()}
        wakeups = {n: sum(c - before[n][t] for t, c in after[n].items() if t in before[n]) / 60 for n in pids}
        idle_cpu = {n: (ticks(p) - idle_ticks[n]) / 100.0 for n, p in pids.items()}

        n, j = "node_exporter", "jetkvm-metrics"
        print(f"Measured {time.strftime('%Y-%m-%d')} in the emulated board (qemu-system-arm -M virt, Cortex-A7, "
              f"256 MB, TCG counting instructions: 1 ns each); {a.rounds} alternating rounds of {a.scrapes} scrapes.")
        print("Both: TLS, basic auth against the device's cost-10 bcrypt hash (remembered), Accept-Encoding: gzip "
              "as Prometheus sends it (node_exporter compresses; jetkvm-metrics does not).\n")
        print("| figure | node_exporter | jetkvm-metrics | ratio |")
        print("|---|---|---|---|")
        med = {k: statistics.median(v) * 1000 for k, v in lat.items()}
        p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1000 for k, v in lat.items()}
        c = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
        print(f"| RSS after load (smaps_rollup) | {rss[n]} KiB | {rss[j]} KiB | {rss[j] / rss[n]:.2f}× |")
        print(f"| anonymous memory (smaps_rollup) | {anon[n]} KiB | {anon[j]} KiB | {anon[j] / anon[n]:.2f}× |")
        print(f"| CPU per scrape | {c[n]:.2f} ms | {c[j]:.2f} ms | {c[j] / c[n]:.3f}× |")
        print(f"| scrape latency, keep-alive, median | {med[n]:.1f} ms | {med[j]:.1f} ms | {med[j] / med[n]:.2f}× |")
        print(f"| scrape latency, keep-alive, p90 | {p90[n]:.1f} ms | {p90[j]:.1f} ms | {p90[j] / p90[n]:.2f}× |")
        print(f"| scrape on a fresh TLS connection, median | {fresh[n] * 1000:.1f} ms | {fresh[j] * 1000:.1f} ms | "
              f"{fresh[j] / fresh[n]:.2f}× |")
        print(f"| CPU per scrape on a fresh TLS connection | {fresh_cpu[n] * 1000:.1f} ms | "
              f"{fresh_cpu[j] * 1000:.1f} ms | {fresh_cpu[j] / fresh_cpu[n]:.3f}× |")
        print(f"| bytes per scrape | {size[n]} | {size[j]} | {size[j] / size[n]:.2f}× |")
        print(f"| idle: wake-ups per second over 60 s | {wakeups[n]:.1f} | {wakeups[j]:.1f} | |")
        print(f"| idle: CPU seconds over 60 s | {idle_cpu[n]:.2f} | {idle_cpu[j]:.2f} | |")
        print()
        print("CPU per scrape, each round: " + "; ".join(
            f"{k} " + ", ".join(f"{v * 1000:.2f}" for v in cpu[k]) + " ms" for k in (n, j)))
        # Each collector's time in the last scrape: under instruction
        # counting, its instructions, the kernel's for it included.
        took = {}
        for _ in range(5):
            conn = http.client.HTTPSConnection("127.0.0.1", metrics, context=ctx, timeout=60)
            conn.request("GET", "/metrics", headers={"Authorization": auth["Authorization"]})
            for x in conn.getresponse().read().decode().splitlines():
                if x.startswith("jetkvm_scrape_collector_duration_seconds{"):
                    took.setdefault(x.split('"')[1], []).append(float(x.split()[-1]) * 1000)
        took = {k: statistics.median(v) for k, v in took.items()}
        print("Each collector's time in a scrape (median of 5), then all together: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(took.items(), key=lambda kv: -kv[1])) +
            f"; together {sum(took.values()):.2f} ms")
        print(f"jetkvm-metrics' resident memory by mapping: {parts}")
        print("TLS cipher chosen for this client: " + "; ".join(f"{k} {v}" for k, v in ciphers.items()))
        print(f"The open-files helper (jetkvm-metrics' child): {helper or 'not running'}")
        if a.kvm_state:
            print("Every source of the KVM's own state present (each collector succeeds).")
        print(f"Goal: RSS at most 4 MiB: {rss[j]} KiB ({'met' if rss[j] <= 4096 else 'not met'}); "
              f"anonymous at most 1 MiB: {anon[j]} KiB ({'met' if anon[j] <= 1024 else 'not met'})")
        print(f"Goal: CPU per scrape at most 0.25x node_exporter's: {c[j] / c[n]:.3f}x "
              f"({'met' if c[j] <= 0.25 * c[n] else 'not met'})")
        print(f"Goal: at least 3x less CPU per scrape than node_exporter: {c[n] / c[j]:.1f}x less "
              f"({'met' if c[n] / c[j] >= 3 else 'not met'})")
        sh("poweroff", timeout=5)
    finally:
        time.sleep(3)
        try:
            os.kill(qemu, 9)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
