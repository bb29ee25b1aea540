"""What only a real Apache Kafka broker can show, and the compatibility matrix of
docs/operations.md ("Apache Kafka compatibility"): one test per feature, run once per broker
version (ctest: e2e_kafka_real_<version>; DEDUP_E2E_KAFKA_VERSION, default scripts/kafka's newest).

Real parts only: the dedup-worker binary, Apache Kafka from Maven Central started by
scripts/kafka (KRaft, one JVM), PostgreSQL, and clients nobody here wrote (kcat and
python3-confluent-kafka, both on Debian 12's librdkafka 2.0.2, like the worker).

Known and pinned here (docs/operations.md): librdkafka before 2.6.1 answers SCRAM's server-first
message with the client nonce prepended once more to the server's nonce. Kafka 3.8.1 to 3.9.x
accept that (they check only that the nonce ends with theirs); Kafka 4.x compares exactly, as RFC
5802 requires, and refuses the login as "invalid credentials". So SASL/SCRAM works on 3.9 and
cannot work on 4.x with Debian 12's librdkafka: test_sasl_scram and test_scram_nonce show which.
"""
import collections
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest
import uuid

import harness
from harness import (Database, RealKafka, TopicReader, Worker, command, produce_tracked, wait_for)

COMMANDS = "commands"
RESULTS = "commands.results"
DLQ = "commands.dlq"
VERSION = os.environ.get("DEDUP_E2E_KAFKA_VERSION") or harness.kafka_tool().DEFAULT_VERSION
MAJOR = int(VERSION.split(".")[0])
# See the module's docstring: librdkafka 2.0.2's SCRAM nonce is accepted by Kafka 3.x only.
SCRAM_WORKS = MAJOR < 4
# How long a worker may take to give up on a broker it cannot log in to (bad password, untrusted
# certificate): the contract is "a clear message and a non-zero exit code, never a hang".
GIVE_UP_SECONDS = 30


