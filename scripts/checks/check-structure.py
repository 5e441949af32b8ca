#!/usr/bin/env python3
"""Fails on an import circle between the files of src/ (function length is
clippy's too_many_lines, at 70: clippy.toml).

A file imports another when its code names an item of the other's module:
through `crate::`, `super::`, `self::` or a child module's name. Declaring a
child (`mod x;`) is not an import; unit tests (from `#[cfg(test)]` on) are
left out, since they may reach anywhere. Prints each circle, one per line.
Usage: scripts/checks/check-structure.py [SRC_DIR]   (default: the repository's src/)
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """The file's code without comments, literals and unit tests."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    out, i, n = [], 0, len(text)
    while i < n:
        two = text[i:i + 2]
        if two == "//":
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif two == "/*":
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            raw = re.match(r"b?r(#*)\"", text[i:]) if not re.match(r"\w", text[i - 1:i]) else None
            char = re.match(r"'(?:\\.[^']*|[^\\'])'", text[i:])
            if raw:
                end = text.find('"' + raw.group(1), i + raw.end())
                i = n if end < 0 else end + 1 + len(raw.group(1))
                out.append('""')
            elif text[i] == '"':
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                i = j + 1
                out.append('""')
            elif char:
                i += char.end()
                out.append("' '")
            else:
                out.append(text[i])
                i += 1
    return "".join(out)


def module_of(src, path):
    """The module path of a file: src/a/b.rs and src/a/b/mod.rs are [a, b]."""
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def expand_use(tree):
    """`a::{b, c::{d, e}}` into [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    open_at = tree.find("{")
    if open_at < 0:
        return [tree]
    head, body = tree[:open_at], tree[open_at + 1:tree.rfind("}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [p for item in items if item for p in expand_use(head + item)]


def paths_in(code, children):
    """Every path that may name another module, as written."""
    found = []
    for tree in re.findall(r"\buse\s+([^;]+);", code):
        found.extend(expand_use(tree))
    code = re.sub(r"\buse\s+[^;]+;", "", code)
    roots = ["crate", "super", "self"] + sorted(children)
    found += re.findall(r"\b(?:%s)(?:::%s)+" % ("|".join(roots), IDENT), code)
    return found


def resolve(modules, here, path, children):
    """The module (a key of `modules`) a path lands in, or None."""
    parts = [p for p in path.split("::") if p and p != "*"]
    if not parts:
        return None
    head = parts[0]
    if head == "crate":
        base, parts = [], parts[1:]
    elif head in ("super", "self"):
        base = list(here)
        while parts and parts[0] in ("super", "self"):
            if parts.pop(0) == "super":
                base = base[:-1]
    elif head in children:
        base = list(here)
    else:
        return None
    for n in range(len(parts), -1, -1):
        key = tuple(base + parts[:n])
        if key in modules:
            return key
    return None


def graph(src):
    modules, code = {}, {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs") and name != "main.rs":
                path = os.path.join(dirpath, name)
                key = tuple(module_of(src, path))
                modules[key] = path
                with open(path, encoding="utf-8") as f:
                    code[key] = strip(f.read())
    edges = {}
    for key, text in code.items():
        children = set(re.findall(r"\bmod\s+(%s)\s*;" % IDENT, text))
        targets = set()
        for path in paths_in(text, children):
            target = resolve(modules, list(key), path, children)
            if target is not None and target != key:
                targets.add(target)
        edges[key] = targets
    return modules, edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "src")
    modules, edges = graph(src)
    found = circles(edges)
    for comp in found:
        names = [os.path.relpath(modules[m], src) for m in comp]
        inside = set(comp)
        links = [
            "%s -> %s" % (os.path.relpath(modules[a], src), os.path.relpath(modules[b], src))
            for a in comp for b in sorted(edges[a]) if b in inside
        ]
        print("import circle: %s (%s)" % (", ".join(names), "; ".join(links)))
    if not found:
        print("%d files: no import circle" % len(modules))
    return 1 if found else 0

if __name__ == "__main__":
    sys.exit(main())
