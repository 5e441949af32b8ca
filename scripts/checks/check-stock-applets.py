#!/usr/bin/env python3
"""Fails if a script that runs on a stock JetKVM calls a command the stock
system lacks. The stock BusyBox has only the applets of the device's
configuration (board/stock/busybox-applets); the emulated board cannot
catch a miss, since Debian's static BusyBox runs any of its applets from
its shell, linked or not. So the scripts' commands are read here: each word
in a command's place must be a shell builtin, a function of the script,
one of the stock applets, the vendor's flasher (rk_ota) or our own daemon.
A command the script uses only where the stock system's settings never
lead is named in ONLY_ELSEWHERE with why.

usage: scripts/checks/check-stock-applets.py [SCRIPT...]   (default: the init script)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = [f"{ROOT}/buildroot/package/jetkvm-metrics/S95jetkvm-metrics"]

# BusyBox ash's builtins (and the POSIX special ones).
BUILTINS = set("""
. : [ [[ alias bg break cd chdir command continue echo eval exec exit export false fg getopts hash
help history jobs kill let local printf pwd read readonly return set shift source test times trap
true type ulimit umask unalias unset wait
""".split())

# Commands our scripts may run that are neither builtins nor applets.
OURS = {"rk_ota", "jetkvm-metrics"}

# Used only where a stock system's settings (stock.default) never lead.
ONLY_ELSEWHERE = {
    "logger": "only without LOG_FILE, which a stock system's settings set",
}

# Where a command starts: a line's start, after ; | & && || ( $( ` and the
# words that open a command list.
STARTS = re.compile(r"(?:^|[;|&({`]|\$\(|\b(?:then|do|else|elif|if|while|until|!)\s)\s*([^\s;|&()<>`'\"]+)(\)?)")

KEYWORDS = {"if", "then", "else", "elif", "fi", "while", "until", "for", "do", "done", "case", "in", "esac", "function", "*"}


def commands(text):
    """(line number, word) of each word in a command's place."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        code = re.sub(r"(^|\s)#.*$", "", line)
        code = re.sub(r"'[^']*'", "''", code)
        code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)
        code = re.sub(r"\$\(\(.*?\)\)", "0", code)
        for m in STARTS.finditer(code):
            word, pattern = m.group(1), m.group(2)
            if pattern or word in KEYWORDS or word.isdigit() or "=" in word:
                continue
            if word.startswith(("$", "-", "{", "}", ">", "<")):
                continue
            out.append((n, word))
    return out


def check(path, applets):
    with open(path) as f:
        text = f.read()
    functions = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\(\)\s*\{", text, re.M))
    problems = []
    for n, word in commands(text):
        name = os.path.basename(word)
        if word.startswith("/usr/bin/") and name in ("jetkvm-metrics",) or word.endswith("$DAEMON"):
            continue
        if name in BUILTINS or name in functions or name in applets or name in OURS or name in ONLY_ELSEWHERE:
            continue
        problems.append(f"{os.path.relpath(path, ROOT)}:{n}: {word!r} is not a stock applet or builtin")
    return problems


def main():
    with open(f"{ROOT}/board/stock/busybox-applets") as f:
        applets = {a.strip() for a in f if a.strip() and not a.startswith("#")}
    problems = []
    scripts = sys.argv[1:] or DEFAULT
    for path in scripts:
        problems += check(path, applets)
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{len(scripts)} script(s): only stock applets, builtins and our own commands")
    return 0


if __name__ == "__main__":
    sys.exit(main())
