#!/usr/bin/python3
"""Chart test for helm/dedup-worker, without Helm.

Builds tests/helm/render (text/template + sprig + Helm's functions and built-in objects, see
helm/README.md), renders the chart with its defaults and with every tests/helm/values-*.yaml, and
checks the manifests as parsed YAML: labels and selectors agree, every probe and the Service hit
the metrics port the worker listens on, the grace period outlasts the drain, credentials only ever
come from Secrets, the migration Job is a pre-install/pre-upgrade hook, and the PrometheusRule and
dashboard ConfigMap carry exactly the monitoring/ files. values.yaml must satisfy
values.schema.json; every tests/helm/bad/*.yaml must be rejected by the schema (both by the
renderer, as Helm would, and by python3-jsonschema); every tests/helm/fail/*.yaml must pass the
schema and then fail rendering with its "# expect:" message. yamllint checks the hand-written YAML.

    tests/helm/test_chart.py [--root REPO] [--build-dir DIR]

Prints one line per check, then "N passed, N failed"; exits 1 when anything failed.
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

from checks import Results, expect, fail

HERE = Path(__file__).resolve().parent
CHART = Path("helm/dedup-worker")
RULES_FILE = Path("monitoring/rules/dedup-worker.rules.yml")
DASHBOARD_FILE = Path("monitoring/dashboards/dedup-worker.json")
# Every DEDUP_* variable the chart may set must be a real flag of "dedup-worker run" (SPEC §6),
# or a DEDUP_KAFKA_<PROPERTY> librdkafka property (docs/contract.md).
WORKER_FLAGS = {
    "brokers", "group", "commands-topic", "results-topic", "dlq-topic", "db", "db-schema", "config",
    "key-ttl", "default-scope", "metrics-addr", "log-level", "log-format", "drain-timeout", "db-connections",
    "commit-interval",
}
KAFKA_ENV_PREFIX = "DEDUP_KAFKA_"
# The librdkafka properties the chart may set from the environment (Secret-backed credentials).
KAFKA_ENV_PROPERTIES = {"sasl.username", "sasl.password"}
SENSITIVE_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|USERNAME|DSN|^DEDUP_DB$)")
SENSITIVE_KAFKA_KEY = re.compile(r"(password|secret|sasl\.username|\.pem$|jaas|oauthbearer)")
IMAGE_UID = 10001  # the Dockerfile's USER


# --------------------------------------------------------------------------------------------
# Renderer


class Renderer:
    def __init__(self, root, build_dir):
        self.root = root
        self.binary = build_dir / "render"
        env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOFLAGS="",
                   GOCACHE=str(build_dir / "gocache"))
        proc = subprocess.run(["go", "build", "-o", str(self.binary), "."], cwd=HERE / "render",
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError("go build of tests/helm/render failed:\n" + proc.stderr)

    def run(self, values_files=(), extra=()):
        cmd = [str(self.binary), "--chart", str(CHART)]
        for f in values_files:
            cmd += ["-f", str(f)]
        cmd += list(extra)
        return subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, check=False)

    def render(self, values_files=(), extra=()):
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as notes:
            proc = self.run(values_files, list(extra) + ["--notes-out", notes.name])
            if proc.returncode != 0:
                fail(f"render failed (exit {proc.returncode}): {proc.stderr.strip()}")
            return proc.stdout, notes.read()


def parse_manifests(text):
    """helm template output → list of (source, doc). Every document must be a YAML mapping."""
    docs = []
    expect(text.startswith("---\n# Source: "), "output does not start like helm template's")
    for chunk in text.split("---\n# Source: ")[1:]:
        source, _, body = chunk.partition("\n")
        doc = yaml.safe_load(body)
        expect(isinstance(doc, dict), f"{source}: document is not a mapping")
        docs.append((source, doc))
    return docs


# --------------------------------------------------------------------------------------------
# Values: Helm's coalescing (user maps merge into defaults, a user null deletes the default).


def coalesce(defaults, user):
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def duration_seconds(text):
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d)", text)
    expect(parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * factor[u] for n, u in parts)


def expected_message(path):
    first = Path(path).read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"#\s*expect:\s*(.+)", first)
    expect(m, f"{path}: first line must be '# expect: <message>'")
    return m.group(1).strip()


# --------------------------------------------------------------------------------------------
# Manifest checks, shared by every scenario.


class Scenario:
    def __init__(self, name, values, docs, notes):
        self.name = name
        self.values = values
        self.docs = docs
        self.notes = notes

    def of_kind(self, kind):
        return [d for _, d in self.docs if d["kind"] == kind]

    def one(self, kind, component=None):
        found = [d for d in self.of_kind(kind)
                 if component is None
                 or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
        expect(len(found) == 1, f"expected one {kind} ({component}), found {len(found)}")
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def worker(self):
        return self.deployment["spec"]["template"]["spec"]["containers"][0]

    def env(self, container):
        return {e["name"]: e for e in container.get("env", [])}


def check_common_metadata(s):
    for source, d in s.docs:
        for field in ("apiVersion", "kind", "metadata"):
            expect(field in d, f"{source}: no {field}")
        meta = d["metadata"]
        expect(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63,
               f"{source}: bad name {meta['name']!r}")
        labels = meta.get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "helm.sh/chart", "app.kubernetes.io/version"):
            expect(key in labels, f"{source}: label {key} missing")
        expect(all(isinstance(v, str) for v in labels.values()), f"{source}: non-string label value")
    names = [(d["kind"], d["metadata"]["name"]) for _, d in s.docs]
    expect(len(names) == len(set(names)), f"duplicate kind/name: {names}")


def check_selectors(s):
    dep = s.deployment
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    expect(selector.items() <= pod_labels.items(), "Deployment selector does not match its pod labels")
    expect(set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"},
           f"selector must be the stable name/instance pair, got {selector}")
    svc = s.one("Service")
    expect(svc["spec"]["selector"] == selector, "Service selector differs from the Deployment's")
    for pdb in s.of_kind("PodDisruptionBudget"):
        expect(pdb["spec"]["selector"]["matchLabels"] == selector, "PDB selector differs")
    for sm in s.of_kind("ServiceMonitor"):
        sm_sel = sm["spec"]["selector"]["matchLabels"]
        expect(sm_sel.items() <= svc["metadata"]["labels"].items(), "ServiceMonitor does not select the Service")
        ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            expect(ep["port"] in ports, f"ServiceMonitor port {ep['port']} not on the Service")
            expect(ep["path"] == "/metrics", "ServiceMonitor path")
    # The migration Job's pods must not be selected by the Deployment's ReplicaSets' selector
    # picking up foreign pods is harmless, but the PDB counting them is not: they are labelled apart.
    for job in s.of_kind("Job"):
        job_labels = job["spec"]["template"]["metadata"]["labels"]
        expect(job_labels.get("app.kubernetes.io/component") == "migrate", "migrate pods need their component label")


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    expect(port in named, f"named port {port!r} not declared by the container")
    return named[port]


def check_ports_and_probes(s):
    c = s.worker
    metrics_port = s.values["metrics"]["port"]
    addr = s.env(c)["DEDUP_METRICS_ADDR"]["value"]
    expect(addr == f"0.0.0.0:{metrics_port}", f"DEDUP_METRICS_ADDR {addr} != metrics.port {metrics_port}")
    expect(resolve_port(c, "metrics") == metrics_port, "container port 'metrics' != metrics.port")
    paths = {}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe not in c:
            expect(probe == "startupProbe", f"{probe} missing")
            continue
        get = c[probe]["httpGet"]
        expect(resolve_port(c, get["port"]) == metrics_port, f"{probe} port is not the metrics port")
        paths[probe] = get["path"]
    expect(paths["livenessProbe"] == "/healthz", "liveness must probe /healthz")
    expect(paths["readinessProbe"] == "/readyz", "readiness must probe /readyz")
    svc = s.one("Service")
    (port,) = svc["spec"]["ports"]
    expect(resolve_port(c, port["targetPort"]) == metrics_port, "Service targetPort is not the metrics port")
    expect(port["port"] == s.values["metrics"]["service"]["port"], "Service port != metrics.service.port")


def check_grace_period(s):
    spec = s.deployment["spec"]["template"]["spec"]
    drain = s.env(s.worker)["DEDUP_DRAIN_TIMEOUT"]["value"]
    expect(drain == s.values["worker"]["drainTimeout"], "DEDUP_DRAIN_TIMEOUT != worker.drainTimeout")
    grace = spec["terminationGracePeriodSeconds"]
    expect(isinstance(grace, int) and grace > duration_seconds(drain),
           f"terminationGracePeriodSeconds {grace} does not exceed drain timeout {drain}")


def check_db_connections(s):
    lanes = s.env(s.worker)["DEDUP_DB_CONNECTIONS"]["value"]
    expect(lanes == str(s.values["worker"]["dbConnections"]), "DEDUP_DB_CONNECTIONS != worker.dbConnections")


def check_commit_interval(s):
    interval = s.env(s.worker)["DEDUP_COMMIT_INTERVAL"]["value"]
    expect(interval == s.values["worker"]["commitInterval"], "DEDUP_COMMIT_INTERVAL != worker.commitInterval")


def check_security(s):
    for kind in ("Deployment", "Job"):
        for d in s.of_kind(kind):
            pod = d["spec"]["template"]["spec"]
            expect(pod["securityContext"].get("runAsNonRoot") is True, f"{kind}: runAsNonRoot")
            expect(pod["securityContext"].get("runAsUser") == IMAGE_UID, f"{kind}: runAsUser != image uid")
            expect(pod.get("automountServiceAccountToken") is False, f"{kind}: token mounted")
            for c in pod["containers"]:
                sc = c["securityContext"]
                expect(sc.get("readOnlyRootFilesystem") is True, f"{kind}: readOnlyRootFilesystem")
                expect(sc.get("allowPrivilegeEscalation") is False, f"{kind}: allowPrivilegeEscalation")
                expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{kind}: capabilities not dropped")
                mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
                expect("/tmp" in mounts, f"{kind}: /tmp is not a writable volume")
                expect("resources" in c and c["resources"].get("requests"), f"{kind}: no resource requests")


def kafka_args(container):
    args = container["args"]
    out = {}
    for i, a in enumerate(args):
        if a == "-X":
            key, _, value = args[i + 1].partition("=")
            out[key] = value
    return out


def kafka_env_property(name):
    """DEDUP_KAFKA_SASL_PASSWORD → sasl.password, as lib/src/kafka/handles.cpp settings_from_environment."""
    return name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")


def check_no_plaintext_secrets(s):
    expect(not s.of_kind("Secret"), "the chart must not render Secrets (it only references existing ones)")
    for kind in ("Deployment", "Job"):
        for d in s.of_kind(kind):
            pod = d["spec"]["template"]["spec"]
            secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
            for c in pod["containers"]:
                env = s.env(c)
                for name, e in env.items():
                    if SENSITIVE_ENV.search(name):
                        expect("value" not in e and "secretKeyRef" in e.get("valueFrom", {}),
                               f"{kind}: env {name} is not taken from a Secret")
                # Credentials never go on the command line, not even as $(VAR): the kubelet expands
                # those into argv, readable by anyone who can run ps or read /proc/<pid>/cmdline.
                for a in c.get("args", []) + c.get("command", []):
                    expect("sasl.password" not in a and "sasl.username" not in a,
                           f"{kind}: argument {a!r} carries a SASL credential")
                    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                        expect("secretKeyRef" not in env.get(var, {}).get("valueFrom", {}),
                               f"{kind}: argument {a!r} expands the Secret-backed {var}")
                for key, value in kafka_args(c).items():
                    expect(not SENSITIVE_KAFKA_KEY.search(key), f"{kind}: -X {key} is a secret on the command line")
                    if key.endswith(".location"):
                        mount = next((m for m in c["volumeMounts"] if value.startswith(m["mountPath"] + "/")), None)
                        expect(mount and mount["name"] in secret_volumes,
                               f"{kind}: -X {key}={value} is not inside a mounted Secret")
    db = s.env(s.worker)["DEDUP_DB"]["valueFrom"]["secretKeyRef"]
    expect(db == {"name": s.values["database"]["existingSecret"], "key": s.values["database"]["dsnKey"]},
           f"DEDUP_DB secretKeyRef {db} does not follow database.*")


def check_worker_contract(s):
    c = s.worker
    expect(c["args"][0] == "run", "worker must run 'dedup-worker run'")
    v = s.values
    env = s.env(c)
    for name in env:
        if name.startswith(KAFKA_ENV_PREFIX):
            prop = kafka_env_property(name)
            expect(prop in KAFKA_ENV_PROPERTIES, f"{name} maps to librdkafka {prop!r}, not a SASL credential")
        elif name.startswith("DEDUP_"):
            flag = name[len("DEDUP_"):].lower().replace("_", "-")
            expect(flag in WORKER_FLAGS, f"{name} is not a dedup-worker flag")
    plain = {k: e.get("value") for k, e in env.items()}
    expect(plain["DEDUP_BROKERS"] == v["kafka"]["brokers"], "DEDUP_BROKERS")
    expect(plain["DEDUP_GROUP"] == v["kafka"]["group"], "DEDUP_GROUP")
    expect(plain["DEDUP_COMMANDS_TOPIC"] == v["kafka"]["commandsTopic"], "DEDUP_COMMANDS_TOPIC")
    expect(plain["DEDUP_KEY_TTL"] == v["worker"]["keyTtl"], "DEDUP_KEY_TTL")
    expect(plain["DEDUP_DB_SCHEMA"] == v["database"]["schema"], "DEDUP_DB_SCHEMA")
    # The config file: ConfigMap content == commandConfig, mounted where DEDUP_CONFIG points.
    cm_name = s.deployment["metadata"]["name"]
    cm = next(d for d in s.of_kind("ConfigMap") if d["metadata"]["name"] == cm_name)
    expect(yaml.safe_load(cm["data"]["config.yaml"]) == v["commandConfig"], "ConfigMap config.yaml != commandConfig")
    config_path = Path(plain["DEDUP_CONFIG"])
    pod = s.deployment["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(vol for vol in pod["volumes"] if vol["name"] == mount["name"])
    expect(volume["configMap"]["name"] == cm_name and config_path.name == "config.yaml",
           "DEDUP_CONFIG does not point at the mounted ConfigMap key")
    expect("checksum/config" in s.deployment["spec"]["template"]["metadata"]["annotations"],
           "pods do not roll on config changes")


def check_migrate_hook(s):
    if not s.values["migration"]["enabled"]:
        expect(not s.of_kind("Job"), "migration disabled but a Job rendered")
        return
    job = s.one("Job", "migrate")
    ann = job["metadata"]["annotations"]
    expect(set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}, "hook events")
    expect("before-hook-creation" in ann["helm.sh/hook-delete-policy"].split(","), "hook-delete-policy")
    pod = job["spec"]["template"]["spec"]
    expect(pod["restartPolicy"] == "Never", "migrate restartPolicy")
    (c,) = pod["containers"]
    expect(c["args"] == ["migrate"], "migrate Job must run 'dedup-worker migrate'")
    expect(c["image"] == s.worker["image"], "migrate Job runs another image than the worker")
    worker_env, job_env = s.env(s.worker), s.env(c)
    for name in ("DEDUP_DB", "DEDUP_DB_SCHEMA"):
        expect(job_env[name] == worker_env[name], f"migrate {name} differs from the worker's")
    # Hooks run before the release's resources exist: no chart ConfigMap or ServiceAccount.
    chart_sa = s.of_kind("ServiceAccount")
    expect(not chart_sa or pod.get("serviceAccountName") != chart_sa[0]["metadata"]["name"],
           "migrate Job uses the chart's ServiceAccount, which does not exist yet at pre-install")
    expect(not any("configMap" in vol for vol in pod.get("volumes", [])), "migrate Job mounts a chart ConfigMap")


def check_scaling(s):
    v = s.values
    partitions = v["kafka"]["partitions"]
    dep = s.deployment
    so, hpa = s.of_kind("ScaledObject"), s.of_kind("HorizontalPodAutoscaler")
    if not v["autoscaling"]["enabled"]:
        expect(not so and not hpa, "autoscaler rendered while autoscaling is off")
        expect(dep["spec"]["replicas"] == v["replicaCount"] <= partitions, "replicas")
        return
    expect("replicas" not in dep["spec"], "Deployment sets replicas while an autoscaler owns them")
    target = dep["metadata"]["name"]
    if v["autoscaling"]["mode"] == "keda":
        expect(len(so) == 1 and not hpa, "KEDA mode renders exactly one ScaledObject")
        spec = so[0]["spec"]
        expect(spec["scaleTargetRef"]["name"] == target, "ScaledObject target")
        expect(spec["minReplicaCount"] == v["autoscaling"]["minReplicas"], "minReplicaCount")
        expect(spec["maxReplicaCount"] == v["autoscaling"]["maxReplicas"] <= partitions, "maxReplicaCount")
        (trigger,) = spec["triggers"]
        md = trigger["metadata"]
        expect(trigger["type"] == "kafka", "trigger type")
        env = {k: e.get("value") for k, e in s.env(s.worker).items()}
        expect(md["topic"] == env["DEDUP_COMMANDS_TOPIC"], "trigger topic != commands topic")
        expect(md["consumerGroup"] == env["DEDUP_GROUP"], "trigger consumerGroup != worker group")
        expect(md["bootstrapServers"] == env["DEDUP_BROKERS"], "trigger bootstrapServers != brokers")
        expect(all(isinstance(x, str) for x in md.values()), "KEDA trigger metadata values must be strings")
        expect(md["lagThreshold"] == str(v["autoscaling"]["keda"]["lagThreshold"]), "lagThreshold")
        if "authenticationRef" in trigger:
            ta = next(d for d in s.of_kind("TriggerAuthentication")
                      if d["metadata"]["name"] == trigger["authenticationRef"]["name"])
            refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
            sasl, tls = v["kafka"]["sasl"], v["kafka"]["tls"]
            if sasl["enabled"]:
                expect(refs["password"] == (sasl["existingSecret"], sasl["passwordKey"]), "KEDA password ref")
                expect(md["sasl"] in ("plaintext", "scram_sha256", "scram_sha512"), "KEDA sasl mode")
            if tls["enabled"] and tls["existingSecret"]:
                expect(refs["ca"] == (tls["existingSecret"], tls["caKey"]), "KEDA ca ref")
                expect(md["tls"] == "enable", "KEDA tls")
        else:
            expect(not v["kafka"]["sasl"]["enabled"], "SASL on but KEDA has no TriggerAuthentication")
    else:
        expect(len(hpa) == 1 and not so, "HPA mode renders exactly one HorizontalPodAutoscaler")
        spec = hpa[0]["spec"]
        expect(spec["scaleTargetRef"]["name"] == target, "HPA target")
        expect(1 <= spec["minReplicas"] <= spec["maxReplicas"] <= partitions, "HPA replica bounds")


def check_monitoring(s, root):
    m = s.values["metrics"]
    rules = s.of_kind("PrometheusRule")
    dashboards = [d for d in s.of_kind("ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    expect(bool(rules) == m["prometheusRule"]["enabled"], "PrometheusRule presence")
    expect(bool(s.of_kind("ServiceMonitor")) == m["serviceMonitor"]["enabled"], "ServiceMonitor presence")
    expect(bool(dashboards) == m["dashboard"]["enabled"], "dashboard ConfigMap presence")
    if rules:
        want = load_yaml(root / RULES_FILE)
        expect(rules[0]["spec"] == want, f"PrometheusRule spec differs from {RULES_FILE}")
        expect(rules[0]["metadata"]["labels"].items() >= m["prometheusRule"]["labels"].items(), "rule labels")
    if dashboards:
        (cm,) = dashboards
        want = (root / DASHBOARD_FILE).read_text(encoding="utf-8")
        expect(cm["data"] == {"dedup-worker.json": want}, f"dashboard ConfigMap data differs from {DASHBOARD_FILE}")
        json.loads(cm["data"]["dedup-worker.json"])
        expect(cm["metadata"]["namespace"] == (m["dashboard"]["namespace"] or "default"), "dashboard namespace")


def check_kafka_security(s):
    k = s.values["kafka"]
    args = kafka_args(s.worker)
    protocol = {(False, False): None, (True, False): "SSL", (False, True): "SASL_PLAINTEXT",
                (True, True): "SASL_SSL"}[(k["tls"]["enabled"], k["sasl"]["enabled"])]
    expect(args.get("security.protocol") == protocol, f"security.protocol {args.get('security.protocol')} != {protocol}")
    if k["sasl"]["enabled"]:
        expect(args["sasl.mechanisms"] == k["sasl"]["mechanism"], "sasl.mechanisms")
    env = s.env(s.worker)
    for name, prop, key in (("DEDUP_KAFKA_SASL_USERNAME", "sasl.username", "usernameKey"),
                            ("DEDUP_KAFKA_SASL_PASSWORD", "sasl.password", "passwordKey")):
        expect(kafka_env_property(name) == prop, f"{name} does not map to {prop}")
        expect(prop not in args, f"-X {prop} on the command line")
        if k["sasl"]["enabled"]:
            ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
            want = {"name": k["sasl"]["existingSecret"], "key": k["sasl"][key]}
            expect("value" not in env.get(name, {}) and ref == want,
                   f"{name} secretKeyRef {ref} does not follow kafka.sasl.existingSecret/{key}")
        else:
            expect(name not in env, f"{name} set with kafka.sasl.enabled false")
    if k["tls"]["enabled"] and k["tls"]["existingSecret"]:
        pod = s.deployment["spec"]["template"]["spec"]
        vol = next(v for v in pod["volumes"] if "secret" in v)
        expect(vol["secret"]["secretName"] == k["tls"]["existingSecret"], "TLS Secret volume")
        expect(args["ssl.ca.location"].endswith("/" + k["tls"]["caKey"]), "ssl.ca.location")
    for key, value in k["extraConfig"].items():
        want = str(value).lower() if isinstance(value, bool) else str(value)
        expect(args.get(key) == want, f"-X {key}={args.get(key)} != {want}")


def check_notes(s):
    name = s.deployment["metadata"]["name"]
    expect(name in s.notes and s.values["kafka"]["commandsTopic"] in s.notes, "NOTES.txt does not describe the release")
    expect("<no value>" not in s.notes, "NOTES.txt has an unresolved value")


SCENARIO_CHECKS = [check_common_metadata, check_selectors, check_ports_and_probes, check_grace_period, check_db_connections,
                   check_commit_interval, check_security, check_no_plaintext_secrets, check_worker_contract, check_migrate_hook,
                   check_scaling, check_kafka_security, check_notes]


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent, help="repository root")
    parser.add_argument("--build-dir", type=Path, default=None, help="where to build the renderer")
    args = parser.parse_args()
    root = args.root.resolve()
    results = Results()

    with tempfile.TemporaryDirectory() as tmp:
        build_dir = (args.build_dir or Path(tmp)).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        try:
            renderer = Renderer(root, build_dir)
        except RuntimeError as exc:
            results.check("build renderer", fail, str(exc))
            print(f"{results.passed} passed, {results.failed} failed")
            return 1
        results.check("build renderer", lambda: None)

        chart = root / CHART
        schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
        defaults = load_yaml(chart / "values.yaml")
        validator = jsonschema.Draft7Validator(schema)
        results.check("schema is a valid draft-07 schema", jsonschema.Draft7Validator.check_schema, schema)
        results.check("values.yaml satisfies values.schema.json", validator.validate, defaults)

        def check_symlinks():
            for link, target in (("files/dedup-worker.rules.yml", RULES_FILE),
                                 ("files/dedup-worker.json", DASHBOARD_FILE)):
                path = chart / link
                expect(path.is_symlink(), f"{link} must be a symlink to {target} (one source of truth)")
                expect(os.path.realpath(path) == str((root / target).resolve()), f"{link} does not point to {target}")
        results.check("files/ symlinks point into monitoring/", check_symlinks)

        def check_chart_yaml():
            meta = load_yaml(chart / "Chart.yaml")
            expect(meta["apiVersion"] == "v2" and meta["appVersion"] == "0.1.0", "Chart.yaml apiVersion/appVersion")
        results.check("Chart.yaml", check_chart_yaml)

        scenarios = [("defaults", [])] + [(p.name, [p]) for p in sorted(HERE.glob("values-*.yaml"))]
        expect(len(scenarios) >= 4, "values-*.yaml scenarios are missing")
        for name, files in scenarios:
            user = {}
            for f in files:
                user = coalesce(user, load_yaml(f)) if user else load_yaml(f)
            values = coalesce(defaults, user)
            results.check(f"{name}: values satisfy the schema", validator.validate, values)

            def merged_like_helm(files=files, values=values):
                proc = renderer.run(files, ["--show-values"])
                expect(proc.returncode == 0, proc.stderr)
                expect(json.loads(proc.stdout) == values, "renderer's merged values differ from the test's")
            results.check(f"{name}: renderer merges values like the test", merged_like_helm)

            holder = {}

            def do_render(files=files, values=values, name=name, holder=holder):
                text, notes = renderer.render(files)
                holder["text"] = text
                holder["s"] = Scenario(name, values, parse_manifests(text), notes)
            results.check(f"{name}: renders and parses as YAML", do_render)
            if "s" not in holder:
                continue
            for fn in SCENARIO_CHECKS:
                results.check(f"{name}: {fn.__name__[len('check_'):]}", fn, holder["s"])
            results.check(f"{name}: monitoring", check_monitoring, holder["s"], root)

            def lint_rendered(text=holder["text"]):
                proc = subprocess.run(
                    ["yamllint", "-s", "-d",
                     "{extends: default, rules: {line-length: disable, document-start: disable, "
                     "comments: {min-spaces-from-content: 1}, indentation: {indent-sequences: whatever}}}", "-"],
                    input=text, capture_output=True, text=True, check=False)
                expect(proc.returncode == 0, proc.stdout + proc.stderr)
            results.check(f"{name}: rendered output passes yamllint", lint_rendered)

        def defaults_specifics():
            text, _ = renderer.render()
            s = Scenario("defaults", defaults, parse_manifests(text), "")
            expect(s.worker["image"] == f"{defaults['image']['repository']}:0.1.0", "image tag != appVersion")
            expect(s.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45, "default grace")
            kinds = sorted(d["kind"] for _, d in s.docs)
            expect(kinds == ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount"],
                   f"default kinds: {kinds}")
            # Hooks come last, as in helm template.
            expect(s.docs[-1][1]["kind"] == "Job", "the hook Job is not printed after the manifests")
        results.check("defaults: image, grace period, resource set, order", defaults_specifics)

        def upgrade_render():
            _, notes = renderer.render(extra=["--upgrade"])
            expect("upgraded" in notes and "pre-upgrade" in notes, "NOTES.txt ignores .Release.IsUpgrade")
        results.check("upgrade: renders with .Release.IsUpgrade", upgrade_render)

        for path in sorted((HERE / "bad").glob("*.yaml")):
            def rejected(path=path):
                want = expected_message(path)
                values = coalesce(defaults, load_yaml(path))
                errors = list(validator.iter_errors(values))
                expect(errors, "python3-jsonschema accepted it")
                proc = renderer.run([path])
                expect(proc.returncode == 1, f"renderer exit {proc.returncode}, want 1")
                expect("values don't meet the specifications of the schema" in proc.stderr,
                       f"not a schema error: {proc.stderr.strip()}")
                expect(want in proc.stderr, f"error does not mention {want!r}: {proc.stderr.strip()}")
            results.check(f"bad/{path.name}: rejected by the schema", rejected)

        for path in sorted((HERE / "fail").glob("*.yaml")):
            def guarded(path=path):
                want = expected_message(path)
                validator.validate(coalesce(defaults, load_yaml(path)))
                proc = renderer.run([path])
                expect(proc.returncode == 1, f"renderer exit {proc.returncode}, want 1")
                expect("execution error at (dedup-worker/templates/" in proc.stderr and want in proc.stderr,
                       f"want a fail() with {want!r}, got: {proc.stderr.strip()}")
            results.check(f"fail/{path.name}: schema-valid, refused by a template guard", guarded)

        def operations_doc_lists_every_alert():
            rules = load_yaml(root / RULES_FILE)
            alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
            doc = (root / "docs/operations.md").read_text(encoding="utf-8")
            missing = sorted(a for a in alerts if a not in doc)
            expect(alerts and not missing, f"docs/operations.md does not mention {missing}")
        results.check("docs/operations.md lists every alert of the rules file", operations_doc_lists_every_alert)

        def yamllint_sources():
            proc = subprocess.run(["yamllint", "-s", "-c", str(root / ".yamllint"),
                                   str(CHART), "tests/helm", ".yamllint"],
                                  cwd=root, capture_output=True, text=True, check=False)
            expect(proc.returncode == 0, proc.stdout + proc.stderr)
        results.check("yamllint (.yamllint) on the chart's and the tests' YAML", yamllint_sources)

    print(f"{results.passed} passed, {results.failed} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
