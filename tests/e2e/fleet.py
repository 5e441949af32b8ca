#!/usr/bin/env python3
"""A fleet of JetKVMs on this machine: N daemons on loopback addresses
(127.0.x.y, the device's ports 3080 and 3081), each with its own device
state, and real Prometheus servers scraping them with the kit's fleet
examples and rules as shipped (docs/kit/examples/).

Every second device serves metrics on the mutual-TLS metrics service with
a server certificate from the fleet CA, which also signs Prometheus' one
client certificate (fleet-mtls.yml); the others keep a read-only token of
their own over the device's self-signed TLS (fleet-tokens.yml). Devices
differ as a fleet does: password or no-password mode, the host's USB link
configured or not, virtual media mounted or not, and the device's app (the
stand-in of the test disk, three processes of one name) up, down or
restarting.

From the examples to this machine only what names a place changes, as an
operator's own copy would: /etc/prometheus/ becomes the fleet's directory,
each host name a loopback address, the inventory's URL a local one, the
example jobs of fleet-tokens.yml one per device. With --check, the scrape
and evaluation intervals are cut to 2 s and the rules' `for:` to 6 s, so
that the suite sees in minutes what a fleet sees in hours; the benchmark
keeps the examples' intervals and the rules as they are.

usage: scripts/fleet --devices N [--binary PATH] [--work DIR] [--header-timeout D]
                     [--check | --bench SECONDS | --connection-costs] [--keep]
  (neither)   start the fleet and its Prometheus servers, print where they
              are, run until interrupted
  --check     every fleet example, the provoked alerts, federation, remote
              write and rotation, as checks (scripts/test's fleet stage)
  --bench S   figures over S seconds at the examples' intervals (Markdown
              rows for docs/BENCHMARKS.md)
  --connection-costs
              one daemon's CPU for a scrape on a new and a kept connection,
              and for a connection held open
"""

import argparse
import concurrent.futures
import http.server
import json
import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import (  # noqa: E402  (next to this file)
    ROOT, RESULTS, Prometheus, bound_addr, check, device_hash, failed, free_port, kit_rules_copy, rss_kib, until,
)

EXAMPLES = f"{ROOT}/docs/kit/examples"
FIXTURES = f"{ROOT}/tests/fixtures"
CLIENT_SAN = "prometheus.fleet.lan"
# How long a rotated token keeps working (--keep-previous), seconds.
KEEP = 20


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def write(path, text, mode=None):
    """Whole or not at all: a temporary file beside it, then a rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def read(path):
    with open(path) as f:
        return f.read()


class Pki:
    """The fleet's certificates: CAs, and leaves each signed by one."""

    EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def __init__(self, work):
        self.dir = f"{work}/pki"
        os.makedirs(self.dir, exist_ok=True)

    def ca(self, name, subject):
        openssl(self.dir, "req", "-x509", *self.EC, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                "-subj", f"/CN={subject}", "-days", "365")
        return f"{self.dir}/{name}.crt"

    def leaf(self, ca, name, sans, usage, out_dir=None):
        """A leaf for `sans` ("DNS:a,IP:b") signed by CA `ca`: (cert, key)."""
        d = out_dir or self.dir
        ext = f"{d}/{name}.ext"
        with open(ext, "w") as f:
            f.write(f"subjectAltName={sans}\nextendedKeyUsage={usage}\nbasicConstraints=critical,CA:FALSE\n")
        openssl(d, "req", *self.EC, "-keyout", f"{name}.key.new", "-out", f"{name}.csr",
                "-subj", f"/CN={sans.split(',')[0].split(':')[1]}")
        openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{self.dir}/{ca}.crt", "-CAkey",
                f"{self.dir}/{ca}.key", "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                "-out", f"{name}.crt.new", "-days", "90", "-extfile", ext)
        for f in (ext, f"{d}/{name}.csr"):
            os.remove(f)
        return f"{d}/{name}.crt.new", f"{d}/{name}.key.new"


