"""End-to-end test harness: the real dedup-worker binary, the real dev broker (librdkafka's mock
cluster, in its own process), real PostgreSQL 15, and python3-confluent-kafka as the client that
produces commands and reads results. Nothing is faked.

Environment (set by scripts/test): DEDUP_WORKER_BIN (the binary), DEDUP_TEST_DB (a running
throwaway cluster; each test gets its own database in it). Tests that restart Postgres start a
private cluster with PrivatePostgres instead. DEDUP_E2E_BROKER=kafka runs the suites that use
make_broker() on a real Apache Kafka broker instead of the dev broker (scripts/kafka; version:
DEDUP_E2E_KAFKA_VERSION), see RealKafka at the end of this file.
"""
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_SH = os.path.join(ROOT, "scripts", "lib", "pg.sh")
SCHEMA_SQL = os.path.join(ROOT, "scripts", "demo.d", "schema.sql")
CONFIG_YAML = os.path.join(ROOT, "scripts", "demo.d", "config.yaml")


def require_env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: end-to-end tests need it; run scripts/test")
    return value


def worker_bin():
    return require_env("DEDUP_WORKER_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_config(bootstrap):
    """librdkafka settings for a test client: `bootstrap` is "host:port", or a dict of settings
    (a secured broker's bootstrap.servers, security.protocol, ssl.ca.location, ...)."""
    return dict(bootstrap) if isinstance(bootstrap, dict) else {"bootstrap.servers": bootstrap}


def wait_for(predicate, timeout, what, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def psql(conninfo, sql, *extra):
    """Runs SQL with psql; returns stdout stripped (-At: unaligned, tuples only)."""
    out = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-At", conninfo, "-c", sql, *extra],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Database(contextlib.AbstractContextManager):
    """A fresh database in the test cluster, with the demo's entity tables and the dedup schema."""

    def __init__(self, server_conninfo=None, extra_sql=()):
        """extra_sql: more fixture SQL files, loaded after the demo's schema (e.g. more entity
        tables for a test's own --config)."""
        self.server = server_conninfo or require_env("DEDUP_TEST_DB")
        self.name = "e2e_" + uuid.uuid4().hex[:12]
        psql(self.server, f"CREATE DATABASE {self.name}")
        self.conninfo = self._conninfo_for(self.name)
        for sql_file in (SCHEMA_SQL, *extra_sql):
            loaded = subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.conninfo, "-f", sql_file],
                                    capture_output=True, text=True)
            if loaded.returncode != 0:
                raise RuntimeError(f"loading {sql_file} failed: {loaded.stderr}")
        subprocess.run([worker_bin(), "migrate", "--db", self.conninfo], check=True, capture_output=True)

    def _conninfo_for(self, dbname):
        parts = [p for p in self.server.split() if not p.startswith("dbname=")]
        return " ".join(parts + [f"dbname={dbname}"])

    def scalar(self, sql):
        return psql(self.conninfo, sql)

    def count(self, table, where="true"):
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE {where}"))

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            psql(self.server, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


class PrivatePostgres(contextlib.AbstractContextManager):
    """A private PostgreSQL 15 cluster (scripts/lib/pg.sh) that a test may stop and restart."""

    def __init__(self):
        script = f'source "{PG_SH}"; pg_start fsync=off >&2; env | grep -E "^(PG_DIR|PG_PORT|DEDUP_TEST_)"'
        out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout
        self.env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.conninfo = self.env["DEDUP_TEST_DB"]

    def _pg_ctl(self, *args):
        cmd = [self.env["DEDUP_TEST_PG_CTL"], "-D", self.env["DEDUP_TEST_PG_DATA"], *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def stop(self, mode="fast"):
        self._pg_ctl("-m", mode, "-w", "stop")

    def start(self):
        self._pg_ctl("-l", self.env["DEDUP_TEST_PG_LOG"], "-o", self.env["DEDUP_TEST_PG_OPTS"], "-w", "start")

    def __exit__(self, *exc):
        script = f'source "{PG_SH}"; PG_DIR="{self.env["PG_DIR"]}"; pg_stop'
        subprocess.run(["bash", "-c", script], check=False, capture_output=True)


class Broker(contextlib.AbstractContextManager):
    """`dedup-worker dev-broker` in its own process. SIGSTOP/SIGCONT freeze and thaw it, which
    clients see as a broker that stopped answering."""
    kind = "dev"
    worker_env = {}

    def __init__(self, topics=("commands:4", "commands.results:4", "commands.dlq:1")):
        self.dir = tempfile.mkdtemp(prefix="dedup-e2e-broker.")
        self.bootstrap_file = os.path.join(self.dir, "bootstrap")
        args = [worker_bin(), "dev-broker", "--bootstrap-file", self.bootstrap_file]
        for topic in topics:
            args += ["--topic", topic]
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.bootstrap_file) and os.path.getsize(self.bootstrap_file) > 0,
                 10, "the dev broker's bootstrap file")
        with open(self.bootstrap_file) as f:
            self.bootstrap = f.read().strip()

    def freeze(self):
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.process.send_signal(signal.SIGCONT)

    def __exit__(self, *exc):
        self.thaw()
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
        # Worker logs live here too; keep them when the test failed, for the failure message.
        if exc[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)