class RealKafkaCase(unittest.TestCase):
    """One broker per class (security per class), fresh topics and database per test."""
    security = "plaintext"
    broker = None

    @classmethod
    def setUpClass(cls):
        harness.worker_bin()                    # fails (never skips) without the environment
        harness.require_env("DEDUP_TEST_DB")
        cls.broker = RealKafka(topics=(), version=VERSION, security=cls.security)

    failed = False

    @classmethod
    def tearDownClass(cls):
        if cls.broker is not None:
            # Its directory (server.log, the workers' logs) stays when a test failed.
            cls.broker.__exit__(AssertionError if cls.failed else None, None, None)

    def setUp(self):
        started = time.time()
        # Registered first, so it runs last: the time includes stopping the workers.
        self.addCleanup(lambda: print(f" [{time.time() - started:.1f}s]", end=" ", flush=True))
        self.broker.recreate_topics(harness.DEFAULT_TOPICS)
        self.db = self.enterContext(Database())
        self.workers = []

    def tearDown(self):
        if not self._outcome.success:
            type(self).failed = True

    def start_worker(self, *extra, env=None, name="worker"):
        worker = self.enterContext(Worker(self.broker, self.db.conninfo, extra_args=extra, env=env, name=name))
        self.workers.append(worker)
        return worker

    def logs(self, chars=3000):
        return "\n".join(f"--- {w.log_path} (exit {w.process.poll()})\n" + w.log_text()[-chars:]
                         for w in self.workers)

    def client(self):
        """What a client of this broker needs (TLS and SASL settings included)."""
        return self.broker.client_config

    def produce(self, records):
        return [(COMMANDS, p, o) for p, o in produce_tracked(self.client(), COMMANDS, records)]

    def wait_results(self, reader, sources, timeout=90):
        wanted = set(sources)
        try:
            reader.wait_until(lambda m: wanted <= harness.result_sources(m), timeout,
                              f"results for {len(wanted)} record(s)")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None
        return harness.results_by_source(reader.messages)

    def wait_committed(self, group="dedup-worker", timeout=60):
        end = harness.end_offsets(self.client(), COMMANDS)
        wait_for(lambda: all(harness.committed_offsets(self.client(), group, COMMANDS).get(p, -1) >= o
                             for p, o in end.items() if o > 0),
                 timeout, f"committed offsets to reach {end}", interval=0.5)

    def end_to_end(self, count=40, env=None, extra=()):
        """A worker processes `count` commands (every fifth one a duplicate); checks every result,
        the entities and the committed offsets. Returns the worker."""
        worker = self.start_worker(*extra, env=env)
        records = [command(f"k-{i % (count - count // 5)}", f"todo {i % (count - count // 5)}")
                   for i in range(count)]
        sources = self.produce(records)
        with TopicReader(self.client(), RESULTS) as results:
            found = self.wait_results(results, sources)
        statuses = collections.Counter(found[s]["status"] for s in sources)
        self.assertEqual(statuses, {"created": count - count // 5, "duplicate": count // 5}, self.logs())
        self.assertEqual(self.db.count("public.todos"), count - count // 5)
        self.wait_committed()
        return worker

    def assert_reports(self, worker, text):
        """The worker's log says why it cannot use the broker, within seconds."""
        try:
            wait_for(lambda: text in worker.log_text(), 20, f"'{text}' in the worker's log")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{worker.log_text()[-3000:]}") from None

    def assert_gives_up(self, worker):
        """The worker exits non-zero within GIVE_UP_SECONDS."""
        try:
            code = worker.wait(GIVE_UP_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        log = worker.log_text()
        self.assertIsNotNone(code, f"the worker still runs after {GIVE_UP_SECONDS}s: it retries forever "
                                   f"instead of failing\n{log[-3000:]}")
        self.assertNotEqual(code, 0, log[-3000:])


# --- The compatibility matrix: groups, cooperative rebalancing, idempotent producer -------------

class CompatibilityTest(RealKafkaCase):

    def test_protocol_features(self):
        """Which of librdkafka 2.0.2's protocol features the broker's API versions switch on.
        Kafka 4 dropped old API versions (KIP-896); librdkafka 2.0.2 enables a feature only if
        the broker still has the exact old version it looks for."""
        out = subprocess.run(["kcat", "-b", self.broker.bootstrap, "-L", "-m", "10", "-d", "feature"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        enabled = set(re.findall(r"Enabling feature (\w+)", out.stderr))
        disabled = set(re.findall(r"Disabling feature (\w+)", out.stderr)) - enabled
        needed = {"MsgVer2", "ApiVersion", "BrokerBalancedConsumer", "BrokerGroupCoordinator", "LZ4",
                  "IdempotentProducer", "ZSTD", "SaslHandshake", "SaslAuthReq", "OffsetTime"}
        self.assertLessEqual(needed, enabled, f"disabled: {sorted(disabled)}")
        # Kafka 4 no longer has Fetch v0-v3: the pre-0.11 message format and throttle-time
        # features look for those and are off. Harmless: MsgVer2 supersedes both.
        self.assertEqual(disabled, {"MsgVer1", "ThrottleTime"} if MAJOR >= 4 else set())

    def test_consumer_groups(self):
        """Two workers in one group (librdkafka's default eager assignors) share the partitions
        and process everything exactly once; the group's offsets reach the end."""
        a = self.start_worker(name="a")
        b = self.start_worker(name="b")
        for worker in (a, b):
            wait_for(lambda: "kafka: assigned" in worker.log_text(), 60, f"{worker.log_path} assigned")
        records = [command(f"g-{i}", f"todo {i}") for i in range(200)]
        sources = self.produce(records)
        with TopicReader(self.client(), RESULTS) as results:
            found = self.wait_results(results, sources)
            results.settle(idle=2)
            self.assertEqual(len(results.messages), len(records), "one result per record")
        self.assertEqual(collections.Counter(r["status"] for r in found.values()), {"created": 200})
        by_partition = collections.defaultdict(set)
        for (_, partition, _), result in found.items():
            by_partition[partition].add(result["idempotency_key"])
        self.assertEqual(len(by_partition), 4)
        self.wait_committed()
        # Both members held partitions at the end (4 partitions, 2 members: 2 each with range).
        for worker in (a, b):
            self.assertRegex(worker.log_text(), r"kafka: assigned \d+ partition\(s\), [1-9]\d* in total")

    def test_cooperative_rebalancing(self):
        """partition.assignment.strategy=cooperative-sticky: when a second worker joins, the first
        gives up only the partitions that move (incremental), and nothing is processed twice."""
        extra = ("-X", "partition.assignment.strategy=cooperative-sticky")
        a = self.start_worker(*extra, name="a")
        wait_for(lambda: "kafka: assigned 4 partition(s), 4 in total" in a.log_text(), 60,
                 "the first worker to own all 4 partitions")
        first = self.produce([command(f"c-{i}", f"todo {i}") for i in range(100)])
        with TopicReader(self.client(), RESULTS) as results:
            self.wait_results(results, first)
            b = self.start_worker(*extra, name="b")
            wait_for(lambda: re.search(r"kafka: assigned [1-9] partition\(s\)", b.log_text()), 60,
                     "the second worker's incremental assignment")
            second = self.produce([command(f"c-{i}", f"todo {i}") for i in range(100, 200)])
            found = self.wait_results(results, first + second)
            results.settle(idle=2)
            self.assertEqual(len(results.messages), 200, "nothing processed twice")
        revoked = re.findall(r"kafka: revoked (\d+) partition\(s\), (\d+) left", a.log_text())
        self.assertTrue(revoked, a.log_text()[-3000:])
        moved, kept = map(int, revoked[0])
        self.assertEqual((moved + kept, moved > 0, kept > 0), (4, True, True),
                         "incremental: some partitions moved, the rest stayed with the first worker")
        self.assertEqual(collections.Counter(r["status"] for r in found.values()), {"created": 200})
        self.wait_committed()

    def test_idempotent_producer(self):
        """The worker's results are written by an idempotent producer: every record batch the
        broker stored carries a producer id and sequence numbers (read from its log segments:
        Kafka 4 moved DumpLogSegments out of the broker's jars); and some are LZ4-compressed,
        which librdkafka 2.0.2 still does on Kafka 4 (which keeps Produce v0-v2 advertised for
        exactly that, KAFKA-18659)."""
        self.end_to_end(count=200)
        batches = []
        for partition in range(4):
            segment = os.path.join(self.broker.dir, "data", f"{RESULTS}-{partition}", "00000000000000000000.log")
            batches += record_batches(segment)
        self.assertTrue(batches)
        for batch in batches:
            self.assertEqual(batch["magic"], 2, batch)
            self.assertGreaterEqual(batch["producer_id"], 0, batch)
            self.assertGreaterEqual(batch["base_sequence"], 0, batch)
            self.assertFalse(batch["transactional"], batch)
        self.assertEqual(len({b["producer_id"] for b in batches}), 1, "one worker, one producer id")
        # Per partition, sequences continue batch after batch: what the broker checked.
        for partition in {b["partition"] for b in batches}:
            mine = [b for b in batches if b["partition"] == partition]
            for before, after in zip(mine, mine[1:]):
                self.assertEqual(after["base_sequence"], before["base_sequence"] + before["count"])
        self.assertIn("lz4", {b["codec"] for b in batches})


def record_batches(segment):
    """The record batches (format v2) of a Kafka log segment file: the fixed batch header of
    Kafka's message format documentation, big-endian."""
    import struct
    codecs = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    partition = int(os.path.basename(os.path.dirname(segment)).rsplit("-", 1)[1])
    batches = []
    with open(segment, "rb") as f:
        data = f.read()
    position = 0
    while position + 61 <= len(data):
        base_offset, length, _epoch, magic, _crc, attributes, _last_delta, _first_ts, _max_ts, \
            producer_id, _producer_epoch, base_sequence, count = struct.unpack_from(">qiibIhiqqqhii", data, position)
        if length <= 0:
            break  # the preallocated, unwritten tail
        batches.append({"partition": partition, "base_offset": base_offset, "magic": magic,
                        "codec": codecs.get(attributes & 0x7, "?"), "transactional": bool(attributes & 0x10),
                        "producer_id": producer_id, "base_sequence": base_sequence, "count": count})
        position += 12 + length
    return batches


# --- The key-TTL-versus-retention warning (DescribeConfigs answers on a real broker) ------------

class KeyTtlWarningTest(RealKafkaCase):
    WARNING = "--key-ttl does not exceed the commands topic's retention"
    FINE = "--key-ttl exceeds the commands topic's retention"
    FOREVER = "keeps records forever"

    def with_retention(self, retention_ms):
        self.broker.recreate_topics([f"{COMMANDS}:4:retention.ms={retention_ms}", "commands.results:4",
                                     "commands.dlq:1"])

    def check(self, key_ttl, expected, absent):
        worker = self.start_worker("--key-ttl", key_ttl, name=f"ttl-{key_ttl}")
        try:
            wait_for(lambda: expected in worker.log_text(), 30, f"'{expected}' in the log")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{worker.log_text()[-3000:]}") from None
        log = worker.log_text()
        for text in absent:
            self.assertNotIn(text, log)
        self.assertNotIn("could not read the commands topic's retention.ms", log)
        return log

    def test_key_ttl_shorter_than_retention_warns(self):
        self.with_retention(86_400_000)  # 1 day
        log = self.check("1h", self.WARNING, [self.FINE])
        self.assertRegex(log, r"warn.*--key-ttl does not exceed.*retention=1d")

    def test_key_ttl_longer_than_retention_does_not_warn(self):
        self.with_retention(86_400_000)
        self.check("2d", self.FINE, [self.WARNING, self.FOREVER])

    def test_infinite_retention_warns(self):
        self.with_retention(-1)
        self.check("30d", self.FOREVER, [self.FINE, self.WARNING])


# --- Results and dead letters read back by clients nobody here wrote ----------------------------

class ReadBackTest(RealKafkaCase):
    """Results and dead letters as kcat and python3-confluent-kafka see them, with
    isolation.level=read_committed (librdkafka's default) and read_uncommitted: the worker's
    producer is idempotent, not transactional, so both must see exactly the same records."""

    def kcat(self, topic, isolation):
        out = subprocess.run(["kcat", "-b", self.broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
                              "-J", "-q", "-X", f"isolation.level={isolation}"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        return {(m["partition"], m["offset"]): (m["key"], m["payload"])
                for m in map(json.loads, out.stdout.splitlines())}

    def python(self, topic, isolation):
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "e2e-" + uuid.uuid4().hex,
                             "enable.auto.commit": False, "isolation.level": isolation,
                             "enable.partition.eof": True})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            seen, at_end, deadline = {}, set(), time.time() + 60
            while len(at_end) < len(partitions) and time.time() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error():
                    at_end.add(message.partition())  # _PARTITION_EOF
                    continue
                seen[(message.partition(), message.offset())] = (
                    message.key().decode() if message.key() is not None else None, message.value().decode())
            return seen
        finally:
            consumer.close()

    def test_results_and_dead_letters_read_back(self):
        self.start_worker()
        records = [command(f"rb-{i}", f"todo {i}") for i in range(30)]
        records += [command("rb-1", "todo 1")]                                      # duplicate
        records += [(f"bad-{i}".encode(), b"{not json", [("trace", b"t-1")]) for i in range(5)]
        sources = self.produce(records)
        with TopicReader(self.client(), RESULTS) as results:
            found = self.wait_results(results, sources)
            results.settle(idle=2)
            expected_results = {(m["partition"], m["offset"]): m["value"].decode() for m in results.messages}
        self.assertEqual(collections.Counter(r["status"] for r in found.values()),
                         {"created": 30, "duplicate": 1, "rejected": 5})
        with TopicReader(self.client(), DLQ) as dlq:
            dlq.wait_for_count(5, timeout=30)
            dlq.settle(idle=1.5)
            expected_dead = {(m["partition"], m["offset"]): m["value"].decode() for m in dlq.messages}
        self.assertEqual(len(expected_dead), 5)
        for isolation in ("read_committed", "read_uncommitted"):
            for reader in (self.kcat, self.python):
                with self.subTest(reader=reader.__name__, isolation=isolation):
                    got = reader(RESULTS, isolation)
                    self.assertEqual({k: v for k, (_, v) in got.items()}, expected_results)
                    for (key, value) in got.values():
                        result = json.loads(value)
                        if result["status"] != "rejected":
                            self.assertEqual(key, f'{result["scope"]}/{result["idempotency_key"]}')
                    dead = reader(DLQ, isolation)
                    self.assertEqual({k: v for k, (_, v) in dead.items()}, expected_dead)
                    self.assertEqual(sorted(k for k, _ in dead.values()), [f"bad-{i}" for i in range(5)])


# --- TLS ------------------------------------------------------------------------------------------

def other_ca(directory):
    """A CA that did not sign the broker's certificate."""
    path = os.path.join(directory, "other-ca.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=not the broker's CA", "-keyout", os.path.join(directory, "other-ca.key"),
                    "-out", path], check=True, capture_output=True)
    return path


class TlsTest(RealKafkaCase):
    """An SSL listener, certificates made with openssl at start; the worker gets the CA only
    through DEDUP_KAFKA_* variables."""
    security = "ssl"

    def test_tls(self):
        env = self.broker.worker_env
        self.assertEqual(set(env), {"DEDUP_KAFKA_SECURITY_PROTOCOL", "DEDUP_KAFKA_SSL_CA_LOCATION"})
        worker = self.end_to_end(env=env)
        self.assertNotIn(self.broker.info["ca"], " ".join(worker.process.args))

    def untrusted(self):
        env = {**self.broker.worker_env, "DEDUP_KAFKA_SSL_CA_LOCATION": other_ca(self.broker.dir)}
        return self.start_worker(env=env)

    def test_untrusted_ca_is_reported(self):
        self.assert_reports(self.untrusted(), "certificate verify failed")

    def test_untrusted_ca_exits_nonzero(self):
        self.assert_gives_up(self.untrusted())


# --- SASL/SCRAM-SHA-512 over TLS ------------------------------------------------------------------

class SaslScramTest(RealKafkaCase):
    """A SASL_SSL listener with SCRAM-SHA-512; the user made by Kafka's StorageTool at format
    time; the worker gets user, password and CA only through DEDUP_KAFKA_* variables."""
    security = "sasl_ssl"

    def test_sasl_scram(self):
        env = self.broker.worker_env
        self.assertEqual(env["DEDUP_KAFKA_SASL_PASSWORD"], self.broker.info["password"])
        if SCRAM_WORKS:
            worker = self.end_to_end(env=env)
            self.assertNotIn(self.broker.info["password"], " ".join(worker.process.args))
            return
        # Kafka 4.x: librdkafka 2.0.2 cannot log in, even with the right password (test_scram_nonce
        # shows why). The worker must say so; the broker logs the refusal.
        worker = self.start_worker(env=env)
        wait_for(lambda: "SASL authentication error" in worker.log_text(), 30, "the SASL error in the log")
        self.assertIn("invalid credentials with SASL mechanism SCRAM-SHA-512", worker.log_text())
        with open(os.path.join(self.broker.dir, "server.log")) as log:
            self.assertIn("Failed authentication with /127.0.0.1", log.read())
        self.assertEqual(harness.committed_offsets(self.broker.admin_config, "dedup-worker", COMMANDS),
                         {0: -1001, 1: -1001, 2: -1001, 3: -1001}, "nothing consumed")

    def test_kcat_reads_with_scram(self):
        """Debian's kcat with the broker's client.properties (what an operator would do)."""
        out = subprocess.run(["kcat", "-F", os.path.join(self.broker.dir, "client.properties"), "-L", "-m", "5"],
                             capture_output=True, text=True, timeout=60)
        if SCRAM_WORKS:
            self.assertEqual(out.returncode, 0, out.stderr[-2000:])
            self.assertIn(f'topic "{COMMANDS}" with 4 partitions', out.stdout)
        else:
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("invalid credentials with SASL mechanism SCRAM-SHA-512", out.stderr)

    def wrong_password(self):
        return self.start_worker(env={**self.broker.worker_env, "DEDUP_KAFKA_SASL_PASSWORD": "wrong"})

    def test_wrong_password_is_reported(self):
        self.assert_reports(self.wrong_password(), "SASL authentication error: Authentication failed")

    def test_wrong_password_exits_nonzero(self):
        self.assert_gives_up(self.wrong_password())


# --- Why SCRAM fails on Kafka 4.x: the nonce, read off the wire -----------------------------------

class RecordingRelay:
    """A TCP relay on 127.0.0.1 that keeps the bytes each side sent (SASL_PLAINTEXT: SCRAM's
    messages are readable inside the SaslAuthenticate frames)."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent = {"client": bytearray(), "server": bytearray()}
        self.sockets = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for source, sink, name in ((client, server, "client"), (server, client, "server")):
                threading.Thread(target=self.pump, args=(source, sink, name), daemon=True).start()

    def pump(self, source, sink, name):
        try:
            while data := source.recv(65536):
                self.sent[name] += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        for s in [self.listener, *self.sockets]:
            s.close()


class ScramNonceTest(RealKafkaCase):
    security = "sasl_plaintext"

    def test_scram_nonce(self):
        """librdkafka 2.0.2's client-final-message carries client nonce + server nonce, where RFC
        5802 wants the server's nonce (which already starts with the client's) verbatim. Kafka
        3.9 lets that pass; Kafka 4 refuses it as invalid credentials."""
        relay = RecordingRelay(self.broker.bootstrap)
        self.addCleanup(relay.close)
        info = self.broker.info
        out = subprocess.run(["kcat", "-b", relay.address, "-L", "-m", "8", "-X", "security.protocol=SASL_PLAINTEXT",
                              "-X", "sasl.mechanism=SCRAM-SHA-512", "-X", f"sasl.username={info['user']}",
                              "-X", f"sasl.password={info['password']}"],
                             capture_output=True, text=True, timeout=60)
        printable = rb"[\x21-\x2b\x2d-\x7e]+"
        client_first = re.search(rb"n,,n=" + info["user"].encode() + rb",r=(" + printable + rb")",
                                 relay.sent["client"])
        server_first = re.search(rb"r=(" + printable + rb"),s=[A-Za-z0-9+/=]+,i=\d+", relay.sent["server"])
        client_final = re.search(rb"c=biws,r=(" + printable + rb"),p=", relay.sent["client"])
        self.assertTrue(client_first and server_first and client_final, (bytes(relay.sent["client"][-600:]),
                                                                       bytes(relay.sent["server"][-600:])))
        client_nonce, server_nonce, final_nonce = (m.group(1) for m in (client_first, server_first, client_final))
        self.assertTrue(server_nonce.startswith(client_nonce), "the server extends the client's nonce")
        self.assertEqual(final_nonce, client_nonce + server_nonce,
                         "librdkafka 2.0.2 prepends its own nonce again (fixed in librdkafka 2.6.1): "
                         "if this fails, librdkafka changed; SCRAM may work on Kafka 4 now")
        self.assertNotEqual(final_nonce, server_nonce)
        if SCRAM_WORKS:
            self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        else:
            self.assertNotEqual(out.returncode, 0, out.stdout)
            self.assertIn("invalid credentials with SASL mechanism SCRAM-SHA-512", out.stderr)


if __name__ == "__main__":
    unittest.main()
