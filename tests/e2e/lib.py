"""What the end-to-end tests, the board benchmark and the soak share: the
emulated board, a real Prometheus scraping it, checks that collect every
failure, named phases, the device's password hash and certificates."""

import base64
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(name, ok, detail=""):
    """Records one outcome and goes on: a run reports every failure, not the
    first. What cannot go on after a failure raises (`until`, `Board.sh`)."""
    RESULTS.append((name, bool(ok)))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail and not ok else ''}", flush=True)
    return bool(ok)


def failed():
    return any(not ok for _, ok in RESULTS)


def run_phases(phases, ctx):
    """Runs the named phases in order, each `fn(ctx)`. A phase that raises
    is recorded as a failure, and the phases after it do not run (they
    build on it)."""
    for name, fn in phases:
        print(f"--- {name}", flush=True)
        started = time.monotonic()
        try:
            fn(ctx)
        except Exception as e:  # report it; the caller keeps the logs
            check(f"phase {name!r}", False, f"{type(e).__name__}: {e}")
            return False
        print(f"--- {name}: {time.monotonic() - started:.0f}s", flush=True)
    return True


def finish(name, board, work, keep, extra=()):
    """The end of an end-to-end run: on failure the board's console and
    QEMU logs (and `extra` files) kept under out/artifacts/, prefixed with
    `name`; the work directory removed unless `keep`; one summary line.
    Returns the exit code."""
    if failed():
        os.makedirs(f"{ROOT}/out/artifacts", exist_ok=True)
        logs = [f"{board.state}/console.log", f"{board.state}/qemu.log", *extra]
        for path in filter(os.path.exists, logs):
            shutil.copy(path, f"{ROOT}/out/artifacts/{name}-{os.path.basename(path)}")
        print(f"artifacts: {ROOT}/out/artifacts/", flush=True)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for _, ok in RESULTS if ok)
    print(f"{name}: {passed} passed, {len(RESULTS) - passed} failed")
    return 1 if failed() else 0


def until(what, fn, timeout):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the board or Prometheus not ready yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def http_status(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def https_status(port, path, headers, cafile, server_name):
    """Status of one HTTPS request verified against `cafile` for `server_name`
    (sent as SNI), or None if the TLS handshake fails."""
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                conn = http.client.HTTPConnection(server_name)
                conn.sock = tls
                conn.request("GET", path, headers=headers)
                return conn.getresponse().status
    except (ssl.SSLError, ConnectionError):
        return None


def device_certificates(work):
    """The device's self-signed TLS as it keeps it: a CA and a leaf for its
    default host, the leaf's chain including the CA."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "__ca__.key", "-out", "__ca__.crt", "-subj", "/CN=JetKVM CA", "-days", "30")
    run("req", *ec, "-keyout", "jetkvm.local.key", "-out", "leaf.csr", "-subj", "/CN=jetkvm.local")
    with open(f"{work}/san.ext", "w") as f:
        f.write("subjectAltName=DNS:jetkvm.local\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "__ca__.crt", "-CAkey", "__ca__.key", "-CAcreateserial",
        "-out", "leaf.crt", "-days", "10", "-extfile", "san.ext")
    read = lambda name: open(f"{work}/{name}").read().strip()
    return {"__ca__.crt": read("__ca__.crt"), "jetkvm.local.crt": read("leaf.crt") + "\n" + read("__ca__.crt"),
            "jetkvm.local.key": read("jetkvm.local.key")}


def device_hash(password):
    """bcrypt in the device's form: Go writes $2a$ at cost 10; mkpasswd
    (Debian's whois) writes the same algorithm as $2b$. The password goes
    through stdin, never argv."""
    h = subprocess.run(["mkpasswd", "-m", "bcrypt", "-R", "10", "--stdin"], input=password,
                       capture_output=True, text=True, check=True)
    return "$2a$" + h.stdout.strip()[len("$2b$"):]


def bound_addr(ports_file, proc, role="general", timeout=20):
    """(host, port) a daemon started with `serve --ports-file` listens on for
    `role`, once it has written the file; None if it exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            with open(ports_file) as f:
                for line in f.read().splitlines():
                    name, _, addr = line.partition(" ")
                    if name == role:
                        host, _, port = addr.rpartition(":")
                        return host.strip("[]"), int(port)
                return None
        except FileNotFoundError:
            time.sleep(0.05)
    return None


def rss_kib(pid):
    """Resident memory of a local process, KiB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Rss:"))


def basic(password):
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


class Board:
    def __init__(self, state, http, metrics):
        self.state, self.http, self.metrics = state, http, metrics

    def sh(self, command, timeout=30):
        out = subprocess.run(
            [f"{ROOT}/scripts/board-console", f"{self.state}/console.sock", command, "--timeout", str(timeout)],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise AssertionError(f"board: {command!r} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out.stdout

    def secret(self, name):
        with open(f"{self.state}/secrets/{name}") as f:
            return f.read().strip()

    def console_text(self):
        """The console log without the kernel's own lines, which can land in
        the middle of an init script's "Starting ...: OK"."""
        with open(f"{self.state}/console.log", errors="replace") as f:
            return re.sub(r"\[ *\d+\.\d+\] [^\r\n]*\r?\n", "", f.read())

    def qemu_pid(self):
        with open(f"{self.state}/qemu.pid") as f:
            return int(f.read())


class Prometheus:
    def __init__(self, work, port, board, extra_jobs=""):
        self.port = port
        s = f"{board.state}/secrets"
        with open(f"{work}/password", "w") as f:
            f.write(board.secret("device-password"))
        config = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: basic
    basic_auth: {{username: admin, password_file: {work}/password}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
  - job_name: token
    authorization: {{type: Bearer, credentials_file: {s}/token}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
  - job_name: wrong
    scrape_interval: 10s
    scrape_timeout: 5s
    basic_auth: {{username: admin, password: not-the-password}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
  - job_name: mtls
    scheme: https
    tls_config:
      ca_file: {s}/board-ca.pem
      cert_file: {s}/client.crt
      key_file: {s}/client.key
      server_name: jetkvm.local
    static_configs: [{{targets: ["127.0.0.1:{board.metrics}"]}}]
{extra_jobs}"""
        with open(f"{work}/prometheus.yml", "w") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=open(f"{work}/prometheus.log", "w"), stderr=subprocess.STDOUT,
        )
        self.password_file = f"{work}/password"

    def query(self, q):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        return {tuple(sorted(x["metric"].items())): float(x["value"][1]) for x in body["data"]["result"]}

    def value(self, q):
        v = self.query(q)
        return next(iter(v.values())) if v else None

    def up(self, job):
        return self.value(f'up{{job="{job}"}}')

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