class ManagedProcess(contextlib.AbstractContextManager):
    """A child process whose stdout and stderr go to a log file. On exit it is terminated (killed
    after `stop_timeout` seconds) and the log is closed; the log file itself stays. `env` is added
    to this process's environment (None: inherit it unchanged)."""

    def __init__(self, args, log_path, env=None, stop_timeout=40, cwd=None):
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.log = open(log_path, "w")
        try:
            self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                            env=None if env is None else {**os.environ, **env})
        except BaseException:
            self.log.close()
            raise

    def kill(self, sig=signal.SIGKILL):
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout=60):
        return self.process.wait(timeout)

    def log_text(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Worker(ManagedProcess):
    """`dedup-worker run` against a broker and a database. Extra flags and environment (e.g.
    DEDUP_FAILPOINT) per instance; logs go to a file kept for the test's failure message."""

    def __init__(self, broker, database_conninfo, extra_args=(), env=None, name="worker", config=None):
        self.metrics_port = free_port()
        args = [worker_bin(), "--log-format", "text", "run",
                "--brokers", broker.bootstrap, "--db", database_conninfo, "--config", config or CONFIG_YAML,
                "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                # The mock waits out a killed member's session before rebalancing: keep it short.
                "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500",
                *extra_args]
        super().__init__(args, os.path.join(broker.dir, f"{name}-{uuid.uuid4().hex[:6]}.log"),
                         env={**broker.worker_env, **(env or {})}, stop_timeout=40)

    def metrics_url(self, path="/metrics"):
        return f"http://127.0.0.1:{self.metrics_port}{path}"


def command(key, title, scope="org-1", ctype="todo.create", payload=None):
    body = {"scope": scope, "type": ctype, "payload": payload if payload is not None else {"title": title}}
    if key is not None:
        body["idempotency_key"] = key
    return body


def produce(bootstrap, topic, records):
    """records: iterable of dict (JSON body) or (key bytes, value bytes, headers) tuples."""
    producer = Producer({**client_config(bootstrap), "enable.idempotence": True, "linger.ms": 5})
    count = 0
    for record in records:
        if isinstance(record, dict):
            key, value, headers = f'{record.get("scope")}/{record.get("idempotency_key")}'.encode(), \
                json.dumps(record).encode(), None
        else:
            key, value, headers = record
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("not every record was delivered")
    return count


def read_topic(bootstrap, topic, expect=None, timeout=60, idle=None):
    """Reads a topic from the beginning without a group. Stops when `expect` records were read, or
    when nothing arrived for `idle` seconds, or at `timeout`. Returns messages as dicts with key,
    value (bytes), headers (dict of bytes), partition, offset."""
    consumer = Consumer({**client_config(bootstrap), "group.id": "e2e-reader-" + uuid.uuid4().hex,
                         "enable.auto.commit": False})
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    messages = []
    deadline = time.time() + timeout
    last = time.time()
    while time.time() < deadline:
        if expect is not None and len(messages) >= expect:
            break
        if idle is not None and time.time() - last > idle:
            break
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        last = time.time()
        messages.append({"key": message.key(), "value": message.value(),
                         "headers": dict(message.headers() or []),
                         "partition": message.partition(), "offset": message.offset()})
    consumer.close()
    return messages


def results_by_source(messages):
    """Results keyed by their input record (topic, partition, offset); asserts that a repeated
    result for one input record is identical except processed_at."""
    by_source = {}
    for message in messages:
        result = json.loads(message["value"])
        source = (result["source"]["topic"], result["source"]["partition"], result["source"]["offset"])
        stable = {k: v for k, v in result.items() if k != "processed_at"}
        if source in by_source and by_source[source] != stable:
            raise AssertionError(f"two different results for {source}: {by_source[source]} vs {stable}")
        by_source[source] = stable
    return by_source


# --- Helpers for test_worker_e2e and test_worker_robustness (appended; nothing above changed) ---

def produce_tracked(bootstrap, topic, records):
    """Like produce(), but returns where each record landed: a list of (partition, offset) in the
    order of `records`. records: dicts (JSON body, keyed "<scope>/<key>") or (key, value, headers)."""
    producer = Producer({**client_config(bootstrap), "enable.idempotence": True, "linger.ms": 5})
    positions = []

    def on_delivery(index):
        def callback(err, message):
            if err is not None:
                raise RuntimeError(f"record {index} was not delivered: {err}")
            positions[index] = (message.partition(), message.offset())
        return callback

    for index, record in enumerate(records):
        if isinstance(record, dict):
            key, value, headers = f'{record.get("scope")}/{record.get("idempotency_key")}'.encode(), \
                json.dumps(record).encode(), None
        else:
            key, value, headers = record
        positions.append(None)
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery(index))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("not every record was delivered")
    if any(p is None for p in positions):
        raise RuntimeError("a record has no delivery report")
    return positions


