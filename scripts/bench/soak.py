#!/usr/bin/env python3
"""Soak test: scrapes the daemon at a steady rate over keep-alive
connections for a set time, and checks after warm-up that anonymous memory
(what a leak grows) and, on runs of 5 minutes or more, the whole resident
set (smaps_rollup) grow by at most 1%, and that open file descriptors stay
flat. Resident file-backed pages of the binary keep growing for a minute or
two as code paths first run (bounded by the binary's size): the warm-up of
a long run is a fifth of it. A short run warms up for half of it (the
heap of the debug build settles within 30 to 40 s at 100 scrapes/s) and
judges anonymous memory only.

Growth is judged on the floor: the lowest of the samples (one a second) in
the last third of the run against the lowest in the first third after
warm-up. Anonymous memory moves up and down by a few pages between scrapes
as the allocator reuses its heap (24 KiB, over 1% of a 1.8 MiB heap, seen
between two single samples); a leak raises the floor, noise does not.

A long run allows 1% growth. A short run is judged per scrape instead: 1% of
a small heap is 18 KiB, about the noise of a loaded machine. Between the
middles of its first and last thirds are some 2,000 scrapes; the floor may
rise by at most 16 bytes a scrape on average. The smallest leak glibc can
make, one 16-byte allocation per scrape, takes 32 bytes a scrape.

usage: scripts/bench/soak.py [--seconds N] [--rate R] [--binary PATH]

Defaults: 600 s at 100 scrapes/s (the long run); the test command runs a
short one. Uses target/debug/jetkvm-metrics (what the tests built) unless
--binary names another.
"""

import argparse
import base64
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.dont_write_bytecode = True
sys.path.insert(0, f"{ROOT}/tests/e2e")
from lib import bound_addr, device_hash, rss_kib  # noqa: E402  (the end-to-end library)


def anon_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return int(re.search(r"^Anonymous:\s+(\d+)", f.read(), re.M).group(1))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--binary")
    a = ap.parse_args()
    binary = a.binary or next(
        p for p in (f"{ROOT}/target/debug/jetkvm-metrics",) if os.path.exists(p)
    )
    work = tempfile.mkdtemp(prefix="jetkvm-soak-")
    hashed = device_hash("soak-pass")
    with open(f"{work}/kvm.json", "w") as f:
        f.write('{"localAuthMode": "password", "hashed_password": "%s", "local_auth_token": "s"}' % hashed)
    with open(f"{work}/c.toml", "w") as f:
        f.write(f'listen_addr = "127.0.0.1:0"\ndevice_config = "{work}/kvm.json"\ntoken_file = "{work}/t"\n'
                f'proc_root = "{ROOT}/tests/fixtures/proc"\nsys_root = "{ROOT}/tests/fixtures/sys"\nfilesystems = ["/"]\n')
    log = open(f"{work}/log", "w+")
    proc = subprocess.Popen([binary, "serve", "--config", f"{work}/c.toml", "--ports-file", f"{work}/ports"],
                            stderr=log, env={**os.environ, "RUST_LOG": "info"})
    try:
        addr = bound_addr(f"{work}/ports", proc)
        if not addr:
            print("soak: daemon did not start", file=sys.stderr)
            return 1
        auth = {"Authorization": "Basic " + base64.b64encode(b"admin:soak-pass").decode(), "Accept-Encoding": "gzip"}
        conns = [http.client.HTTPConnection(*addr, timeout=10) for _ in range(4)]
        errors = 0
        n = 0

        def scrape():
            nonlocal errors, n
            c = conns[n % len(conns)]
            try:
                c.request("GET", "/metrics", headers=auth)
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                conns[n % len(conns)] = http.client.HTTPConnection(*addr, timeout=10)
            n += 1

        warm = a.seconds / 5 if a.seconds >= 300 else a.seconds / 2
        start = time.monotonic()
        interval = 1.0 / a.rate
        next_at = start
        baseline = None
        samples = []
        while time.monotonic() - start < a.seconds:
            scrape()
            if baseline is None and time.monotonic() - start >= warm:
                baseline = (rss_kib(proc.pid), fds(proc.pid))
            if baseline and n % int(a.rate) == 0:
                samples.append((rss_kib(proc.pid), anon_kib(proc.pid), n))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        end = (rss_kib(proc.pid), fds(proc.pid))
        samples.append((end[0], anon_kib(proc.pid), n))
        took = time.monotonic() - start
        third = max(1, len(samples) // 3)
        first, last = samples[:third], samples[-third:]
        rss0, rss1 = min(s[0] for s in first), min(s[0] for s in last)
        anon0, anon1 = min(s[1] for s in first), min(s[1] for s in last)
        growth = (rss1 - rss0) * 100.0 / rss0
        anon_growth = (anon1 - anon0) * 100.0 / anon0
        span = max(1, last[len(last) // 2][2] - first[len(first) // 2][2])
        per_scrape = (anon1 - anon0) * 1024.0 / span
        peak = max(s[0] for s in samples)
        print(f"soak: {n} scrapes in {took:.0f}s ({n / took:.0f}/s), {errors} errors; {len(samples)} samples after warm-up")
        print(f"soak: RSS floor first third {rss0} KiB, last third {rss1} KiB ({growth:+.2f}%), peak {peak} KiB")
        print(f"soak: anonymous memory floor first third {anon0} KiB, last third {anon1} KiB ({anon_growth:+.2f}%, {per_scrape:+.1f} bytes a scrape over {span})")
        print(f"soak: open fds after warm-up {baseline[1]}, at end {end[1]}")
        long_run = a.seconds >= 300
        mem_ok = growth <= 1.0 and anon_growth <= 1.0 if long_run else per_scrape <= 16.0
        ok = errors == 0 and mem_ok and end[1] <= baseline[1] and proc.poll() is None
        print(f"soak: {'1 passed, 0 failed' if ok else '0 passed, 1 failed'}")
        return 0 if ok else 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
