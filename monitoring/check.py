#!/usr/bin/python3
"""Static checks of monitoring/ that promtool alone does not do.

  check.py dashboard DASHBOARD.json [--promtool PATH]
      Every PromQL expression of the Grafana dashboard (panel targets and variable queries) is
      valid: Grafana variables are replaced by concrete values, each expression becomes a recording
      rule of a temporary rules file, and `promtool check rules` parses them all. Also: every query
      uses the ${datasource} variable and filters on $namespace and $job, and names only metrics
      the worker exports.

  check.py rules RULES.yml RUNBOOKS.md
      Every alert has a severity label, a for: duration, a summary, a description and a
      runbook_url whose anchor is a heading of RUNBOOKS.md; every metric named exists.

Exit status 0 when everything holds, 1 with a list of problems otherwise.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

# SPEC §7, plus what Prometheus itself adds for a target.
COUNTERS = {
    "dedup_commands_total", "dedup_idempotent_hits_total", "dedup_key_reuse_mismatch_total",
    "dedup_cross_scope_key_reuse_total", "dedup_dead_letters_total", "dedup_missing_key_total",
    "dedup_db_errors_total", "dedup_kafka_errors_total", "dedup_keys_expired_total",
}
GAUGES = {"dedup_consumer_lag", "dedup_build_info"}
HISTOGRAMS = {"dedup_batch_size", "dedup_db_transaction_seconds", "dedup_end_to_end_seconds"}
KNOWN_METRICS = (COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")})

# Concrete stand-ins for Grafana's variables: any syntactically valid value will do.
VARIABLES = {
    "namespace": "default",
    "job": "dedup-worker",
    "__rate_interval": "2m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
# A metric name of ours, not part of a recording-rule name (level:metric:operation).
METRIC = re.compile(r"(?<![\w:])(dedup_\w+)(?![\w:])")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)
QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$", re.S)


def substitute(expr, problems, where):
    def replace(match):
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            problems.append(f"{where}: unknown variable ${name}")
            return "unknown"
        return VARIABLES[name]

    return VARIABLE.sub(replace, expr)


def unknown_metrics(expr):
    return sorted({name for name in METRIC.findall(expr) if name not in KNOWN_METRICS})


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def promtool_check(exprs, promtool):
    """exprs: list of (where, expr). Returns promtool's complaints, or [] when all parse."""
    rules = [{"record": f"dashboard_check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "dashboard.rules.yml")
        with open(path, "w", encoding="utf-8") as out:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, out, sort_keys=False)
        run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if run.returncode == 0:
            return []
        # promtool names the failing rule by its index; translate back to the panel.
        output = run.stdout + run.stderr
        problems = []
        for match in re.finditer(r"rule (\d+)", output):
            index = int(match.group(1)) - 1
            if 0 <= index < len(exprs):
                problems.append(f"{exprs[index][0]}: invalid PromQL: {exprs[index][1]}")
        problems.append("promtool check rules failed:\n" + output.strip())
        return problems


def check_dashboard(path, promtool):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    problems, exprs = [], []

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for needed in ("datasource", "namespace", "job"):
        if needed not in variables:
            problems.append(f"templating: no ${needed} variable")
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.append("templating: $datasource must be a data source variable")

    for name, variable in variables.items():
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        where = f"variable ${name}"
        if variable.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource must be ${{datasource}}")
        match = LABEL_VALUES.match(query) or QUERY_RESULT.match(query)
        if match:
            exprs.append((where, substitute(match.group(1), problems, where)))

    for panel in walk_panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"panel '{title}': no query")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel '{title}': datasource must be ${{datasource}}")
        for target in targets:
            where = f"panel '{title}' query {target.get('refId', '?')}"
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"{where}: empty expression")
                continue
            if target.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: datasource must be ${{datasource}}")
            for variable in ("$namespace", "$job"):
                if variable not in expr:
                    problems.append(f"{where}: does not filter on {variable}")
            for name in unknown_metrics(expr):
                problems.append(f"{where}: unknown metric {name}")
            exprs.append((where, substitute(expr, problems, where)))

    if not exprs:
        problems.append("no PromQL expression found")
    else:
        problems += promtool_check(exprs, promtool)
    return problems, len(exprs)


def github_anchor(heading):
    """The anchor GitHub generates for a Markdown heading."""
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def check_rules(rules_path, runbooks_path):
    with open(rules_path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    with open(runbooks_path, encoding="utf-8") as f:
        anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", f.read(), re.M)}
    problems, alerts = [], 0
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            for metric in unknown_metrics(rule.get("expr", "")):
                problems.append(f"{name}: unknown metric {metric}")
            if "alert" not in rule:
                continue
            alerts += 1
            if "for" not in rule:
                problems.append(f"{name}: no for: (write for: 0m to fire at once)")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: severity label must be critical, warning or info")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not str(annotations.get(key, "")).strip():
                    problems.append(f"{name}: no {key} annotation")
            url = annotations.get("runbook_url", "")
            if "#" in url:
                anchor = url.split("#", 1)[1]
                if not url.split("#", 1)[0].endswith("docs/runbooks.md"):
                    problems.append(f"{name}: runbook_url does not point into docs/runbooks.md")
                if anchor not in anchors:
                    problems.append(f"{name}: runbook anchor #{anchor} is not a heading of {runbooks_path}")
            elif url:
                problems.append(f"{name}: runbook_url has no #anchor")
    if alerts == 0:
        problems.append("no alert found")
    return problems, alerts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dashboard = sub.add_parser("dashboard")
    dashboard.add_argument("dashboard")
    dashboard.add_argument("--promtool", default="/usr/bin/promtool")
    rules = sub.add_parser("rules")
    rules.add_argument("rules")
    rules.add_argument("runbooks")
    args = parser.parse_args()

    if args.command == "dashboard":
        problems, count = check_dashboard(args.dashboard, args.promtool)
        what = f"{count} PromQL expressions in {args.dashboard}"
    else:
        problems, count = check_rules(args.rules, args.runbooks)
        what = f"{count} alerts in {args.rules}"
    if problems:
        print(f"FAILED: {what}", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"OK: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