class TopicReader(contextlib.AbstractContextManager):
    """Reads every partition of a topic from the beginning, without a group, and keeps what it read
    in `messages` (dicts: key, value, headers as a list of (name, bytes) in record order,
    partition, offset). wait_until() polls until a predicate over the messages holds."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.consumer = Consumer({**client_config(bootstrap), "group.id": "e2e-reader-" + uuid.uuid4().hex,
                                  "enable.auto.commit": False, "enable.partition.eof": False})
        metadata = self.consumer.list_topics(topic, timeout=10)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        self.messages = []

    def poll(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            message = self.consumer.poll(min(0.2, max(0.01, deadline - time.time())))
            if message is None or message.error() is not None:
                continue
            self.messages.append({"key": message.key(), "value": message.value(),
                                  "headers": list(message.headers() or []),
                                  "partition": message.partition(), "offset": message.offset()})
        return self.messages

    def wait_until(self, predicate, timeout, what):
        deadline = time.time() + timeout
        while True:
            if predicate(self.messages):
                return self.messages
            if time.time() >= deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what} "
                                   f"({len(self.messages)} record(s) read from {self.topic})")
            self.poll(0.5)

    def wait_for_count(self, count, timeout=60):
        return self.wait_until(lambda m: len(m) >= count, timeout, f"{count} record(s) on {self.topic}")

    def settle(self, idle=2.0, timeout=60):
        """Reads until nothing new arrived for `idle` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            before = len(self.messages)
            self.poll(idle)
            if len(self.messages) == before:
                break
        return self.messages

    def __exit__(self, *exc):
        self.consumer.close()


def result_sources(messages):
    """The (topic, partition, offset) input positions that results were published for."""
    sources = set()
    for message in messages:
        source = json.loads(message["value"])["source"]
        sources.add((source["topic"], source["partition"], source["offset"]))
    return sources


