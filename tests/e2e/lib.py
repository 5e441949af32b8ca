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
import sys
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


def run_board(name, phases, c, extra=()):
    """Runs the phases on `c.board`, then stops its Prometheus (`c.prom`)
    and QEMU whatever happened, and finishes: the exit code."""
    keep = "--keep" in sys.argv
    t0 = time.monotonic()
    try:
        run_phases(phases, c)
    finally:
        if getattr(c, "prom", None):
            c.prom.stop()
        try:
            os.kill(c.board.qemu_pid(), 9)
        except (OSError, ValueError):
            pass
    print(f"{name} run took {time.monotonic() - t0:.0f}s", flush=True)
    return finish(name, c.board, c.work, keep, extra)


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


def qmp(path, command, **arguments):
    """Runs one command on QEMU's QMP socket at `path` (the greeting, then
    qmp_capabilities, then the command) and returns its "return"; raises on
    an "error" or a closed socket. Events in between are skipped."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        replies = s.makefile("r", encoding="utf-8")

        def reply():
            while True:
                line = replies.readline()
                if not line:
                    raise AssertionError(f"QMP {path}: closed")
                msg = json.loads(line)
                if "event" not in msg:
                    return msg

        if "QMP" not in reply():
            raise AssertionError(f"QMP {path}: no greeting")
        for name, args in (("qmp_capabilities", {}), (command, arguments)):
            s.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
            msg = reply()
            if "error" in msg or "return" not in msg:
                raise AssertionError(f"QMP {name} {args}: {msg.get('error', msg)}")
        return msg["return"]


def basic(password):
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


class Board:
    def __init__(self, state, http, metrics):
        self.state, self.http, self.metrics = state, http, metrics

    def sh(self, command, timeout=30):
        out = subprocess.run(
            [f"{ROOT}/scripts/board/board-console.py", f"{self.state}/console.sock", command, "--timeout", str(timeout)],
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

    def set_link(self, up):
        """Plugs or unplugs the board's cable: QEMU's set_link on its NIC
        (netdev net0), through STATE/qmp.sock."""
        qmp(f"{self.state}/qmp.sock", "set_link", name="net0", up=up)

    def link(self):
        """eth0's carrier and operstate read on the console, e.g. "1 up"
        (the carrier is empty where the kernel refuses it)."""
        return self.sh('echo "$(cat /sys/class/net/eth0/carrier 2>/dev/null) $(cat /sys/class/net/eth0/operstate)"').strip("\n")

    def healthz(self, timeout=3):
        """The status of /healthz through the forwarded general port, or
        None if nothing answers within `timeout` seconds."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def flap_link(self, timeout=30):
        """The cable out, then in again: set_link off, the console read until
        eth0 says "0 down" (or `timeout` seconds), the forwarded general port
        tried once; set_link on, the console read until "1 up", the port
        tried until it answers. What was seen, for the caller to check, and
        when (seconds after each set_link)."""
        def settle(want):
            end = time.monotonic() + timeout
            while (seen := self.link()) != want and time.monotonic() < end:
                time.sleep(0.2)
            return seen, time.monotonic() - start

        seen = {}
        self.set_link(False)
        start = time.monotonic()
        seen["out"], seen["out_seconds"] = settle("0 down")
        seen["port_out"] = self.healthz(timeout=3)
        self.set_link(True)
        start = time.monotonic()
        seen["in"], seen["in_seconds"] = settle("1 up")
        while (status := self.healthz()) != 200 and time.monotonic() < start + 2 * timeout:
            time.sleep(0.2)
        seen["port_in"], seen["port_seconds"] = status, time.monotonic() - start
        return seen

    def scrape_mtls(self):
        """One scrape of the metrics service with Prometheus' client
        certificate: {series as the daemon writes it: value}."""
        s = f"{self.state}/secrets"
        ctx = ssl.create_default_context(cafile=f"{s}/board-ca.pem")
        ctx.load_cert_chain(f"{s}/client.crt", f"{s}/client.key")
        with socket.create_connection(("127.0.0.1", self.metrics), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="jetkvm.local") as tls:
                conn = http.client.HTTPConnection("jetkvm.local")
                conn.sock = tls
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                status, body = r.status, r.read().decode()
        if status != 200:
            raise AssertionError(f"mTLS scrape: HTTP {status}")
        series = (line.rpartition(" ") for line in body.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, _, value in series}