class Device:
    """One JetKVM of the fleet: its state, its daemon, its app."""

    def __init__(self, fleet, i):
        self.name = f"kvm{i:04d}"
        self.host = f"{self.name}.lan"
        self.ip = f"127.0.{10 + i // 250}.{1 + i % 250}"
        self.dir = f"{fleet.work}/devices/{self.name}"
        self.mtls = i % 2 == 0
        self.no_password = i % 5 == 2
        self.usb_down = i % 7 == 3
        self.media = i % 4 == 1
        self.app = {4: "down", 7: "restarting"}.get(i % 9, "up")
        # The app's binary name (its processes' `comm`, at most 15 bytes),
        # this run's own: a process of another run is never taken for it.
        self.app_name = f"a{os.getpid() % 100000:05d}{i:04d}"
        self.proc = self.app_tree = None
        self.token = None

    def prepare(self, fleet):
        """Its directory: the fixture /sys in its state, kvm_config.json,
        its TLS (the metrics service's or the device's own), config.toml,
        its token, its app's binary."""
        d = self.dir
        os.makedirs(f"{d}/token", mode=0o700)
        os.makedirs(f"{d}/app")
        os.makedirs(f"{d}/tls")
        shutil.copytree(f"{FIXTURES}/sys", f"{d}/sys", symlinks=True)
        g = f"{d}/sys/kernel/config/usb_gadget/jetkvm/functions/mass_storage.usb0/lun.0/file"
        write(g, "/userdata/jetkvm/images/installer.iso\n" if self.media else "\n")
        write(f"{d}/sys/class/udc/ffb00000.usb/state", "default\n" if self.usb_down else "configured\n")
        device = {"localAuthMode": "noPassword"} if self.no_password else {
            "localAuthMode": "password", "hashed_password": device_hash(f"password of {self.name}"),
            "local_auth_token": f"session-{self.name}"}
        config = (f'listen_addr = "{self.ip}:3080"\ndevice_config = "{d}/kvm_config.json"\n'
                  f'device_tls_dir = "{d}/tls"\ntoken_file = "{d}/token/token.sha256"\n'
                  f'proc_root = "{FIXTURES}/proc"\nsys_root = "{d}/sys"\nversion_file = "{FIXTURES}/version"\n'
                  f'video_sleep_file = "{d}/sys/bus/i2c/devices/4-000f/sleep_mode"\nfilesystems = ["/"]\n'
                  f'host_names = ["{self.host}"]\napp_processes = ["{self.app_name}"]\n'
                  f'video_capture_device = "/dev/full"\napp_metrics_address = ""\n')
        if self.mtls:
            config += self.metrics_service(fleet)
        else:
            self.device_tls()
            device["tls_mode"] = "self-signed"
        if fleet.header_timeout:
            config += f'[limits]\nheader_timeout = "{fleet.header_timeout}"\n'
        write(f"{d}/kvm_config.json", json.dumps(device) + "\n")
        write(f"{d}/config.toml", config)
        if not self.mtls:
            out = subprocess.run([fleet.binary, "token", "new", "--config", f"{d}/config.toml"],
                                 capture_output=True, text=True, check=True)
            self.token = out.stdout.strip()
        os.link(fleet.stand_in, f"{d}/app/{self.app_name}")

    def metrics_service(self, fleet):
        """A server certificate from the fleet CA, which is also the one CA
        its clients' certificates must verify against: the configuration."""
        d = f"{self.dir}/mtls"
        os.makedirs(d)
        cert, key = fleet.pki.leaf("fleet-ca-1", "server", f"DNS:{self.host},IP:{self.ip}", "serverAuth", d)
        os.replace(key, f"{d}/server.key")
        os.replace(cert, f"{d}/server.crt")
        write(f"{d}/client-ca.crt", read(f"{fleet.pki.dir}/fleet-ca-1.crt"))
        return (f'[metrics_service]\nenabled = true\nlisten_addr = "{self.ip}:3081"\nmtls = true\n'
                f'ca_certs = ["{d}/client-ca.crt"]\nclient_allowed_sans = ["{CLIENT_SAN}"]\n'
                f'[[metrics_service.keypairs]]\ncert_file = "{d}/server.crt"\nkey_file = "{d}/server.key"\n')

    def device_tls(self):
        """The device's self-signed TLS as it keeps it: its own CA, and a
        leaf for each name it is known by (here one leaf for both)."""
        pki = Pki(self.dir)
        ca = read(pki.ca("__ca__", f"JetKVM CA {self.name}"))
        cert, key = pki.leaf("__ca__", "leaf", f"DNS:{self.host},DNS:jetkvm.local", "serverAuth")
        chain = read(cert).strip() + "\n" + ca.strip() + "\n"
        write(f"{self.dir}/tls/__ca__.crt", ca)
        for name in (self.host, "jetkvm.local"):
            write(f"{self.dir}/tls/{name}.crt", chain)
            write(f"{self.dir}/tls/{name}.key", read(key), 0o600)
        os.remove(key)

    def start(self, binary):
        with open(f"{self.dir}/daemon.log", "a") as log:
            self.proc = subprocess.Popen([binary, "serve", "--config", f"{self.dir}/config.toml",
                                          "--ports-file", f"{self.dir}/ports"], stdout=log, stderr=subprocess.STDOUT)

    def started(self):
        return bound_addr(f"{self.dir}/ports", self.proc, timeout=30) is not None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def start_app(self):
        """The stand-in app as one_binary (supervisor, app and native of
        one name), in a session of its own; returns it."""
        env = dict(os.environ, STANDIN_SHAPE="one_binary", STANDIN_DIR=f"{self.dir}/app", STANDIN_VIDEO="/dev/full",
                   STANDIN_SIGNAL="file", STANDIN_SEED="/nonexistent", STANDIN_CONFIG=f"{self.dir}/app/unused.json",
                   STANDIN_WATCHDOG="none")
        return subprocess.Popen([f"{self.dir}/app/{self.app_name}"], env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def stop_app(tree):
        if tree and tree.poll() is None:
            try:
                os.killpg(tree.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            tree.wait()


class Fleet:
    def __init__(self, work, n, binary, header_timeout=None):
        self.work, self.binary, self.header_timeout = work, binary, header_timeout
        self.pki = Pki(work)
        self.stand_in = f"{work}/jetkvm-app"
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", self.stand_in,
                        f"{ROOT}/board/jetkvm/qemu/test-disk/jetkvm-app.c"], check=True)
        self.pki.ca("fleet-ca-1", "JetKVM fleet CA 1")
        self.devices = [Device(self, i) for i in range(n)]
        self.stop_restarts = threading.Event()
        self.restarter = None

    def prepare(self):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda d: d.prepare(self), self.devices))

    def start(self):
        for d in self.devices:
            d.app_tree = d.start_app()
            d.start(self.binary)
        bad = [d.name for d in self.devices if not d.started()]
        if bad:
            raise AssertionError(f"daemons that did not start: {bad} (see their daemon.log)")
        self.restarter = threading.Thread(target=self.restart_apps, daemon=True)
        self.restarter.start()

    def restart_apps(self):
        """The restarting devices' apps: a new tree every 4 s, the old one
        killed once the new one runs (a crash loop that a supervisor from
        outside keeps starting)."""
        while not self.stop_restarts.wait(4):
            for d in self.devices:
                if d.app == "restarting":
                    old, d.app_tree = d.app_tree, d.start_app()
                    time.sleep(0.05)
                    Device.stop_app(old)

    def take_apps_down(self):
        """The down devices' apps stop, once their daemons have seen them
        (a role is "down" only for a generation seen)."""
        for d in self.devices:
            if d.app == "down":
                Device.stop_app(d.app_tree)

    def stop(self):
        self.stop_restarts.set()
        if self.restarter:
            self.restarter.join()
        # All told at once, then waited for: each takes its time to stop.
        for d in self.devices:
            if d.proc and d.proc.poll() is None:
                d.proc.terminate()
        for d in self.devices:
            d.stop()
            Device.stop_app(d.app_tree)

    def of(self, **state):
        return [d for d in self.devices if all(getattr(d, k) == v for k, v in state.items())]