def committed_offsets(bootstrap, group, topic):
    """The consumer group's committed offsets of `topic`: {partition: offset} (negative: none)."""
    consumer = Consumer({**client_config(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=20)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def end_offsets(bootstrap, topic):
    """{partition: high watermark} of `topic`."""
    consumer = Consumer({**client_config(bootstrap), "group.id": "e2e-wm-" + uuid.uuid4().hex})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


# --- HTTP and the Prometheus text format (the worker's /metrics) ---------------------------------

def http_get(url, timeout=5):
    """(status, body text); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value):
    return value.replace(r"\n", "\n").replace(r'\"', '"').replace("\\\\", "\\")


def parse_metrics(text):
    """The Prometheus text format (0.0.4) as {name: {frozenset(labels.items()): value}}."""
    samples = collections.defaultdict(dict)
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if not match:
            raise AssertionError(f"unparseable /metrics line: {line!r}")
        name, labels_text, value = match.groups()
        labels = {}
        if labels_text:
            consumed = 0
            for label in _LABEL.finditer(labels_text):
                if label.start() != consumed:
                    raise AssertionError(f"unparseable labels in /metrics line: {line!r}")
                labels[label.group(1)] = _unescape(label.group(2))
                consumed = label.end()
            if consumed != len(labels_text):
                raise AssertionError(f"unparseable labels in /metrics line: {line!r}")
        samples[name][frozenset(labels.items())] = float(value)
    return samples


def scrape_metrics(worker):
    """A worker's /metrics, parsed (parse_metrics); asserts it answered 200."""
    status, body = http_get(worker.metrics_url("/metrics"))
    if status != 200:
        raise AssertionError(f"/metrics answered {status}: {body[:200]}")
    return parse_metrics(body)


def http_status(url, timeout=2.0):
    """The HTTP status code of GET url, or None when nothing answered."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


# --- Real Apache Kafka (scripts/kafka): the same test bodies on a real broker ------------------
# DEDUP_E2E_BROKER=dev (default: the dev broker, one process per test) or kafka (one real broker
# JVM per test module, fresh topics per test); DEDUP_E2E_KAFKA_VERSION picks the Kafka version
# (default: scripts/kafka's newest tested one).

KAFKA_SCRIPT = os.path.join(ROOT, "scripts", "kafka")
DEFAULT_TOPICS = ("commands:4", "commands.results:4", "commands.dlq:1")
# docs/operations.md: results and dead letters need room for a command of --max-message-bytes
# plus 64 KiB; real Kafka enforces max.message.bytes (the dev broker does not).
RESULT_TOPIC_CONFIG = "max.message.bytes=1114112"


def broker_kind():
    kind = os.environ.get("DEDUP_E2E_BROKER", "dev")
    if kind not in ("dev", "kafka"):
        raise RuntimeError(f"DEDUP_E2E_BROKER={kind!r}: expected dev or kafka")
    return kind


def kafka_tool():
    """scripts/kafka as a module: its client settings and AdminClient topic creation."""
    import importlib.machinery
    import importlib.util
    import sys
    module = sys.modules.get("dedup_kafka_tool")
    if module is None:
        loader = importlib.machinery.SourceFileLoader("dedup_kafka_tool", KAFKA_SCRIPT)
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(module)
        sys.modules[loader.name] = module
    return module


def _kafka_topic_spec(spec):
    name, _, rest = spec.partition(":")
    if (name.endswith(".results") or name.endswith(".dlq")) and rest.count(":") == 0:
        return f"{name}:{rest or 1}:{RESULT_TOPIC_CONFIG}"
    return spec


class RealKafka(contextlib.AbstractContextManager):
    """A real Apache Kafka broker (scripts/kafka start: KRaft, one JVM, 127.0.0.1) with the
    interface of Broker: bootstrap, dir, topics created at start, freeze()/thaw() (SIGSTOP and
    SIGCONT of the JVM), __exit__ stops it and removes dir unless the test failed. Also:
    client_config (what a client of it needs, secured or not), worker_env (the same as
    DEDUP_KAFKA_* variables for the worker), kill() and start() (SIGKILL; restart on the same
    data), create_topics()/recreate_topics()."""
    kind = "kafka"

    def __init__(self, topics=DEFAULT_TOPICS, version=None, security="plaintext"):
        self.dir = tempfile.mkdtemp(prefix="dedup-e2e-kafka.")
        self.security = security
        self.version = version or os.environ.get("DEDUP_E2E_KAFKA_VERSION") or None
        self.start(topics)

    def start(self, topics=()):
        args = [KAFKA_SCRIPT, "start", "--dir", self.dir, "--security", self.security]
        if self.version:
            args += ["--version", self.version]
        for topic in topics:
            args += ["--topic", _kafka_topic_spec(topic)]
        began = time.time()
        out = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/kafka start failed (exit {out.returncode}):\n{out.stderr[-6000:]}")
        self.start_seconds = time.time() - began
        self.info = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        self.bootstrap = self.info["bootstrap"]
        self.version = self.info["version"]
        self.pid = int(self.info["pid"])

    @property
    def client_config(self):
        tool = kafka_tool()
        return tool.client_config(tool.read_info(self.dir))

    @property
    def admin_config(self):
        """The test bed's own path to the broker (its loopback PLAINTEXT listener if secured)."""
        tool = kafka_tool()
        return tool.admin_config(tool.read_info(self.dir))

    @property
    def worker_env(self):
        """client_config as DEDUP_KAFKA_* variables (docs/contract.md §6), without the bootstrap
        servers (--brokers)."""
        return {"DEDUP_KAFKA_" + key.upper().replace(".", "_"): value
                for key, value in self.client_config.items() if key != "bootstrap.servers"}

    def create_topics(self, specs):
        try:
            kafka_tool().create_topics(self.admin_config, [_kafka_topic_spec(s) for s in specs])
        except SystemExit:
            raise RuntimeError(f"creating topics {list(specs)} failed (see stderr)") from None

    def recreate_topics(self, specs):
        """Deletes the topics (if they exist: a test before this one used them), which also drops
        every consumer group's offsets on them, then creates them anew."""
        from confluent_kafka.admin import AdminClient
        names = [s.split(":", 1)[0] for s in specs]
        admin = AdminClient(self.admin_config)
        existing = [n for n in names if n in admin.list_topics(timeout=10).topics]
        if existing:
            for future in admin.delete_topics(existing, operation_timeout=30).values():
                future.result()
            wait_for(lambda: not set(existing) & set(admin.list_topics(timeout=10).topics), 30,
                     f"topics {existing} to be deleted")
        self.create_topics(specs)

    def _signal(self, sig):
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def freeze(self):
        self._signal(signal.SIGSTOP)

    def thaw(self):
        self._signal(signal.SIGCONT)

    def kill(self):
        """SIGKILL, and wait until the JVM is gone (it is not our child: scripts/kafka started it)."""
        self._signal(signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{self.pid}") or
                 open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
                 30, "the killed broker to go away")

    def stop(self):
        subprocess.run([KAFKA_SCRIPT, "stop", "--dir", self.dir], capture_output=True, timeout=120)

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)


class KafkaTopics(contextlib.AbstractContextManager):
    """One test's share of its module's real broker, with the interface of Broker: the topics
    created fresh (those of an earlier test deleted first, with the consumer groups' offsets on
    them), a directory of its own for worker logs (kept if the test failed), freeze()/thaw() of
    the shared JVM."""
    kind = "kafka"

    def __init__(self, broker, topics=DEFAULT_TOPICS):
        self.broker = broker
        self.bootstrap = broker.bootstrap
        self.worker_env = broker.worker_env
        self.client_config = broker.client_config
        self.dir = tempfile.mkdtemp(prefix="dedup-e2e.")
        broker.recreate_topics(topics)

    def freeze(self):
        self.broker.freeze()

    def thaw(self):
        self.broker.thaw()

    def __exit__(self, *exc):
        self.broker.thaw()
        if exc[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.broker.keep_dir = True  # its server.log belongs to the failure


_shared_kafka = None


def shared_kafka():
    """The module's real broker, started on first use (one JVM per test module: starting one
    costs seconds)."""
    global _shared_kafka
    if _shared_kafka is None:
        import atexit
        import sys
        _shared_kafka = RealKafka(topics=())
        atexit.register(stop_shared_broker)
        print(f"[Apache Kafka {_shared_kafka.version} at {_shared_kafka.bootstrap}, "
              f"up in {_shared_kafka.start_seconds:.1f}s]", file=sys.stderr, flush=True)
    return _shared_kafka


def start_shared_broker():
    """setUpModule of a suite that runs on either broker: starts the real broker if
    DEDUP_E2E_BROKER=kafka (nothing for the dev broker, which runs per test)."""
    if broker_kind() == "kafka":
        shared_kafka()


def stop_shared_broker():
    """tearDownModule: stops the module's real broker (its directory stays if a test failed)."""
    global _shared_kafka
    broker, _shared_kafka = _shared_kafka, None
    if broker is not None:
        broker.stop()
        if not getattr(broker, "keep_dir", False):
            shutil.rmtree(broker.dir, ignore_errors=True)


def make_broker(topics=DEFAULT_TOPICS):
    """The broker a test runs against, chosen by DEDUP_E2E_BROKER: a dev broker of its own, or
    fresh topics on the module's real Apache Kafka broker. Use as a context manager."""
    if broker_kind() == "dev":
        return Broker(topics)
    return KafkaTopics(shared_kafka(), topics)
