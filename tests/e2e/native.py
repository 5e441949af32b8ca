#!/usr/bin/env python3
"""The daemon on this machine (the build `cargo test` made), scraped by the
real Prometheus through the end-to-end harness (lib.py), as a user's jobs
would: an HTTPS job with the token stays up, not one scrape failed, across
the device's renewal of its certificate; after a password change a job
still sending the old password does not lock out the job given the new one;
and a flood of connections and handshakes from one address fails none of
another client's scrapes of the metrics service.

usage: tests/e2e/native.py [--binary PATH]
"""

import argparse
import os
import shutil
import ssl
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import (  # noqa: E402  (next to this file)
    ROOT, RESULTS, Prometheus, bound_addr, check, device_certificates, device_hash, failed, free_port, until,
)

GLOBAL = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"


def device_json(hashed, tls_mode=""):
    return ('{"localAuthMode": "password", "hashed_password": "%s", "local_auth_token": "session",'
            ' "tls_mode": "%s"}\n' % (hashed, tls_mode))


def rewrite_in_place(path, text):
    """As the device writes its configuration: truncate, then write."""
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


class Daemon:
    """The daemon in its own directory, on a loopback port the kernel chose."""

    def __init__(self, binary, work, device, extra=""):
        self.binary, self.work = binary, work
        self.device = f"{work}/kvm_config.json"
        with open(self.device, "w") as f:
            f.write(device)
        self.config = f"{work}/config.toml"
        with open(self.config, "w") as f:
            f.write(f'listen_addr = "127.0.0.1:0"\ndevice_config = "{self.device}"\n'
                    f'device_tls_dir = "{work}/tls"\ntoken_file = "{work}/token.sha256"\n'
                    f'proc_root = "{ROOT}/tests/fixtures/proc"\nsys_root = "{ROOT}/tests/fixtures/sys"\n'
                    f'filesystems = ["/"]\n{extra}')
        self.log = open(f"{work}/daemon.log", "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", self.config, "--ports-file", f"{work}/ports"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        addr = bound_addr(f"{work}/ports", self.proc)
        if addr is None:
            raise AssertionError(f"the daemon did not start: see {work}/daemon.log")
        self.port = addr[1]
        service = "[metrics_service]" in extra and bound_addr(f"{work}/ports", self.proc, "metrics_service", 1)
        self.service_port = service[1] if service else None

    def token(self):
        out = subprocess.run([self.binary, "token", "new", "--config", self.config],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def leaf(work, days):
    """A new leaf for jetkvm.local from the device's CA (device_certificates
    left its key in `work`), as the device renews it: its chain and key."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "renewed.key",
        "-out", "renewed.csr", "-subj", "/CN=jetkvm.local")
    run("x509", "-req", "-in", "renewed.csr", "-CA", "__ca__.crt", "-CAkey", "__ca__.key", "-CAcreateserial",
        "-out", "renewed.crt", "-days", str(days), "-extfile", "san.ext")
    read = lambda name: open(f"{work}/{name}").read().strip()
    return read("renewed.crt") + "\n" + read("__ca__.crt"), read("renewed.key")


def write_tls(tls, files):
    os.makedirs(tls, exist_ok=True)
    for name, text in files.items():
        with open(f"{tls}/{name}.tmp", "w") as f:
            f.write(text + "\n")
        os.replace(f"{tls}/{name}.tmp", f"{tls}/{name}")


def https_job(d, work, ca_file, port):
    """Prometheus with one job, jetkvm: HTTPS to `port` for jetkvm.local,
    trusting `ca_file`, with a new token of `d`'s."""
    with open(f"{work}/token", "w") as f:
        f.write(d.token())
    return Prometheus(work, free_port(), GLOBAL + f"""scrape_configs:
  - job_name: jetkvm
    scheme: https
    tls_config: {{ca_file: {ca_file}, server_name: jetkvm.local}}
    authorization: {{type: Bearer, credentials_file: {work}/token}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")


def window(since):
    return f"{max(int(time.monotonic() - since), 2) - 1}s"


def certificate_renewal(binary, work):
    """An HTTPS job with the token, as a user sets it up (the CA from the
    settings page, which needs no credential; a token from the CLI), stays
    up while the device renews its leaf: the renewed one is scraped, and
    not one scrape failed."""
    files = device_certificates(work)
    write_tls(f"{work}/tls", files)
    d = Daemon(binary, work, device_json(device_hash("pw"), "self-signed"))
    prom = None
    try:
        ctx = ssl.create_default_context(cafile=f"{work}/__ca__.crt")
        ctx.check_hostname = False  # the URL names 127.0.0.1; the chain is what is checked here
        with urllib.request.urlopen(f"https://127.0.0.1:{d.port}/settings/ca.crt", context=ctx, timeout=10) as r:
            ca = r.read().decode()
        check("native: the settings page hands out the device's CA without a credential",
              ca.strip() == files["__ca__.crt"].strip())
        with open(f"{work}/ca.crt", "w") as f:
            f.write(ca)
        prom = https_job(d, work, f"{work}/ca.crt", d.port)
        until("the HTTPS job up", lambda: prom.up("jetkvm") == 1, 60)
        since = time.monotonic()
        not_after = 'max(jetkvm_exporter_tls_certificate_not_after_seconds{job="jetkvm"})'
        before = until("the certificate's expiry, scraped", lambda: prom.value(not_after), 60)
        chain, key = leaf(work, 90)
        write_tls(f"{work}/tls", {"jetkvm.local.crt": chain, "jetkvm.local.key": key})
        after = until("a scrape through the renewed certificate",
                      lambda: (v := prom.value(not_after)) is not None and v > before + 86400 and v, 60)
        check("native: the renewed certificate is served and scraped", after > before + 86400, f"{before} -> {after}")
        until("three scrapes since the job went up",
              lambda: (prom.value(f'count_over_time(up{{job="jetkvm"}}[{window(since)}])') or 0) >= 3, 60)
        low = prom.value(f'min_over_time(up{{job="jetkvm"}}[{window(since)}])')
        check("native: not one scrape failed across the renewal", low == 1, str(low))
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10)
            plain = 200
        except urllib.error.HTTPError as e:
            plain = e.code
        check("native: plain HTTP gets nothing while the device's TLS is on", plain == 400, str(plain))
    finally:
        if prom:
            prom.stop()
        d.stop()


def password_change(binary, work):
    """Regression: a job still sending the old password once kept its
    server's address in debt, so the job given the new password was never
    checked (429 on every scrape). The budget counts distinct passwords."""
    d = Daemon(binary, work, device_json(device_hash("old password")),
               '[auth]\nfailure_burst = 3\nfailure_interval = "60s"\n')
    prom = None
    try:
        for name in ("old", "new"):
            with open(f"{work}/{name}", "w") as f:
                f.write(f"{name} password")
        jobs = "".join(f"""  - job_name: {name}
    basic_auth: {{username: admin, password_file: {work}/{name}}}
    static_configs: [{{targets: ["127.0.0.1:{d.port}"]}}]
""" for name in ("old", "new"))
        prom = Prometheus(work, free_port(), GLOBAL + "scrape_configs:\n" + jobs)
        # The "new" job is ahead of the device: it fails scrape after scrape.
        until("the old job up, the new one down five times", lambda: prom.up("old") == 1 and (prom.value(
            'count_over_time(up{job="new"}[1m]) - sum_over_time(up{job="new"}[1m])') or 0) >= 5, 60)
        rewrite_in_place(d.device, device_json(device_hash("new password")))
        changed = time.monotonic()
        until("the new job up", lambda: prom.up("new") == 1, 60)
        took = time.monotonic() - changed
        check("native: the job with the new password is up within 20 s of the change", took < 20, f"{took:.1f} s")
        time.sleep(6)
        check("native: the new job stays up", prom.value('min_over_time(up{job="new"}[5s])') == 1)
        check("native: the old password no longer works", prom.value('max_over_time(up{job="old"}[5s])') == 0)
        print(f"native: the new job up {took:.1f} s after the password change", flush=True)
    finally:
        if prom:
            prom.stop()
        d.stop()


def handshake_flood(binary, work):
    """Regression: an idle connection was evicted whoever held it, and a
    handshake counted as idle: one address connecting and handshaking as
    fast as it could pushed out another client's keep-alive and its new
    handshakes. Now one address holds at most max_connections_per_client,
    gives up its own first, and handshakes take turns. Prometheus, on
    another address, scrapes the metrics service over TLS every second
    through the flood: no scrape fails."""
    files = device_certificates(work)
    write_tls(f"{work}/tls", files)
    d = Daemon(binary, work, device_json(device_hash("pw")),
               f'[limits]\nmax_connections = 16\n[metrics_service]\nenabled = true\nlisten_addr = "127.0.0.1:0"\n'
               f'[[metrics_service.keypairs]]\ncert_file = "{work}/tls/jetkvm.local.crt"\n'
               f'key_file = "{work}/tls/jetkvm.local.key"\n')
    prom = None
    stop = threading.Event()
    handshakes = [0]
    try:
        prom = https_job(d, work, f"{work}/__ca__.crt", d.service_port)
        until("the job up", lambda: prom.up("jetkvm") == 1, 60)
        ctx = ssl.create_default_context(cafile=f"{work}/__ca__.crt")

        def flood(silent):
            held = []
            while not stop.is_set():
                try:
                    tcp = socket.create_connection(("127.0.0.1", d.service_port), timeout=2,
                                                   source_address=("127.0.0.2", 0))
                    if silent:
                        held.append(tcp)
                    else:
                        held.append(ctx.wrap_socket(tcp, server_hostname="jetkvm.local"))
                        handshakes[0] += 1
                except OSError:
                    pass  # evicted or refused: the flood goes on
                if len(held) > 32:
                    held.pop(0).close()
            for s in held:
                s.close()

        threads = [threading.Thread(target=flood, args=(t == 0,)) for t in range(4)]
        for t in threads:
            t.start()
        started = time.monotonic()
        time.sleep(15)
        window = f"{int(time.monotonic() - started) - 1}s"
        scrapes = prom.value(f'count_over_time(up{{job="jetkvm"}}[{window}])')
        worst = prom.value(f'min_over_time(up{{job="jetkvm"}}[{window}])')
        stop.set()
        for t in threads:
            t.join()
        evicted = prom.value('jetkvm_exporter_connections_evicted_total{job="jetkvm"}') or 0
        print(f"native: flood of {handshakes[0]} handshakes from one address in {window}, {evicted:.0f} of its"
              f" connections evicted; {scrapes} scrapes, worst up {worst}", flush=True)
        check("native: the flood pressed (at least 100 handshakes and 100 evictions)",
              handshakes[0] >= 100 and evicted >= 100, f"{handshakes[0]} handshakes, {evicted} evicted")
        check("native: Prometheus scraped through the flood, not one scrape failed",
              (scrapes or 0) >= 8 and worst == 1, f"{scrapes} scrapes, worst {worst}")
    finally:
        stop.set()
        if prom:
            prom.stop()
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=f"{ROOT}/target/debug/jetkvm-metrics")
    a = ap.parse_args()
    if not os.path.exists(a.binary):
        print(f"native: {a.binary} missing (cargo test builds it)", file=sys.stderr)
        return 1
    for scenario in (certificate_renewal, password_change, handshake_flood):
        work = tempfile.mkdtemp(prefix="jetkvm-native-")
        try:
            scenario(a.binary, work)
        except Exception as e:  # report it and go on to the next scenario
            check(f"native: {scenario.__name__}", False, f"{type(e).__name__}: {e} (kept: {work})")
            continue
        shutil.rmtree(work, ignore_errors=True)
    print(f"native: {sum(ok for _, ok in RESULTS)} passed, {sum(not ok for _, ok in RESULTS)} failed")
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
