"""Observability end to end (SPEC §7, §8): the real worker's /metrics, /healthz and /readyz after a
known stream, and a real Prometheus server loading the project's rules file, scraping the worker
and raising the alerts the rules promise.

Run with the system interpreter (python3-confluent-kafka): DEDUP_WORKER_BIN and DEDUP_TEST_DB must
be set (scripts/test does it). The Prometheus test needs /usr/bin/prometheus (Debian's package);
it is skipped when the binary is missing.
"""
import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from confluent_kafka import Producer

from harness import (ROOT, http_get, scrape_metrics as scrape, Broker, Database, ManagedProcess, Worker, command, free_port, produce, read_topic,
                     results_by_source, wait_for)

RULES_FILE = os.path.join(ROOT, "monitoring", "rules", "dedup-worker.rules.yml")
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
CONFIGURED_TYPES = {"todo.create", "appointment.create", "conversation.create"}
STATUSES = ("created", "duplicate", "key_reused", "conflict", "rejected")

# The scrape job's name must match the rules' `up{job=~".*dedup-worker.*"}`, and every recording
# rule aggregates `by (namespace, job)`, so the target also carries a namespace label.
JOB = "dedup-worker"
NAMESPACE = "e2e-observability"


# --- HTTP and the Prometheus text format ---------------------------------------------------------

def probe(url):
    """(status, body without surrounding whitespace) of a health endpoint."""
    status, body = http_get(url)
    return status, body.strip()


def try_http_get(url, timeout=5):
    """Like http_get, but (None, "") while nothing listens yet."""
    try:
        return http_get(url, timeout)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None, ""





def by_label(samples, name, label):
    """{label value: sample value} of a metric with one label."""
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def total(samples, name):
    return sum(samples.get(name, {}).values())


# --- a real Prometheus server --------------------------------------------------------------------