def kit_rules_copy(work, cut="1s", path=None):
    """The kit's rules (docs/kit/rules.yml) with every `for:` cut to `cut`,
    so an alert provoked on the board fires within seconds, written to
    `path` (default `work`/kit-rules.yml). Nothing else of them changes."""
    with open(f"{ROOT}/docs/kit/rules.yml") as f:
        text = f.read()
    short = re.sub(r"^(\s+for: )\S+$", r"\g<1>" + cut, text, flags=re.M)
    path = path or f"{work}/kit-rules.yml"
    with open(path, "w") as f:
        f.write(short)
    return path


class Prometheus:
    """Debian's Prometheus on loopback with `config` and any more `flags`
    (the one harness of the end-to-end tests: the boards', the native
    daemon's and the fleet's)."""

    def __init__(self, work, port, config, flags=()):
        self.port = port
        with open(f"{work}/prometheus.yml", "w") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *flags],
            stdout=open(f"{work}/prometheus.log", "w"), stderr=subprocess.STDOUT,
        )

    @classmethod
    def for_board(cls, work, port, board, extra_jobs="", kit_rules=False):
        """Scraping the board: basic auth, the token, a wrong password (a
        metrics job of the kit's naming, so the kit's "refused" alert can see
        it), mTLS, and the kit's credential-free health job; with
        `kit_rules`, evaluating the kit's rules (short `for:`)."""
        s = f"{board.state}/secrets"
        with open(f"{work}/password", "w") as f:
            f.write(board.secret("device-password"))
        rules = f"rule_files: [{kit_rules_copy(work)}]" if kit_rules else ""
        config = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
{rules}
scrape_configs:
  - job_name: basic
    basic_auth: {{username: admin, password_file: {work}/password}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
  - job_name: token
    authorization: {{type: Bearer, credentials_file: {s}/token}}
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
  - job_name: jetkvm-wrong
    scrape_interval: 15s
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
  - job_name: jetkvm-health
    metrics_path: /healthz
    static_configs: [{{targets: ["127.0.0.1:{board.http}"]}}]
{extra_jobs}"""
        prom = cls(work, port, config)
        prom.password_file = f"{work}/password"
        return prom

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

    def firing(self, alert, **labels):
        """Whether the kit's `alert` fires now (with `labels`)."""
        matchers = [f'alertname="{alert}"', 'alertstate="firing"'] + [f'{k}="{v}"' for k, v in labels.items()]
        return self.value(f"ALERTS{{{','.join(matchers)}}}") == 1

    def series(self, selector, start):
        """The series `selector` matched since `start` (Unix seconds)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/series?" + urllib.parse.urlencode(
            {"match[]": selector, "start": f"{start:.0f}"})
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)["data"]

    def rules(self):
        """Every rule Prometheus evaluates, with its health."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/rules", timeout=10) as r:
            return [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


# The KVM's own state on the board, shared by the end-to-end test and the
# benchmark: the test disk's drivers loaded (vivid with one HDMI input,
# dummy_hcd, the gadget functions), a gadget shaped like the device's bound
# to dummy_udc.0, and an exposition shaped like the device app's.
TEST_DRIVERS = ("mkdir -p /tmp/t && mount -o ro $(findfs LABEL=kvmtest) /tmp/t && mount --bind /tmp/t/lib/modules /lib/modules"
                " && modprobe vivid num_inputs=1 input_types=3 n_devs=1 && modprobe dummy_hcd"
                " && modprobe usb_f_hid && modprobe usb_f_mass_storage")

GADGET = " && ".join([
    "G=/sys/kernel/config/usb_gadget/jetkvm",
    "mount -t configfs none /sys/kernel/config",
    "mkdir -p $G/configs/c.1 $G/functions/hid.usb0 $G/functions/hid.usb1 $G/functions/hid.usb2 $G/functions/mass_storage.usb0",
    "echo 0x1d6b > $G/idVendor",
    "echo 0x0104 > $G/idProduct",
    "for h in 0 1 2; do echo 1 > $G/functions/hid.usb$h/protocol; echo 8 > $G/functions/hid.usb$h/report_length;"
    " printf '\\x05\\x01\\x09\\x06\\xa1\\x01\\xc0' > $G/functions/hid.usb$h/report_desc; done",
    "for f in hid.usb0 hid.usb1 hid.usb2 mass_storage.usb0; do ln -s $G/functions/$f $G/configs/c.1/$f; done",
    "echo 1 > $G/functions/mass_storage.usb0/lun.0/removable",
    "echo dummy_udc.0 > $G/UDC",
])


# An exposition shaped like the device app's: its build info, cloud, time
# sync and DC families, SOURCES clients (`source`) on a counter and a
# histogram, and a Go runtime's families (which must not come through) as
# the app's Go client writes them.
def app_metrics(sources):
    """A shell command that writes it to /tmp/app/metrics."""
    go = "".join(f"echo '# TYPE go_memstats_{m}_bytes gauge'; echo 'go_memstats_{m}_bytes {n}'\n"
                 for n, m in enumerate(["alloc", "buck_hash_sys", "gc_sys", "heap_alloc", "heap_idle", "heap_inuse",
                                        "heap_released", "heap_sys", "mcache_inuse", "mcache_sys", "mspan_inuse",
                                        "mspan_sys", "next_gc", "other_sys", "stack_inuse", "stack_sys", "sys"]))
    return r"""mkdir -p /tmp/app && {
echo '# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.'
echo '# TYPE go_gc_duration_seconds summary'
for q in 0 0.25 0.5 0.75 1; do echo "go_gc_duration_seconds{quantile=\"$q\"} 0.0001"; done
echo 'go_gc_duration_seconds_sum 0.06'; echo 'go_gc_duration_seconds_count 312'
echo '# TYPE go_goroutines gauge'; echo 'go_goroutines 40'
""" + go + r"""echo '# HELP jetkvm_build_info The app build info.'; echo '# TYPE jetkvm_build_info gauge'
echo 'jetkvm_build_info{version="0.4.8",revision="0c6d4a5"} 1'
echo '# TYPE jetkvm_cloud_connection_status gauge'; echo 'jetkvm_cloud_connection_status 1'
echo '# TYPE jetkvm_connection_ping_sent_total counter'
i=1; while [ $i -le N ]; do echo "jetkvm_connection_ping_sent_total{source=\"10.0.0.$i\",type=\"local\"} $i"; i=$((i+1)); done
echo '# TYPE jetkvm_connection_ping_duration_seconds histogram'
i=1; while [ $i -le N ]; do for le in 0.1 1 +Inf; do
echo "jetkvm_connection_ping_duration_seconds_bucket{source=\"10.0.0.$i\",type=\"local\",le=\"$le\"} 1"; done
echo "jetkvm_connection_ping_duration_seconds_sum{source=\"10.0.0.$i\",type=\"local\"} 0.05"
echo "jetkvm_connection_ping_duration_seconds_count{source=\"10.0.0.$i\",type=\"local\"} 1"; i=$((i+1)); done
echo '# TYPE jetkvm_timesync_status gauge'; echo 'jetkvm_timesync_status 1'
echo '# TYPE jetkvm_dc_power_watts gauge'; echo 'jetkvm_dc_power_watts 12.5'
echo '# TYPE process_open_fds gauge'; echo 'process_open_fds 31'
echo '# TYPE promhttp_metric_handler_requests_total counter'
echo 'promhttp_metric_handler_requests_total{code="200"} 1234'
} > /tmp/app/metrics""".replace("-le N", f"-le {sources}")


class _Pid:
    """A process known by its pid alone, as bound_addr asks it (Popen's poll)."""

    def __init__(self, pid):
        self.pid = pid

    def poll(self):
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 1
        except PermissionError:
            pass  # another user's, and there
        return None


def main(argv):
    """The helpers for the shell scripts (scripts/lib.sh calls these): one
    implementation of each, here."""
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "free-port" and not args:
        print(free_port())
    elif cmd == "device-hash" and not args:
        print(device_hash(sys.stdin.read()))
    elif cmd == "rss-kib" and len(args) == 1:
        print(rss_kib(int(args[0])))
    elif cmd == "bound-addr" and len(args) in (2, 3):
        addr = bound_addr(args[0], _Pid(int(args[1])), *args[2:])
        if addr is None:
            return 1
        host, port = addr
        print(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    else:
        print("usage: lib.py free-port | device-hash (password on stdin) | rss-kib PID"
              " | bound-addr PORTS_FILE PID [ROLE]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