class Inventory(http.server.ThreadingHTTPServer):
    """The http_sd endpoint: the mTLS devices in targets.json's format."""

    def __init__(self, groups):
        self.groups = groups

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(h):
                body = json.dumps(self.groups).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)

            def log_message(h, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/jetkvm/targets"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def example(name, etc):
    """An example as shipped, its /etc/prometheus/ this fleet's `etc`."""
    return yaml.safe_load(read(f"{EXAMPLES}/{name}").replace("/etc/prometheus/", f"{etc}/"))


def with_intervals(config, interval):
    if interval:
        config["global"]["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
    return config


def targets_file(devices):
    """targets.json's format, the devices at their general port."""
    return [{"targets": [f"{d.ip}:3080" for d in devices], "labels": {"site": "rack1"}}]


class Sites:
    """The Prometheus servers, one per example: mTLS by http_sd (remote
    writing to the receiver), tokens, the central one federating those
    two, the receiver; for the checks also mTLS by file_sd, the
    one-device example and each shard of fleet-shards.yml."""

    def __init__(self, fleet, interval, rules_for, every_example=True):
        self.fleet, self.started, self.inventory = fleet, [], None
        try:
            self.start(interval, rules_for, every_example)
        except BaseException:
            self.stop()  # what started before the failure
            raise

    def start(self, interval, rules_for, every_example):
        fleet = self.fleet
        w = fleet.work
        self.etc = etc = f"{w}/etc-prometheus"
        os.makedirs(f"{etc}/jetkvm/targets", exist_ok=True)
        pki = fleet.pki
        if rules_for:
            kit_rules_copy(w, rules_for, f"{etc}/jetkvm/rules.yml")
        else:
            shutil.copy(f"{ROOT}/docs/kit/rules.yml", f"{etc}/jetkvm/rules.yml")
        write(f"{etc}/jetkvm/fleet-server-ca.crt", read(f"{pki.dir}/fleet-ca-1.crt"))
        for name in ("prometheus.crt", "prometheus.key"):
            os.symlink(f"client/{name}", f"{etc}/jetkvm/{name}")
        self.client_certificate("fleet-ca-1")
        write(f"{etc}/remote-write.token", "not checked by the receiver\n", 0o600)
        tokens = fleet.of(mtls=False)
        mtls = fleet.of(mtls=True)
        for d in tokens:
            write(f"{etc}/jetkvm/{d.name}-ca.crt", read(f"{d.dir}/tls/__ca__.crt"))
            write(f"{etc}/jetkvm/{d.name}.token", d.token, 0o600)
        write(f"{etc}/jetkvm/targets/fleet.json", json.dumps(targets_file(tokens)))
        os.makedirs(f"{w}/mtls-targets", exist_ok=True)
        write(f"{w}/mtls-targets/fleet.json", json.dumps(targets_file(mtls)))
        self.inventory = Inventory(targets_file(mtls))

        self.receiver = self.prom("receiver", "global: {}\n", ["--web.enable-remote-write-receiver"])
        port = free_port()
        self.mtls = self.prom("mtls", yaml.safe_dump(self.mtls_config(interval, "http_sd", port)), port=port)
        self.mtls_file = (self.prom("mtls-file-sd", yaml.safe_dump(self.mtls_config(interval, "file_sd")))
                          if every_example else None)
        self.tokens = self.prom("tokens", yaml.safe_dump(self.tokens_config(interval)))
        self.single = (self.prom("one-device", yaml.safe_dump(self.single_config(interval)))
                       if every_example else None)
        modulus = next(r["modulus"] for r in example("fleet-shards.yml", etc)["scrape_configs"][0]["relabel_configs"]
                       if "modulus" in r)
        self.shards = [self.prom(f"shard-{n}", yaml.safe_dump(self.shard_config(interval, n)))
                       for n in range(modulus)] if every_example else []
        central = with_intervals(example("federation.yml", etc), interval)
        central["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{self.mtls.port}", f"127.0.0.1:{self.tokens.port}"]}]
        self.central = self.prom("central", yaml.safe_dump(central))

    def prom(self, name, config, flags=(), port=None):
        d = f"{self.fleet.work}/prometheus-{name}"
        os.makedirs(d, exist_ok=True)
        p = Prometheus(d, port or free_port(), config, flags)
        p.name, p.dir = name, d
        self.started.append(p)
        until(f"Prometheus {name} ready", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{p.port}/-/ready", timeout=5).status == 200, 60)
        return p

    def all(self):
        return [p for p in (self.mtls, self.mtls_file, self.tokens, self.single, self.central, self.receiver,
                            *self.shards) if p]

    def shard_config(self, interval, shard):
        """fleet-shards.yml as server `shard` has it: its number where the
        example says "this server's shard", and in its external label."""
        c = with_intervals(example("fleet-shards.yml", self.etc), interval)
        c["global"]["external_labels"]["shard"] = str(shard)
        for job in c["scrape_configs"]:
            self.discover(job, interval)
            for r in job["relabel_configs"]:
                if r.get("source_labels") == ["__tmp_shard"]:
                    r["regex"] = str(shard)
        return c

    def client_certificate(self, ca):
        """Prometheus' client certificate, new from `ca`: prometheus.crt and
        .key reach it through the directory `client`, a link swapped by one
        rename, so that no handshake ever sees a new key with an old
        certificate."""
        jetkvm = f"{self.etc}/jetkvm"
        n = 1 + sum(1 for e in os.listdir(jetkvm) if e.startswith("client-"))
        os.makedirs(f"{jetkvm}/client-{n}")
        cert, key = self.fleet.pki.leaf(ca, "prometheus", f"DNS:{CLIENT_SAN}", "clientAuth", f"{jetkvm}/client-{n}")
        os.replace(cert, f"{jetkvm}/client-{n}/prometheus.crt")
        os.replace(key, f"{jetkvm}/client-{n}/prometheus.key")
        os.symlink(f"client-{n}", f"{jetkvm}/client.new")
        os.replace(f"{jetkvm}/client.new", f"{jetkvm}/client")

    def discover(self, job, interval):
        """A job's http_sd: the local inventory, asked as often as the
        scrapes come when the intervals are cut."""
        for sd in job["http_sd_configs"]:
            sd["url"] = self.inventory.url
            if interval:
                sd["refresh_interval"] = interval

    def single_config(self, interval):
        """prometheus.yml, the one-device example, on the second token
        device (by jetkvm.local, a name it has a leaf for); its
        Alertmanager an address where none listens."""
        d = self.fleet.of(mtls=False)[1]
        write(f"{self.etc}/jetkvm/ca.crt", read(f"{d.dir}/tls/__ca__.crt"))
        write(f"{self.etc}/jetkvm/token", d.token, 0o600)
        c = yaml.safe_load(yaml.safe_dump(with_intervals(example("prometheus.yml", self.etc), interval))
                           .replace("jetkvm.lan:3080", f"{d.ip}:3080")
                           .replace("localhost:9093", f"127.0.0.1:{free_port()}"))
        return c

    def mtls_config(self, interval, discovery, port=None):
        """fleet-mtls.yml; by http_sd (the server on `port`), with
        remote-write.yml added (its url the receiver's); by file_sd, each
        http_sd_configs becomes the file_sd_configs its comment offers."""
        c = with_intervals(example("fleet-mtls.yml", self.etc), interval)
        for job in c["scrape_configs"]:
            if discovery == "http_sd":
                self.discover(job, interval)
            else:
                del job["http_sd_configs"]
                job["file_sd_configs"] = [{"files": [f"{self.fleet.work}/mtls-targets/*.json"]}]
        if discovery == "http_sd" and interval:
            # A site server scrapes more than the fleet (itself, here): the
            # remote-write filter is what keeps that out of the store.
            c["scrape_configs"].append({"job_name": "prometheus", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"]}]})
        if discovery == "http_sd":
            rw = example("remote-write.yml", self.etc)
            c["global"]["external_labels"] = rw["global"]["external_labels"]
            c["remote_write"] = rw["remote_write"]
            c["remote_write"][0]["url"] = f"http://127.0.0.1:{self.receiver.port}/api/v1/write"
        return c

    def tokens_config(self, interval):
        """fleet-tokens.yml: its first device job, the example of a job per
        device, repeated for each token device."""
        c = with_intervals(example("fleet-tokens.yml", self.etc), interval)
        jobs = c["scrape_configs"]
        template = yaml.safe_dump(jobs[0])
        per_device = [yaml.safe_load(template.replace("rack1-kvm1.lan:3080", f"{d.ip}:3080")
                                     .replace("rack1-kvm1", d.name)) for d in self.fleet.of(mtls=False)]
        c["scrape_configs"] = per_device + [j for j in jobs if j["job_name"] == "jetkvm-health"]
        return c

    def stop(self):
        if self.inventory:
            self.inventory.shutdown()
        # The receiver last: a site stopping flushes its remote write there.
        for p in reversed(self.started):
            try:
                p.stop()
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def instances(prom, q):
    """The `instance` labels of what `q` returns (the host alone)."""
    return sorted({dict(k).get("instance", "").split(":")[0] for k in prom.query(q)})


def firing(prom, alert):
    return instances(prom, f'ALERTS{{alertname="{alert}",alertstate="firing"}}')


def ips(devices):
    return sorted(d.ip for d in devices)


def check_up(s, fleet):
    mtls, tokens = fleet.of(mtls=True), fleet.of(mtls=False)
    sites = [(s.mtls, "jetkvm", mtls), (s.tokens, "jetkvm-kvm.+", tokens)]
    if s.mtls_file:
        sites.append((s.mtls_file, "jetkvm", mtls))
    for p, job, devices in sites:
        until(f"every device up on {p.name}", lambda: instances(p, f'up{{job=~"{job}"}} == 1') == ips(devices)
              and instances(p, 'up{job="jetkvm-health"} == 1') == ips(devices), 90)
        check(f"fleet: {p.name}: all {len(devices)} devices up, metrics and health jobs", True)


def check_single(s, fleet):
    d = fleet.of(mtls=False)[1]
    p = s.single
    until("the one-device example's jobs up", lambda: instances(p, 'up{job=~"jetkvm|jetkvm-health"} == 1') == [d.ip]
          and len(p.query('up{job=~"jetkvm|jetkvm-health"} == 1')) == 2, 90)
    check("fleet: one-device (prometheus.yml): its device up, metrics and health jobs", True)


def check_shards(s, fleet):
    """Every mTLS device on exactly one shard, both its jobs there."""
    want = ips(fleet.of(mtls=True))
    on = lambda p, job: instances(p, f'up{{job="{job}"}} == 1')
    until("every device up on its shard", lambda: sorted(sum((on(p, "jetkvm") for p in s.shards), [])) == want
          and all(on(p, "jetkvm") == on(p, "jetkvm-health") for p in s.shards), 90)
    sizes = [len(on(p, "jetkvm")) for p in s.shards]
    check(f"fleet: fleet-shards.yml: each device on exactly one of {len(s.shards)} shards ({sizes}),"
          " its metrics and health jobs together", all(sizes))


def check_rules(s):
    for p in (s.mtls, s.tokens) + ((s.mtls_file, s.single, *s.shards) if s.mtls_file else ()):
        rules = until(f"{p.name}: every rule evaluated", lambda: (r := p.rules()) and all(
            x.get("lastEvaluation", "").startswith("20") for x in r) and r, 60)
        bad = [x["name"] for x in rules if x["health"] != "ok"]
        check(f"fleet: {p.name}: all {len(rules)} rules of the kit evaluate with health ok", not bad, str(bad))


PROVOKED = {
    "JetKVMHostUSBDown": lambda d: d.usb_down,
    "JetKVMAppDown": lambda d: d.app == "down",
    "JetKVMAppRestarting": lambda d: d.app == "restarting",
}


def check_alerts(s, fleet):
    """Each provoked alert fires for exactly the devices in its state, on
    both sites; any other alert fires for every device or none (the
    fixtures all devices share: an RTC from the past, say)."""
    for p, devices in ((s.mtls, fleet.of(mtls=True)), (s.tokens, fleet.of(mtls=False))):
        for alert, state in PROVOKED.items():
            want = ips([d for d in devices if state(d)])
            try:
                until(f"{alert} on {p.name}", lambda: firing(p, alert) == want, 90)
                check(f"fleet: {p.name}: {alert} fires for exactly its {len(want)} devices", bool(want))
            except AssertionError:
                check(f"fleet: {p.name}: {alert} fires for exactly its devices", False,
                      f"want {want}, firing {firing(p, alert)}")
        def uneven():
            alerts = {dict(k)["alertname"] for k in p.query('ALERTS{alertstate="firing"}')}
            return sorted(a for a in alerts - set(PROVOKED) if firing(p, a) not in ([], ips(devices)))
        try:  # an alert for every device may start firing a few scrapes apart
            until(f"no other alert telling devices apart on {p.name}", lambda: not uneven(), 30)
        except AssertionError:
            pass
        check(f"fleet: {p.name}: no other alert tells devices apart", not uneven(), str(uneven()))
        alerts = {dict(k)["alertname"] for k in p.query('ALERTS{alertstate="firing"}')}
        print(f"fleet: {p.name}: alerts firing for every device (shared fixtures):"
              f" {sorted(alerts - set(PROVOKED))}", flush=True)


def check_media(s, fleet):
    want = ips([d for d in fleet.devices if d.media])
    got = sorted(set(instances(s.mtls, "jetkvm_virtual_media_mounted == 1"))
                 | set(instances(s.tokens, "jetkvm_virtual_media_mounted == 1")))
    check(f"fleet: virtual media mounted on exactly its {len(want)} devices", got == want, f"{got}")


def check_federation(s, fleet):
    c = s.central
    n = len(fleet.devices)
    until("the central Prometheus holds every device", lambda: len(instances(
        c, 'up{job=~"jetkvm|jetkvm-.+",job!="jetkvm-health"} == 1')) == n, 120)
    check(f"fleet: federation: the central Prometheus holds all {n} devices' metrics jobs", True)
    check("fleet: federation: and their health jobs",
          len(instances(c, 'up{job="jetkvm-health"}')) == n)
    for q in ("instance:jetkvm_memory_available:ratio", 'ALERTS{alertname="JetKVMHostUSBDown"}'):
        got = instances(c, q)
        want = ips(fleet.devices if q.startswith("instance:") else fleet.of(usb_down=True))
        check(f"fleet: federation: {q.split('{')[0]} for every device it concerns ({len(want)})", got == want,
              f"{len(got)} of {len(want)}")
    # honor_labels: each site's own labels come through (the mTLS site's
    # external label `site`, the token jobs' target label `device`).
    sites = {dict(k).get("site") for k in c.query('up{job="jetkvm"}')}
    named = {dict(k).get("device") for k in c.query('up{job=~"jetkvm-kvm.+"}')}
    check("fleet: federation: each site's labels are kept", sites == {"rack1"} and named == {
        d.name for d in fleet.of(mtls=False)}, f"{sites} {named}")


def check_remote_write(s, fleet):
    r, m = s.receiver, s.mtls
    mtls = fleet.of(mtls=True)
    q = 'count({job=~"jetkvm|jetkvm-.+"})'
    until("the receiver holds the site's series", lambda: (v := r.value(q)) and v == m.value(q), 120)
    check(f"fleet: remote write: the receiver holds the site's {r.value(q):.0f} series of its jobs", True)
    for q in ('up{job="jetkvm"} == 1', "instance:jetkvm_memory_available:ratio",
              'ALERTS{alertname="JetKVMAppDown",alertstate="firing"}'):
        want = ips([d for d in mtls if d.app == "down"] if "ALERTS" in q else mtls)
        got = instances(r, q)
        check(f"fleet: remote write: {q.split('{')[0].split(' ')[0]} of the devices it concerns ({len(want)})",
              got == want, f"{got}")
    sites = {dict(k).get("site") for k in r.query("up")}
    check("fleet: remote write: each series names its site (external_labels)", sites == {"rack1"}, str(sites))
    own = m.value('count({job="prometheus"})')
    other = r.value('count({__name__=~".+",job!~"jetkvm|jetkvm-.+"})')
    check("fleet: remote write: nothing but the fleet's series is sent (the site's own job stays)",
          own and not other, f"site's own: {own}, received: {other}")


def failed_scrapes(p, since):
    """Scrapes of the jetkvm jobs that failed since `since` (monotonic),
    counted from `up` over every job and target, and all of them: each
    from one evaluation."""
    w = f"{max(int(time.monotonic() - since), 2)}s"
    sel = f'up{{job=~"jetkvm.*"}}[{w}]'
    bad = p.value(f"sum(count_over_time({sel})) - sum(sum_over_time({sel}))") or 0
    return bad, p.value(f"sum(count_over_time({sel}))") or 0


def tls_refused(d, ca, cert=None, key=None):
    """Whether a handshake with the device's metrics service fails: trusting
    `ca`, presenting `cert` (or none)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection((d.ip, 3081), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=d.host) as tls:
                tls.sendall(f"GET /metrics HTTP/1.1\r\nHost: {d.ip}\r\nConnection: close\r\n\r\n".encode())
                return not tls.recv(12).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, OSError):
        return True


def rotation(s, fleet, interval):
    """The client certificate on Prometheus replaced, the fleet CA rolled
    over (both trusted on the devices and by Prometheus, the devices'
    certificates and Prometheus' reissued, the old CA removed), one
    device's token rotated: all while scraping, no scrape failing."""
    pki, etc = fleet.pki, s.etc
    mtls = fleet.of(mtls=True)
    old_cert, old_key = f"{fleet.work}/prometheus-old.crt", f"{fleet.work}/prometheus-old.key"
    shutil.copy(f"{etc}/jetkvm/prometheus.crt", old_cert)
    shutil.copy(f"{etc}/jetkvm/prometheus.key", old_key)
    settle = lambda: time.sleep(3 * interval)
    since = time.monotonic()

    s.client_certificate("fleet-ca-1")
    settle()

    ca1, ca2 = read(f"{pki.dir}/fleet-ca-1.crt"), read(pki.ca("fleet-ca-2", "JetKVM fleet CA 2"))
    for d in mtls:
        write(f"{d.dir}/mtls/client-ca.crt", ca1 + ca2)
    write(f"{etc}/jetkvm/fleet-server-ca.crt", ca1 + ca2)
    settle()
    for d in mtls:
        cert, key = pki.leaf("fleet-ca-2", "server", f"DNS:{d.host},IP:{d.ip}", "serverAuth", f"{d.dir}/mtls")
        os.replace(key, f"{d.dir}/mtls/server.key")
        os.replace(cert, f"{d.dir}/mtls/server.crt")
    s.client_certificate("fleet-ca-2")
    settle()
    for d in mtls:
        write(f"{d.dir}/mtls/client-ca.crt", ca2)
    write(f"{etc}/jetkvm/fleet-server-ca.crt", ca2)
    settle()

    d = next(d for d in fleet.of(mtls=False) if not d.no_password)
    old_token, rotated = d.token, time.monotonic()
    out = subprocess.run([fleet.binary, "token", "new", "--keep-previous", f"{KEEP}s", "--config",
                          f"{d.dir}/config.toml"], capture_output=True, text=True, check=True)
    d.token = out.stdout.strip()
    write(f"{etc}/jetkvm/{d.name}.token", d.token, 0o600)
    settle()

    for p in (s.mtls, s.tokens):
        bad, total = failed_scrapes(p, since)
        check(f"fleet: {p.name}: no scrape failed across the rotations ({total:.0f} scrapes)",
              bad == 0 and total > 0, f"{bad:.0f} of {total:.0f} failed")
    ca = f"{etc}/jetkvm/fleet-server-ca.crt"
    new = (f"{etc}/jetkvm/prometheus.crt", f"{etc}/jetkvm/prometheus.key")
    check("fleet: the old client certificate (old CA) is refused now", tls_refused(mtls[0], ca, old_cert, old_key))
    check("fleet: the new one is let in", not tls_refused(mtls[0], ca, *new))
    check("fleet: the devices serve certificates of the new CA only",
          tls_refused(mtls[0], f"{pki.dir}/fleet-ca-1.crt", *new))
    # Prometheus' open connections were made before; a device restarted
    # makes it connect anew, with the certificate it holds now.
    mtls[0].stop()
    if os.path.exists(f"{mtls[0].dir}/ports"):  # it removes its own when it stops
        raise AssertionError(f"{mtls[0].name} left its ports file behind")
    mtls[0].start(fleet.binary)
    if not mtls[0].started():
        raise AssertionError(f"{mtls[0].name} did not start again (see its daemon.log)")
    until("the restarted device scraped again", lambda: instances(
        s.mtls, f'up{{job="jetkvm",instance="{mtls[0].ip}"}} == 1') == [mtls[0].ip] and (s.mtls.value(
        f'process_start_time_seconds{{job="jetkvm",instance="{mtls[0].ip}"}}') or 0) > time.time() - 60, 60)
    check("fleet: Prometheus reconnects to a restarted device with the new certificate", True)
    statuses = [bearer_status(d, t) for t in (d.token, old_token, "jkm_wrong")]
    check("fleet: the rotated token works, and the previous one while it is kept, no other",
          statuses == [200, 200, 401], str(statuses))
    fleet.previous_token = (d, old_token, rotated + KEEP)


def bearer_status(d, token):
    ctx = ssl.create_default_context(cafile=f"{d.dir}/tls/__ca__.crt")
    req = urllib.request.Request(f"https://{d.ip}:3080/metrics", headers={"Authorization": f"Bearer {token}"})
    ctx.check_hostname = False
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def refused_and_unreachable(s, fleet):
    """A job with a wrong token: JetKVMScrapeRefused for that device alone;
    a daemon stopped: JetKVMDeviceUnreachable for it alone."""
    d = [d for d in fleet.of(mtls=False) if not d.no_password][-1]
    write(f"{s.etc}/jetkvm/{d.name}.token", "jkm_not-this-device's-token", 0o600)
    until("JetKVMScrapeRefused", lambda: firing(s.tokens, "JetKVMScrapeRefused") == [d.ip], 90)
    check("fleet: a job with a wrong token: JetKVMScrapeRefused for that device alone", True)
    write(f"{s.etc}/jetkvm/{d.name}.token", d.token, 0o600)
    down = fleet.of(mtls=True)[-1]
    down.stop()
    until("JetKVMDeviceUnreachable", lambda: firing(s.mtls, "JetKVMDeviceUnreachable") == [down.ip], 90)
    check("fleet: a device stopped: JetKVMDeviceUnreachable for that device alone", True)
    until("the wrong token's alert gone", lambda: firing(s.tokens, "JetKVMScrapeRefused") == [], 90)
    check("fleet: given its token again, the job is up and the alert gone", True)
    d, old, ends = fleet.previous_token
    time.sleep(max(0.0, ends - time.monotonic() + 1))
    statuses = [bearer_status(d, t) for t in (d.token, old)]
    check("fleet: once its time is up, the previous token is refused", statuses == [200, 401], str(statuses))


def run_check(fleet):
    interval = 2
    s = Sites(fleet, f"{interval}s", "6s")
    try:
        phases = [
            ("every device up", lambda: check_up(s, fleet)),
            ("the one-device example", lambda: check_single(s, fleet)),
            ("shards", lambda: check_shards(s, fleet)),
            ("the apps that are down go down", fleet.take_apps_down),
            ("the rules", lambda: check_rules(s)),
            ("the provoked alerts", lambda: check_alerts(s, fleet)),
            ("virtual media", lambda: check_media(s, fleet)),
            ("federation", lambda: check_federation(s, fleet)),
            ("remote write", lambda: check_remote_write(s, fleet)),
            ("rotation", lambda: rotation(s, fleet, interval)),
            ("refused and unreachable", lambda: refused_and_unreachable(s, fleet)),
        ]
        for name, fn in phases:
            print(f"--- {name}", flush=True)
            started = time.monotonic()
            try:
                fn()
            except Exception as e:  # report it; the phases after build on it
                check(f"fleet: phase {name!r}", False, f"{type(e).__name__}: {e}")
                break
            print(f"--- {name}: {time.monotonic() - started:.0f}s", flush=True)
    finally:
        s.stop()


def cpu_seconds(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def on_cpu(pid):
    """Time a process's threads have run, seconds, to the nanosecond (the
    scheduler's own count; utime and stime move in 10 ms ticks, too coarse
    for a daemon's few milliseconds a scrape)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that ended
    return total / 1e9


def timed_query(p, q, start, end, step):
    url = f"http://127.0.0.1:{p.port}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": q, "start": start, "end": end, "step": step})
    t = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as r:
        json.load(r)
    return time.monotonic() - t


def dashboard_queries():
    with open(f"{ROOT}/docs/kit/dashboard.json") as f:
        d = json.load(f)
    out = []

    def walk(panel):
        out.extend((panel.get("title", ""), t["expr"]) for t in panel.get("targets", []))
        for p in panel.get("panels", []):
            walk(p)
    for p in d["panels"]:
        walk(p)
    return out


def own(p, name):
    """The sum of a family's samples on a Prometheus's own /metrics (these
    servers do not scrape themselves)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "))


def run_bench(fleet, seconds):
    """The examples' own intervals (15 s scrapes; rules each minute, the
    default), the rules as shipped. Warm-up, then `seconds` measured."""
    s = Sites(fleet, None, None, every_example=False)
    try:
        check_up(s, fleet)
        fleet.take_apps_down()
        time.sleep(60)
        proms = {p.name: p for p in s.all()}
        cpu0 = {n: cpu_seconds(p.proc.pid) for n, p in proms.items()}
        d0 = {d.name: on_cpu(d.proc.pid) for d in fleet.devices}
        sent0 = own(s.mtls, "prometheus_remote_storage_samples_total")
        t0, wall0 = time.monotonic(), time.time()
        time.sleep(seconds)
        d1 = {d.name: on_cpu(d.proc.pid) for d in fleet.devices}
        took = time.monotonic() - t0
        w = f"{int(took)}s"
        cpu = {n: (cpu_seconds(p.proc.pid) - cpu0[n]) / took for n, p in proms.items()}
        rss = {n: rss_kib(p.proc.pid) / 1024 for n, p in proms.items()}
        n = len(fleet.devices)
        print(f"\nfleet bench: {n} devices, {took:.0f} s measured at the examples' intervals (15 s scrapes,"
              " rules every 1 m), the rules as shipped")
        print("| Prometheus | devices | CPU | per device | RSS | per device | head series | rule evaluation |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in ("mtls", "tokens"):
            p, k = proms[name], len(fleet.of(mtls=name == "mtls"))
            rules = own(p, "prometheus_rule_group_last_duration_seconds")  # both groups, the last round
            print(f"| {name} site | {k} | {100 * cpu[name]:.2f} % | {1000 * cpu[name] / k:.3f} ms/s |"
                  f" {rss[name]:.0f} MiB | {rss[name] / k:.2f} MiB | {own(p, 'prometheus_tsdb_head_series'):.0f} |"
                  f" {1000 * rules:.1f} ms |")
        for name in ("central", "receiver"):
            print(f"| {name} | {n if name == 'central' else len(fleet.of(mtls=True))} | {100 * cpu[name]:.2f} % |"
                  f" | {rss[name]:.0f} MiB | | {own(proms[name], 'prometheus_tsdb_head_series'):.0f} | |")
        sent = (own(s.mtls, "prometheus_remote_storage_samples_total") - sent0) / took
        print(f"\nremote write: {sent:.0f} samples/s from the mTLS site's {len(fleet.of(mtls=True))} devices"
              f" ({sent / max(len(fleet.of(mtls=True)), 1):.1f} per device)")
        daemon_figures(s, fleet, d0, d1, w)
        some = fleet.devices[0].ip
        end = time.time()
        q = sorted(((timed_query(s.mtls, expr.replace("$instance", some), wall0, end, 15), title)
                    for title, expr in dashboard_queries()), reverse=True)
        menu = timed_query(s.mtls, "group by (instance) (jetkvm_exporter_build_info)", wall0, end, 15)
        every = sorted(((timed_query(s.mtls, expr.replace('"$instance"', '~".+"'), wall0, end, 15), title)
                        for title, expr in dashboard_queries()), reverse=True)
        print("dashboard over the window, one device, heaviest: " + "; ".join(
            f"{1000 * t:.1f} ms {title!r}" for t, title in q[:3]) + f"; the device menu {1000 * menu:.1f} ms")
        print("the same over every device (instance=~\".+\"), heaviest: " + "; ".join(
            f"{1000 * t:.1f} ms {title!r}" for t, title in every[:3]))
        bad = sum(failed_scrapes(p, t0)[0] for p in (s.mtls, s.tokens))
        total = sum(failed_scrapes(p, t0)[1] for p in (s.mtls, s.tokens))
        print(f"failed scrapes in the window: {bad:.0f} of {total:.0f}")
    finally:
        s.stop()


def daemon_figures(s, fleet, d0, d1, w):
    """The daemons' CPU per metrics scrape (its health scrape included),
    by kind and app state, and how much of it their collectors took."""
    groups = {}
    for d in fleet.devices:
        p = s.mtls if d.mtls else s.tokens
        job = "jetkvm" if d.mtls else f"jetkvm-{d.name}"
        scrapes = p.value(f'count_over_time(up{{job="{job}",instance=~"{d.ip}(:3080)?"}}[{w}])') or 0
        collect = p.value(f'sum(jetkvm_scrape_collector_duration_seconds{{instance=~"{d.ip}(:3080)?"}})') or 0
        g = groups.setdefault(("mTLS service" if d.mtls else "token, device TLS",
                               "app " + d.app), [0, 0, 0.0, 0.0])
        g[0] += 1
        g[1] += scrapes
        g[2] += d1[d.name] - d0[d.name]
        g[3] += collect
    print("\n| daemons | app | devices | CPU per metrics scrape | of it, the collectors |")
    print("|---|---|---:|---:|---:|")
    for (kind, app), (k, scrapes, cpu, collect) in sorted(groups.items()):
        print(f"| {kind} | {app} | {k} | {1000 * cpu / max(scrapes, 1):.2f} ms | {1000 * collect / k:.2f} ms |")


def connection_costs(fleet, n=200):
    """One daemon's CPU (the scheduler's count) for what a connection
    costs it, asked by this script: a scrape on a new connection and on a
    kept one, over mTLS and over the device's TLS with the token; a plain
    /healthz; a second with a connection held open and idle, and with
    none."""
    m, t = fleet.of(mtls=True)[0], fleet.of(mtls=False)[0]
    cert, key = fleet.pki.leaf("fleet-ca-1", "prometheus", f"DNS:{CLIENT_SAN}", "clientAuth")
    mctx = ssl.create_default_context(cafile=f"{fleet.pki.dir}/fleet-ca-1.crt")
    mctx.load_cert_chain(cert, key)
    tctx = ssl.create_default_context(cafile=f"{t.dir}/tls/__ca__.crt")
    for ctx in (mctx, tctx):
        ctx.check_hostname = False

    def connect(d, port, ctx):
        raw = socket.create_connection((d.ip, port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=d.host) if ctx else raw

    def ask(sock, d, path, auth):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {d.ip}\r\nAccept-Encoding: gzip\r\n{auth}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)

    def per_request(d, port, ctx, path, auth="", keep=False):
        c0, sock = on_cpu(d.proc.pid), None
        for _ in range(n):
            sock = sock if keep and sock else connect(d, port, ctx)
            ask(sock, d, path, auth)
            if not keep:
                sock.close()
        sock.close()
        return 1000 * (on_cpu(d.proc.pid) - c0) / n

    bearer = f"Authorization: Bearer {t.token}\r\n"
    rows = [("mTLS scrape, new connection", per_request(m, 3081, mctx, "/metrics")),
            ("mTLS scrape, kept connection", per_request(m, 3081, mctx, "/metrics", keep=True)),
            ("token scrape over the device's TLS, new connection", per_request(t, 3080, tctx, "/metrics", bearer)),
            ("token scrape over the device's TLS, kept connection",
             per_request(t, 3080, tctx, "/metrics", bearer, keep=True)),
            ("plain /healthz, new connection", per_request(m, 3080, None, "/healthz"))]
    time.sleep(12)  # the connections above closed by header_timeout
    c0 = on_cpu(m.proc.pid)
    time.sleep(8)
    rows.append(("no connection, a second", 1000 * (on_cpu(m.proc.pid) - c0) / 8))
    sock = connect(m, 3080, None)
    ask(sock, m, "/healthz", "")
    c0 = on_cpu(m.proc.pid)
    time.sleep(8)
    rows.append(("one idle connection held open, a second", 1000 * (on_cpu(m.proc.pid) - c0) / 8))
    sock.close()
    print(f"\none daemon, CPU ({n} requests each):")
    for what, ms in rows:
        print(f"  {what}: {ms:.2f} ms")


def serve(fleet):
    s = Sites(fleet, None, None)
    try:
        fleet.take_apps_down()
        print(f"fleet: {len(fleet.devices)} devices under {fleet.work}/devices")
        for p in s.all():
            print(f"  Prometheus {p.name}: http://127.0.0.1:{p.port}/ ({p.dir}/prometheus.yml)")
        print("Ctrl-C stops the fleet", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser(description="A fleet of jetkvm-metrics daemons on loopback, scraped by Prometheus.")
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--binary")
    ap.add_argument("--work")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--header-timeout", metavar="DURATION",
                    help="the devices' [limits] header_timeout (how long an idle connection is kept)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--bench", type=int, metavar="SECONDS")
    mode.add_argument("--connection-costs", action="store_true")
    a = ap.parse_args()
    if not 4 <= a.devices <= 2000:
        ap.error("--devices: 4 to 2000")
    binary = a.binary or next((p for p in (f"{ROOT}/target/release/jetkvm-metrics", f"{ROOT}/target/debug/jetkvm-metrics")
                               if os.path.exists(p)), None)
    if not binary:
        print("fleet: no jetkvm-metrics binary (cargo build --release, or --binary)", file=sys.stderr)
        return 1
    # SIGTERM stops the fleet as Ctrl-C does: the daemons, apps and
    # Prometheus servers with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = a.work or tempfile.mkdtemp(prefix="jetkvm-fleet-")
    os.makedirs(work, exist_ok=True)
    fleet = Fleet(work, a.devices, binary, a.header_timeout)
    t = time.monotonic()
    try:
        fleet.prepare()
        fleet.start()
        print(f"fleet: {a.devices} devices ({binary}) prepared and started in {time.monotonic() - t:.0f} s", flush=True)
        if a.check:
            run_check(fleet)
        elif a.bench:
            run_bench(fleet, a.bench)
        elif a.connection_costs:
            connection_costs(fleet)
        else:
            serve(fleet)
    except Exception as e:  # the fleet is stopped whatever happened
        check(f"fleet: {type(e).__name__}", False, f"{e} (kept: {work})")
    finally:
        fleet.stop()
    if a.check or a.bench:
        print(f"fleet: {sum(ok for _, ok in RESULTS)} passed, {sum(not ok for _, ok in RESULTS)} failed")
    if not (a.keep or failed()):
        shutil.rmtree(work, ignore_errors=True)
    elif failed():
        print(f"fleet: kept {work}")
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
