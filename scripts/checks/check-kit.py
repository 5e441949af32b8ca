#!/usr/bin/env python3
"""Checks the operator's kit in docs/kit against what Grafana and Prometheus
require and against the daemon it describes:

- dashboard.json: valid JSON, a schema version, unique panel ids, panels
  on the 24-column grid, a `datasource` variable of type datasource and an
  `instance` variable, every panel and target on `${datasource}` (no
  hard-coded data source uid), and no metric name that the daemon does not
  export nor the kit's rules record;
- rules.yml: every alert has `for:`, a severity (critical, warning, info),
  a summary, a description and a runbook_url to its own section of
  runbook.md; runbook.md has a section for each alert and no other;
  rules.test.yml fires each alert at least once; every metric name in the
  rules is exported or recorded;
- examples/*.json: file_sd target lists;
- every Prometheus configuration in README.md, docs/*.md, docs/kit/README.md
  and examples/*.yml: `promtool check config --syntax-only`.

The names the daemon exports are read from its source (the metric names it
writes) and from the golden exposition (the device app's families it
re-exposes). promtool itself checks the rules and their tests in
scripts/test.

usage: scripts/checks/check-kit.py [KIT_DIR]
       scripts/checks/check-kit.py --selectors [INSTANCE_REGEX]   (print every selector)
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# PromQL words that look like names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "time", "rate", "irate", "increase", "delta",
    "idelta", "changes", "resets", "abs", "predict_linear", "min_over_time", "max_over_time",
    "avg_over_time", "sum_over_time", "count_over_time", "last_over_time", "absent",
    "absent_over_time", "label_values", "label_replace", "vector", "scalar", "clamp_min",
    "clamp_max", "round", "deriv", "histogram_quantile", "inf", "nan",
}


def without_ranges_and_groupings(expr):
    """`expr` without range durations and `by (...)`-like label lists."""
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr):
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)                    # label matchers
    expr = without_ranges_and_groupings(expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)                  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def selectors(expr):
    """The vector selectors of a PromQL expression: a name with its
    matchers, or matchers alone."""
    expr = without_ranges_and_groupings(expr)
    found = []
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)?\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or (not name and not matchers) or name in PROMQL_WORDS:
            continue
        if name and re.fullmatch(r"\d+[smhdwy]", name):
            continue
        found.append((name or "") + (matchers or ""))
    return found


def kit_selectors(kit, instance):
    """Every selector of the rules and the dashboard, the dashboard's
    `$instance` made `instance=~INSTANCE`."""
    rules = yaml.safe_load((kit / "rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    d = json.loads((kit / "dashboard.json").read_text())
    panels = list(d["panels"]) + [q for p in d["panels"] for q in p.get("panels", [])]
    exprs += [t["expr"].replace('instance="$instance"', f'instance=~"{instance}"')
              for p in panels for t in p.get("targets", [])]
    out = []
    for e in exprs:
        out += [s for s in selectors(e) if s not in out]
    return sorted(set(out))


def exported_names():
    names = {"up"}
    for f in (ROOT / "src").rglob("*.rs"):
        for m in re.finditer(r'"((?:jetkvm|process)_[a-z0-9_]*[a-z0-9])"', f.read_text()):
            names.add(m.group(1))
    golden = (ROOT / "tests/fixtures/metrics.golden").read_text()
    for m in re.finditer(r"^# TYPE (\S+) (\S+)", golden, re.M):
        names.add(m.group(1))
        if m.group(2) in ("histogram", "summary"):
            names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
    return names


def anchor(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


class Checker:
    def __init__(self):
        self.problems = []

    def fail(self, what):
        self.problems.append(what)

    def dashboard(self, path, known):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return self.fail(f"{path.name}: not JSON: {e}")
        if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
            self.fail(f"{path.name}: schemaVersion missing or older than 36")
        if not d.get("title"):
            self.fail(f"{path.name}: no title")
        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        ds = variables.get("datasource")
        if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            self.fail(f"{path.name}: no `datasource` variable of type datasource for prometheus")
        if "instance" not in variables:
            self.fail(f"{path.name}: no `instance` variable")
        ref = {"type": "prometheus", "uid": "${datasource}"}

        def walk(node, where):
            # Every data source reference anywhere is the variable.
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "datasource" and v != ref and not (where == "templating" and v == "prometheus"):
                        self.fail(f"{path.name}: {where}: data source {v!r} is not ${{datasource}}")
                    walk(v, where)
            elif isinstance(node, list):
                for v in node:
                    walk(v, where)

        for v in variables.values():
            if v.get("type") == "query":
                walk(v, "templating")
                # Grafana's label_values(SELECTOR, LABEL): the selector's names.
                selector = re.sub(r"label_values\(\s*(.*?)\s*,\s*\w+\s*\)", r"\1", v.get("definition", ""))
                for name in metric_names(selector):
                    if name not in known:
                        self.fail(f"{path.name}: variable {v['name']}: {name} is not exported")
        panels = list(d.get("panels", []))
        for p in d.get("panels", []):
            panels.extend(p.get("panels", []))
        ids = [p.get("id") for p in panels]
        for i in {i for i in ids if ids.count(i) > 1 or not isinstance(i, int)}:
            self.fail(f"{path.name}: panel id {i!r} missing or used twice")
        for p in panels:
            title = p.get("title", "?")
            g = p.get("gridPos", {})
            if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
                self.fail(f"{path.name}: {title}: gridPos {g} is not on the 24-column grid")
            if p.get("type") == "row":
                continue
            walk(p, title)
            if p.get("datasource") != ref:
                self.fail(f"{path.name}: {title}: panel data source is not ${{datasource}}")
            targets = p.get("targets") or []
            if not targets:
                self.fail(f"{path.name}: {title}: no targets")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                self.fail(f"{path.name}: {title}: refIds repeat")
            for t in targets:
                if t.get("datasource") != ref:
                    self.fail(f"{path.name}: {title}: target {t.get('refId')} data source is not ${{datasource}}")
                if not t.get("expr"):
                    self.fail(f"{path.name}: {title}: target {t.get('refId')} has no expr")
                for name in metric_names(t.get("expr", "")):
                    if name not in known:
                        self.fail(f"{path.name}: {title}: {name} is not exported")

    def rules(self, kit, known):
        rules = yaml.safe_load((kit / "rules.yml").read_text())
        tests = yaml.safe_load((kit / "rules.test.yml").read_text())
        runbook = (kit / "runbook.md").read_text()
        sections = {anchor(h): h for h in re.findall(r"^## (.+)$", runbook, re.M)}
        alerts = []
        for group in rules["groups"]:
            for r in group["rules"]:
                for name in metric_names(r["expr"]):
                    if name not in known:
                        self.fail(f"rules.yml: {r.get('alert') or r.get('record')}: {name} is not exported")
                if "alert" not in r:
                    continue
                a = r["alert"]
                alerts.append(a)
                if "for" not in r:
                    self.fail(f"rules.yml: {a}: no `for:`")
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    self.fail(f"rules.yml: {a}: severity is not critical, warning or info")
                ann = r.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not ann.get(key):
                        self.fail(f"rules.yml: {a}: no {key}")
                url = ann.get("runbook_url", "")
                if not url.endswith(f"runbook.md#{anchor(a)}") or anchor(a) not in sections:
                    self.fail(f"rules.yml: {a}: runbook_url {url!r} does not lead to a section `## {a}`")
        for s, heading in sections.items():
            if heading not in alerts:
                self.fail(f"runbook.md: section `## {heading}` has no alert")
        fired = {t["alertname"] for group in tests["tests"] for t in group.get("alert_rule_test", [])
                 if t.get("exp_alerts")}
        for a in alerts:
            if a not in fired:
                self.fail(f"rules.test.yml: {a} is never tested firing")

    def configs(self, kit):
        """Every Prometheus configuration shown in README.md, docs/kit/README.md
        and docs/*.md, and the examples, through `promtool check config
        --syntax-only` (they name files that exist only on the reader's
        Prometheus). A fragment of jobs is checked inside `scrape_configs:`."""
        blocks = []
        for doc in (ROOT / "README.md", kit / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
            for n, b in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
                if "job_name:" not in b and "scrape_configs:" not in b:
                    continue
                if "scrape_configs:" not in b:
                    b = "scrape_configs:\n" + textwrap.indent(textwrap.dedent(b), "  ")
                blocks.append((f"{doc.relative_to(ROOT)} block {n + 1}", b))
        blocks += [(f"examples/{f.name}", f.read_text()) for f in sorted((kit / "examples").glob("*.yml"))]
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in blocks:
                f = pathlib.Path(tmp) / "prometheus.yml"
                f.write_text(text)
                r = subprocess.run(["promtool", "check", "config", "--syntax-only", str(f)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    self.fail(f"{name}: promtool: {(r.stdout + r.stderr).strip()}")
        return len(blocks)

    def targets(self, kit):
        for f in sorted((kit / "examples").glob("*.json")):
            try:
                groups = json.loads(f.read_text())
                ok = isinstance(groups, list) and all(
                    isinstance(g.get("targets"), list) and all(isinstance(t, str) for t in g["targets"])
                    and all(isinstance(v, str) for v in g.get("labels", {}).values()) for g in groups)
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                self.fail(f"examples/{f.name}: not a file_sd target list")


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        return 0
    if sys.argv[1:2] == ["--selectors"]:
        # For the board's test: what a real Prometheus must have series for.
        print("\n".join(kit_selectors(ROOT / "docs/kit", sys.argv[2] if len(sys.argv) > 2 else ".+")))
        return 0
    kit = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/kit"
    rules = yaml.safe_load((kit / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exported_names() | recorded
    c = Checker()
    c.dashboard(kit / "dashboard.json", known)
    c.rules(kit, known)
    c.targets(kit)
    configs = c.configs(kit)
    for p in c.problems:
        print(p)
    if not c.problems:
        print(f"{kit}: dashboard, rules, runbook and examples consistent ({len(known)} names known); "
              f"{configs} Prometheus configurations valid")
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(main())
