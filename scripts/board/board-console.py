#!/usr/bin/env python3
"""Runs one shell command on the emulated board's serial console and prints
its output; exits with the command's status.

usage: scripts/board/board-console.py SOCKET COMMAND [--timeout SECONDS]

SOCKET is the QEMU console socket scripts/board/boot-board prints (a root shell
runs on the board's console). The command runs in that shell; its output is
framed by a unique marker so the prompt and the echoed command are not
mistaken for it.
"""

import re
import socket
import sys
import time
import uuid


def run(path, command, timeout):
    marker = uuid.uuid4().hex[:12]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(0.2)
    # Start on a fresh line, then frame the command's output.
    line = f"echo {marker}-B; {command}; echo {marker}-E-$?\n"
    s.sendall(b"\n" + line.encode())
    buf = b""
    end = time.monotonic() + timeout
    pattern = re.compile(rf"\n{marker}-B\r?\n(.*?){marker}-E-(\d+)".encode(), re.S)
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        except socket.timeout:
            pass
        m = pattern.search(buf)
        if m:
            out = m.group(1).replace(b"\r\n", b"\n")
            sys.stdout.write(out.decode(errors="replace"))
            return int(m.group(2))
    sys.stderr.write(f"board-console: no answer to {command!r} within {timeout}s\n")
    return 124


def main():
    args = sys.argv[1:]
    timeout = 30.0
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2 or args[0] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    return run(args[0], args[1], timeout)


if __name__ == "__main__":
    sys.exit(main())