class Prometheus(ManagedProcess):
    """`prometheus` scraping one worker every second and evaluating the project's rules every
    second, on a free port, with its TSDB in a temp dir (removed on exit)."""

    def __init__(self, target_port):
        self.dir = tempfile.mkdtemp(prefix="dedup-e2e-prometheus.")
        self.port = free_port()
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_path, "w") as f:
            # JSON is YAML: no quoting surprises in the generated config.
            json.dump({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                           "evaluation_interval": "1s"},
                "rule_files": [RULES_FILE],
                "scrape_configs": [{
                    "job_name": JOB,
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"],
                                        "labels": {"namespace": NAMESPACE}}],
                }],
            }, f, indent=2)
        super().__init__(
            [PROMETHEUS_BIN, f"--config.file={self.config_path}",
             f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            os.path.join(self.dir, "prometheus.log"), stop_timeout=20, cwd=self.dir)
        try:
            wait_for(lambda: self.process.poll() is not None
                     or try_http_get(self.url("/-/ready"))[0] == 200, 30, "Prometheus to be ready")
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log_text()}")
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path, **params):
        status, body = http_get(self.url(path) + ("?" + urllib.parse.urlencode(params) if params else ""))
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params} answered {status}: {body[:500]}")
        return reply["data"]

    def query(self, expr):
        """Instant query: [(labels dict, float value)]."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, expr):
        """The single value of a one-series query, or None when it has no series."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: more than one series: {result}"
        return result[0][1]

    def rule_last_evaluation(self, name):
        """Wall-clock time (epoch seconds) of the named rule's last evaluation, or 0."""
        for group in self.api("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                if rule["name"] == name and rule.get("lastEvaluation"):
                    when = datetime.datetime.fromisoformat(rule["lastEvaluation"])
                    return when.timestamp() if when.year > 1 else 0
        return 0

    def alerts(self, name=None):
        alerts = self.api("/api/v1/alerts")["alerts"]
        return [a for a in alerts if name is None or a["labels"].get("alertname") == name]

    def __exit__(self, *exc):
        super().__exit__(*exc)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the tests -----------------------------------------------------------------------------------

def appointment(key, professional, starts, ends, scope="org-a"):
    return command(key, None, scope=scope, ctype="appointment.create",
                   payload={"professional_id": professional, "starts_at": starts, "ends_at": ends})


def conversation(context_id, title, created_by="u-1", scope="org-a"):
    return command(None, None, scope=scope, ctype="conversation.create",
                   payload={"context_type": "ticket", "context_id": context_id,
                            "created_by": created_by, "title": title})


class E2ETestCase(unittest.TestCase):
    def setUp(self):
        self.dirs = []
        self.addCleanup(lambda: [shutil.rmtree(d, ignore_errors=True) for d in self.dirs])
        self.stack = contextlib.ExitStack()
        self.addCleanup(self.stack.close)  # cleanups run last-in first-out: processes, then dirs
        self.broker = self.stack.enter_context(Broker())
        self.dirs.append(self.broker.dir)  # also holds the worker logs
        self.db = self.stack.enter_context(Database())

    def start_worker(self):
        worker = self.stack.enter_context(Worker(self.broker, self.db.conninfo, name=self.id().split(".")[-1]))
        try:
            wait_for(lambda: worker.process.poll() is not None
                     or try_http_get(worker.metrics_url("/healthz"))[0] == 200, 30, "/healthz")
            self.assertIsNone(worker.process.poll(), "the worker exited")
            self.assertEqual(probe(worker.metrics_url("/healthz")), (200, "ok"))
            # Ready once it has its partitions (all 4, as the group's only member).
            wait_for(lambda: worker.process.poll() is not None
                     or http_get(worker.metrics_url("/readyz"))[0] == 200, 60, "/readyz 200")
            self.assertIsNone(worker.process.poll(), "the worker exited")
            self.assertEqual(probe(worker.metrics_url("/readyz")), (200, "ready"))
        except BaseException:
            print(worker.log_text())
            raise
        return worker

    def results(self, expect, timeout=60):
        messages = read_topic(self.broker.bootstrap, "commands.results", expect=expect, timeout=timeout)
        self.assertGreaterEqual(len(messages), expect, "not every result arrived")
        by_source = results_by_source(messages)
        self.assertEqual(len(by_source), expect, "results for an unexpected number of input records")
        return by_source


class MetricsAfterKnownStreamTest(E2ETestCase):
    """Phase 1: a stream with a known number of each outcome, then /metrics read back exactly."""

    def test_metrics_count_a_known_stream_exactly(self):
        worker = self.start_worker()
        try:
            self.check_known_stream(worker)
        except BaseException:
            print("--- worker log (tail) ---\n" + worker.log_text()[-4000:])
            raise

    def check_known_stream(self, worker):
        sent = 0

        def send(records):
            nonlocal sent
            sent += produce(self.broker.bootstrap, "commands", records)
            return self.results(sent)

        before = scrape(worker)
        # Every type × status series exists at zero before the first command (no gaps for rate()).
        commands_before = before["dedup_commands_total"]
        for ctype in CONFIGURED_TYPES | {"unknown"}:
            for status in STATUSES:
                self.assertEqual(commands_before.get(frozenset({"type": ctype, "status": status}.items())),
                                 0.0, (ctype, status))

        # Stage 1: originals, a cross-scope key, and malformed records.
        todos = {f"todo-{i}": f"Todo {i}" for i in range(6)}
        stage1 = [command(k, t, scope="org-a") for k, t in todos.items()]
        stage1 += [conversation(f"c-{i}", f"Conversation {i}") for i in range(3)]          # natural keys
        stage1 += [appointment("appt-1", 7, "2030-01-01T10:00:00Z", "2030-01-01T11:00:00Z")]
        malformed = [
            (b"bad-1", b"{not json", None),                                           # invalid_json
            (b"bad-2", b'["an", "array"]', None),                                    # not_an_object
            (b"bad-3", json.dumps({"idempotency_key": "bad-3-key", "scope": "org-a",
                                   "payload": {"title": "x"}}).encode(), None),      # missing_type
            (b"bad-4", json.dumps({"idempotency_key": "bad-4-key", "scope": "org-a", "type": "todo.delete",
                                   "payload": {"title": "x"}}).encode(), None),      # unknown_type
            (b"bad-5", json.dumps({"scope": "org-a", "type": "todo.create",
                                   "payload": {"title": "no key"}}).encode(), None),  # missing_key
        ]
        send(stage1 + malformed)

        # Stage 2: an appointment overlapping appt-1 (after it is stored, so which one conflicts is
        # certain).
        # And todo-5 under a second scope: a client key that exists under org-a (cross-scope).
        send([appointment("appt-2", 7, "2030-01-01T10:30:00Z", "2030-01-01T11:30:00Z"),
              command("todo-5", "Todo 5", scope="org-b")])

        # Stage 3: redeliveries (duplicates, replayed conflicts) and key reuses.
        stage3 = [command("todo-0", "Todo 0", scope="org-a"), command("todo-0", "Todo 0", scope="org-a"),
                  command("todo-1", "Todo 1", scope="org-a"),                       # 3 duplicates
                  command("todo-2", "Changed", scope="org-a"),
                  command("todo-3", "Changed too", scope="org-a"),                  # 2 key_reused
                  conversation("c-0", "Conversation 0"),                            # duplicate
                  conversation("c-1", "Another title"),                             # key_reused
                  appointment("appt-1", 7, "2030-01-01T10:00:00Z", "2030-01-01T11:00:00Z"),  # duplicate
                  appointment("appt-2", 7, "2030-01-01T10:30:00Z", "2030-01-01T11:30:00Z"),
                  appointment("appt-2", 7, "2030-01-01T10:30:00Z", "2030-01-01T11:30:00Z")]  # 2 replayed conflicts
        results = list(send(stage3).values())
        self.assertEqual(len(results), sent)

        # The outcomes the stream was built to produce (so the metric assertions below are not
        # vacuous), read from the results topic.
        def label(result):
            return result["type"] if result.get("type") in CONFIGURED_TYPES else "unknown"

        statuses = collections.Counter((label(r), r["status"]) for r in results)
        self.assertEqual(statuses, collections.Counter({
            ("todo.create", "created"): 7, ("todo.create", "duplicate"): 3,
            ("todo.create", "key_reused"): 2, ("todo.create", "rejected"): 1,
            ("conversation.create", "created"): 3, ("conversation.create", "duplicate"): 1,
            ("conversation.create", "key_reused"): 1,
            ("appointment.create", "created"): 1, ("appointment.create", "duplicate"): 1,
            ("appointment.create", "conflict"): 3,
            ("unknown", "rejected"): 4}), statuses)
        replayed = collections.Counter(label(r) for r in results if r["replayed"])
        self.assertEqual(replayed, {"todo.create": 3, "conversation.create": 1, "appointment.create": 3})
        dead_letters = read_topic(self.broker.bootstrap, "commands.dlq", expect=len(malformed))
        dlq_reasons = collections.Counter(m["headers"]["dedup-error-code"].decode() for m in dead_letters)
        self.assertEqual(dlq_reasons, {"invalid_json": 1, "not_an_object": 1, "missing_type": 1,
                                       "unknown_type": 1, "missing_key": 1})

        # The counters are updated when a result is acknowledged, i.e. by the time it can be read;
        # poll a little anyway for the last acknowledgement's bookkeeping.
        wait_for(lambda: total(scrape(worker), "dedup_commands_total") >= sent, 10, "the last results counted")
        samples = scrape(worker)

        # dedup_commands_total{type,status}: every series, exactly the results' statuses; sums to
        # the records read.
        commands = {(dict(k)["type"], dict(k)["status"]): v for k, v in samples["dedup_commands_total"].items()}
        expected_commands = {(t, s): float(statuses.get((t, s), 0))
                             for t in CONFIGURED_TYPES | {"unknown"} for s in STATUSES}
        self.assertEqual(commands, expected_commands)
        self.assertEqual(sum(commands.values()), sent)

        # dedup_idempotent_hits_total{type}: the replayed results per type (duplicates and
        # replayed conflicts; the first conflict is not a hit).
        self.assertEqual(by_label(samples, "dedup_idempotent_hits_total", "type"),
                         {"todo.create": 3.0, "conversation.create": 1.0, "appointment.create": 3.0,
                          "unknown": 0.0})
        self.assertEqual(by_label(samples, "dedup_key_reuse_mismatch_total", "type"),
                         {"todo.create": 2.0, "conversation.create": 1.0, "appointment.create": 0.0,
                          "unknown": 0.0})
        # Without a client key: 3 + 2 conversations (natural key), the keyless todo (rejected).
        self.assertEqual(by_label(samples, "dedup_missing_key_total", "type"),
                         {"todo.create": 1.0, "conversation.create": 5.0, "appointment.create": 0.0,
                          "unknown": 0.0})
        self.assertEqual(total(samples, "dedup_cross_scope_key_reuse_total"), 1.0)
        dead = by_label(samples, "dedup_dead_letters_total", "reason")
        self.assertEqual({r: v for r, v in dead.items() if v}, {r: float(n) for r, n in dlq_reasons.items()})
        self.assertEqual(sum(dead.values()), statuses[("unknown", "rejected")] + statuses[("todo.create", "rejected")])
        self.assertEqual(by_label(samples, "dedup_db_errors_total", "kind"), {"transient": 0.0, "permanent": 0.0})

        # Histograms: observed. One end-to-end observation per acknowledged result; the batches
        # handed to the processor hold every record read at least once.
        for histogram in ("dedup_batch_size", "dedup_db_transaction_seconds", "dedup_end_to_end_seconds"):
            self.assertGreater(total(samples, f"{histogram}_count"), 0, histogram)
            buckets = by_label(samples, f"{histogram}_bucket", "le")
            self.assertEqual(buckets["+Inf"], total(samples, f"{histogram}_count"), histogram)
        self.assertEqual(total(samples, "dedup_end_to_end_seconds_count"), sent)
        self.assertGreaterEqual(total(samples, "dedup_batch_size_sum"), sent)

        # dedup_build_info{version} 1.
        build_info = samples["dedup_build_info"]
        self.assertEqual(len(build_info), 1, build_info)
        (labels, value), = build_info.items()
        self.assertEqual(value, 1.0)
        self.assertTrue(dict(labels).get("version"), labels)

        # Consumer lag: one series per assigned partition, drained.
        lag = by_label(samples, "dedup_consumer_lag", "partition")
        self.assertTrue(set(lag) <= {"0", "1", "2", "3"}, lag)

        # No label carries a key, a scope or a derived natural key; `type` is bounded.
        sent_values = set(todos) | {"org-a", "org-b", "appt-1", "appt-2", "bad-3-key", "bad-4-key",
                                    "todo.delete", "c-0", "c-1", "c-2", "u-1", "ticket"}
        sent_values |= {key.decode() for key, _, _ in malformed}
        sent_values |= {r["idempotency_key"] for r in results if r.get("idempotency_key")}
        sent_values |= {r["scope"] for r in results if r.get("scope")}
        for name, series in samples.items():
            for labels in series:
                for key, value in labels:
                    self.assertNotIn(value, sent_values, f"{name} label {key}={value!r}")
                    if key == "type":
                        self.assertIn(value, CONFIGURED_TYPES | {"unknown"}, name)

        self.assertEqual(probe(worker.metrics_url("/healthz")), (200, "ok"))
        self.assertEqual(probe(worker.metrics_url("/readyz")), (200, "ready"))


class PrometheusRulesTest(E2ETestCase):
    """Phase 2: a real Prometheus with the project's rules scrapes the worker under a stream with
    ~25% redeliveries, then sees a cross-scope key reuse."""

    STREAM_SECONDS = 30
    RATE_PER_SECOND = 20  # commands per second, 1 in 4 a redelivery

    def setUp(self):
        if not os.access(PROMETHEUS_BIN, os.X_OK):
            self.fail(f"{PROMETHEUS_BIN} is not installed: scripts/setup installs it")
        super().setUp()

    def test_recorded_ratio_and_alerts(self):
        worker = self.start_worker()
        prometheus = self.stack.enter_context(Prometheus(worker.metrics_port))
        try:
            self.run_phases(worker, prometheus)
        except BaseException:
            print("--- prometheus log ---\n" + prometheus.log_text())
            print("--- worker log (tail) ---\n" + worker.log_text()[-4000:])
            raise

    def run_phases(self, worker, prometheus):
        selector = f'{{job="{JOB}",namespace="{NAMESPACE}"}}'
        ratio_rule = "namespace_job:dedup_idempotent_hits_per_commands:ratio_rate10m"

        # The target is up, and its first scrape saw every counter at zero: rate() then
        # extrapolates numerator and denominator alike (see below).
        wait_for(lambda: prometheus.scalar(f'up{selector}') == 1.0, 30, "the worker target to be up")
        wait_for(lambda: prometheus.scalar(f'count(dedup_commands_total{selector})') == 20.0, 30,
                 "the first scrape of dedup_commands_total")
        self.assertEqual(prometheus.scalar(f'sum(dedup_commands_total{selector})'), 0.0)

        # Every rule of the project's file loaded and evaluates without error in a real server.
        def rules_evaluated():
            groups = prometheus.api("/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None
        rules = wait_for(rules_evaluated, 30, "every rule evaluated once")
        self.assertEqual({r["name"] for r in rules if r["health"] != "ok"}, set(),
                         [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"])
        self.assertIn(ratio_rule, {r["name"] for r in rules})
        self.assertTrue({"DedupHighIdempotentHitRatio", "DedupCrossScopeKeyReuse", "DedupDeadLetters"}
                        <= {r["name"] for r in rules if r["type"] == "alerting"})
        # No traffic yet: no ratio series (rather than NaN), and no alert at all once the alerts
        # were evaluated with the target known (before the first scrape, DedupWorkerAbsent is
        # briefly pending: absent(up) is true while Prometheus starts).
        target_seen = time.time()
        wait_for(lambda: prometheus.rule_last_evaluation("DedupWorkerAbsent") > target_seen + 1, 30,
                 "the alerts evaluated with the target known")
        self.assertEqual(prometheus.query(ratio_rule), [])
        self.assertEqual(prometheus.alerts(), [])

        # Below the minimum volume: 10 commands, 4 of them redeliveries. The recorded ratio (40%)
        # is far above the threshold, but 10 commands in 10 minutes must not page.
        low = [command(f"low-{i}", f"Low {i}", scope="org-a") for i in range(6)]
        low += [command(f"low-{i}", f"Low {i}", scope="org-a") for i in range(4)]
        produce(self.broker.bootstrap, "commands", low)
        self.assertEqual(sum(r["replayed"] for r in self.results(len(low)).values()), 4)
        self.assert_recorded_after_final_scrape(worker, prometheus, len(low))
        self.assertAlmostEqual(prometheus.scalar(f"{ratio_rule}{selector}"), 0.4, delta=1e-9)
        self.assertLess(prometheus.scalar(f"namespace_job:dedup_commands:rate10m{selector}"), 20 / 600)
        recorded_at = prometheus.scalar(f"timestamp({ratio_rule}{selector})")
        wait_for(lambda: prometheus.rule_last_evaluation("DedupHighIdempotentHitRatio") > recorded_at + 2, 30,
                 "DedupHighIdempotentHitRatio evaluated on the recorded 40%")
        self.assertEqual(prometheus.alerts(), [], "an alert below the minimum volume")

        # Stream: RATE_PER_SECOND commands a second, every 4th one a redelivery (same key, same
        # payload) of an earlier command, for STREAM_SECONDS.
        producer = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5})
        sent, redelivered, fresh = len(low), 4, []
        ratio_alert_seen = None
        start = time.time()
        next_tick = start
        while time.time() - start < self.STREAM_SECONDS or ratio_alert_seen is None:
            self.assertLess(time.time() - start, 90, "DedupHighIdempotentHitRatio never became pending")
            for _ in range(self.RATE_PER_SECOND // 4):
                for _ in range(3):
                    key = f"stream-{len(fresh)}"
                    fresh.append(key)
                    body = command(key, f"Stream {key}", scope="org-a")
                    producer.produce("commands", key=f"org-a/{key}".encode(), value=json.dumps(body).encode())
                old = fresh[(sent * 7) % len(fresh)]  # a key sent before (possibly just now)
                body = command(old, f"Stream {old}", scope="org-a")
                producer.produce("commands", key=f"org-a/{old}".encode(), value=json.dumps(body).encode())
                redelivered += 1
                sent += 4
            producer.poll(0)
            if ratio_alert_seen is None:
                states = {a["state"] for a in prometheus.alerts("DedupHighIdempotentHitRatio")}
                if states & {"pending", "firing"}:
                    ratio_alert_seen = time.time() - start
            next_tick += 1
            time.sleep(max(0.0, next_tick - time.time()))  # pacing the load, not waiting for a state
        self.assertEqual(producer.flush(30), 0, "not every command was delivered")
        stream_seconds = time.time() - start

        results = list(self.results(sent).values())
        hits_in_results = sum(1 for r in results if r["replayed"])
        self.assertEqual(hits_in_results, redelivered)
        self.assertEqual(collections.Counter(r["status"] for r in results),
                         {"created": sent - redelivered, "duplicate": redelivered})

        # The counters settled: read them from the worker directly, then wait until Prometheus
        # scraped these final values and the recording rule was evaluated after that scrape.
        raw_hits, raw_commands = self.assert_recorded_after_final_scrape(worker, prometheus, sent)
        self.assertEqual(raw_hits, redelivered)

        # The recorded ratio equals hits/commands from the raw counters. Why so tight a tolerance:
        # every series of both sums comes from one target, so all share the scrape timestamps, and
        # the first scrape saw them at 0 (asserted above). rate() over 10m (longer than this test)
        # then sees the whole increase, and its extrapolation factor (sampled interval plus the
        # gap to the window's end, over the sampled interval; no extrapolation before a zero first
        # sample) is the same for numerator and denominator, so it cancels: the ratio is exact up
        # to floating-point rounding.
        recorded = prometheus.query(ratio_rule)
        self.assertEqual([labels for labels, _ in recorded],
                         [{"__name__": ratio_rule, "job": JOB, "namespace": NAMESPACE}])
        expected_ratio = raw_hits / raw_commands
        self.assertAlmostEqual(recorded[0][1], expected_ratio, delta=1e-9 * expected_ratio)
        self.assertGreater(expected_ratio, 0.10)
        # Per type: only todo.create had traffic; the other types have no series rather than NaN.
        per_type = prometheus.query(f"namespace_job_type:dedup_idempotent_hits_per_commands:ratio_rate10m{selector}")
        self.assertEqual([labels["type"] for labels, _ in per_type], ["todo.create"])
        self.assertAlmostEqual(per_type[0][1], expected_ratio, delta=1e-9 * expected_ratio)
        # The minimum-volume clause's input is well above 20 commands per 10 minutes.
        self.assertGreater(prometheus.scalar(f"namespace_job:dedup_commands:rate10m{selector}"), 20 / 600)

        # DedupHighIdempotentHitRatio: pending (for: 5m, so not firing within this test), with
        # the target's labels and rendered annotations.
        self.assertIsNotNone(ratio_alert_seen)
        alert, = prometheus.alerts("DedupHighIdempotentHitRatio")
        self.assertIn(alert["state"], ("pending", "firing"))
        self.assert_alert_well_formed(alert, "warning")
        self.assertAlmostEqual(float(alert["value"]), expected_ratio, delta=0.01)

        # Quiet so far: no dead letters were sent, so DedupDeadLetters' expression has data (one
        # zero per reason) yet the alert is silent; the key was never reused across scopes.
        dead_letters = prometheus.query(
            f"sum by (namespace, job, reason) (increase(dedup_dead_letters_total{selector}[5m]))")
        self.assertGreaterEqual(len(dead_letters), 12, dead_letters)
        self.assertEqual({value for _, value in dead_letters}, {0.0})
        self.assertEqual({a["labels"]["alertname"] for a in prometheus.alerts()}, {"DedupHighIdempotentHitRatio"})

        # A new (scope, key) whose client-sent key already exists under another scope.
        produce(self.broker.bootstrap, "commands", [command("stream-0", "Stream stream-0", scope="org-b")])
        result, = [r for r in self.results(sent + 1).values() if r["scope"] == "org-b"]
        self.assertEqual((result["status"], result["idempotency_key"]), ("created", "stream-0"))
        wait_for(lambda: total(scrape(worker), "dedup_cross_scope_key_reuse_total") == 1.0, 10,
                 "dedup_cross_scope_key_reuse_total 1")
        wait_for(lambda: [a for a in prometheus.alerts("DedupCrossScopeKeyReuse") if a["state"] == "firing"],
                 30, "DedupCrossScopeKeyReuse firing")
        alert, = prometheus.alerts("DedupCrossScopeKeyReuse")
        self.assert_alert_well_formed(alert, "critical")

        # Still no dead letters, no worker-down, no lag alerts: only the two expected alerts.
        self.assertEqual({a["labels"]["alertname"] for a in prometheus.alerts()},
                         {"DedupHighIdempotentHitRatio", "DedupCrossScopeKeyReuse"})
        print(f"\n  stream: {sent} commands, {redelivered} redeliveries in {stream_seconds:.1f}s; "
              f"DedupHighIdempotentHitRatio pending after {ratio_alert_seen:.1f}s; "
              f"recorded ratio {recorded[0][1]:.6f} vs raw {expected_ratio:.6f}")

    def assert_recorded_after_final_scrape(self, worker, prometheus, sent):
        """Once the worker counted `sent` results: waits until Prometheus scraped those final
        counters and the ratio was recorded after that scrape. Returns (hits, commands) as read
        from the worker's /metrics."""
        selector = f'{{job="{JOB}",namespace="{NAMESPACE}"}}'
        ratio_rule = "namespace_job:dedup_idempotent_hits_per_commands:ratio_rate10m"
        wait_for(lambda: total(scrape(worker), "dedup_commands_total") >= sent, 10, "the last results counted")
        samples = scrape(worker)
        hits = total(samples, "dedup_idempotent_hits_total")
        commands = total(samples, "dedup_commands_total")
        self.assertEqual(commands, sent)
        wait_for(lambda: prometheus.scalar(f'sum(dedup_commands_total{selector})') == commands
                 and prometheus.scalar(f'sum(dedup_idempotent_hits_total{selector})') == hits, 30,
                 "Prometheus to scrape the final counters")
        scraped_at = time.time()
        wait_for(lambda: (prometheus.scalar(f'timestamp({ratio_rule}{selector})') or 0) > scraped_at + 1, 30,
                 "the ratio recorded after the final scrape")
        return hits, commands

    def assert_alert_well_formed(self, alert, severity):
        self.assertEqual(alert["labels"].get("job"), JOB)
        self.assertEqual(alert["labels"].get("namespace"), NAMESPACE)
        self.assertEqual(alert["labels"].get("severity"), severity)
        annotations = alert["annotations"]
        self.assertTrue({"summary", "description", "runbook_url"} <= set(annotations), annotations)
        for text in annotations.values():
            self.assertNotIn("error expanding template", text)
            self.assertNotIn("<no value>", text)
        self.assertIn(f"{NAMESPACE}/{JOB}", annotations["summary"])
        self.assertTrue(annotations["runbook_url"].startswith("https://"), annotations["runbook_url"])
        self.assertIn("#" + alert["labels"]["alertname"].lower(), annotations["runbook_url"])


if __name__ == "__main__":
    unittest.main()
