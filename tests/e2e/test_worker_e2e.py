"""End to end: every outcome of SPEC §2–3 with its exact fields, the dead-letter topic byte for
byte, the command line of §6 (flags, env vars, exit codes, migrate, inspect) and a clean SIGTERM
shutdown whose committed offsets cover everything processed.

Real binary, dev broker process (or real Apache Kafka with DEDUP_E2E_BROKER=kafka), real Postgres
(harness.py). Needs DEDUP_WORKER_BIN and DEDUP_TEST_DB: without them every test fails (never skips).
"""
import collections
import json
import os
import re
import signal
import subprocess
import threading
import time
import unittest
import uuid
import warnings

import harness
from harness import (CONFIG_YAML, Database, TopicReader, Worker, command, make_broker, produce_tracked,
                     wait_for)

# One test body, two brokers: DEDUP_E2E_BROKER=dev (default) or kafka (harness.make_broker).
setUpModule = harness.start_shared_broker
tearDownModule = harness.stop_shared_broker

COMMANDS = "commands"
RESULTS = "commands.results"
DLQ = "commands.dlq"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RESULT_FIELDS = {
    "idempotency_key": (str, type(None)),
    "scope": (str, type(None)),
    "type": (str, type(None)),
    "status": (str,),
    "replayed": (bool,),
    "entity": (dict, type(None)),
    "error": (dict, type(None)),
    "first_processed_at": (str, type(None)),  # null exactly for rejected (nothing is stored)
    "processed_at": (str,),
    "source": (dict,),
}
STATUSES = {"created", "duplicate", "key_reused", "conflict", "rejected"}
DLQ_HEADERS = ["dedup-error-code", "dedup-error-message", "dedup-source-topic",
               "dedup-source-partition", "dedup-source-offset"]


class E2ETestCase(unittest.TestCase):
    """A broker, a database and readers per test; workers started by the test. Everything is
    closed by cleanups, in reverse order."""

    def setUp(self):
        # harness.Broker leaves its bootstrap file open: not ours to change, not worth the noise.
        warnings.filterwarnings("ignore", category=ResourceWarning, message=r"unclosed file .*bootstrap")
        harness.worker_bin()                    # fails (never skips) without the environment
        harness.require_env("DEDUP_TEST_DB")
        self.broker = self.enterContext(make_broker())
        self.db = self.enterContext(Database())
        self.results = self.enterContext(TopicReader(self.broker.bootstrap, RESULTS))
        self.workers = []

    def start_worker(self, *extra_args, env=None, name="worker"):
        worker = self.enterContext(Worker(self.broker, self.db.conninfo, extra_args=extra_args, env=env,
                                          name=name))
        self.workers.append(worker)
        return worker

    def produce(self, records):
        """Produces records; returns their sources ("commands", partition, offset) in order."""
        return [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, records)]

    def logs(self):
        return "\n".join(f"--- {w.log_path}\n" + w.log_text()[-4000:] for w in self.workers)

    def results_for(self, sources, timeout=60):
        """Waits until each source has a result; returns {source: (record key, result)} of the
        first result read for each (and checks any repeat is identical but processed_at)."""
        wanted = set(sources)
        try:
            self.results.wait_until(lambda m: wanted <= harness.result_sources(m), timeout,
                                    f"results for {len(wanted)} record(s)")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None
        harness.results_by_source(self.results.messages)  # asserts that repeats are identical
        found = {}
        for message in self.results.messages:
            result = json.loads(message["value"])
            source = (result["source"]["topic"], result["source"]["partition"], result["source"]["offset"])
            if source in wanted and source not in found:
                found[source] = (message["key"], result)
        return found

    def produce_checked(self, records):
        """Produces records, waits for their results, checks each against SPEC §2, and returns
        (record key, result) per record, in order."""
        sources = self.produce(records)
        found = self.results_for(sources)
        for source in sources:
            self.check_result(*found[source], source)
        return [found[s] for s in sources]

    def check_result(self, record_key, result, source):
        """Every field of SPEC §2 present with the right type; record key and source right."""
        self.assertEqual(set(result), set(RESULT_FIELDS), result)
        for field, types in RESULT_FIELDS.items():
            self.assertIsInstance(result[field], types, f"{field} in {result}")
        self.assertIn(result["status"], STATUSES)
        self.assertRegex(result["processed_at"], TIMESTAMP)
        if result["status"] == "rejected":
            self.assertIsNone(result["first_processed_at"], result)
        else:
            self.assertRegex(result["first_processed_at"], TIMESTAMP)
            self.assertLessEqual(result["first_processed_at"], result["processed_at"])
        self.assertEqual(result["source"], {"topic": source[0], "partition": source[1], "offset": source[2]})
        self.assertIsInstance(result["source"]["partition"], int)
        self.assertIsInstance(result["source"]["offset"], int)
        if result["scope"] is not None and result["idempotency_key"] is not None:
            self.assertEqual(record_key, f'{result["scope"]}/{result["idempotency_key"]}'.encode())
        else:
            self.assertIsNone(record_key, result)
        if result["status"] in ("created", "duplicate"):
            self.assertIsInstance(result["entity"], dict)
            self.assertIsNone(result["error"])
        else:
            self.assertIsNone(result["entity"])
            self.assertIsInstance(result["error"], dict)
            self.assertIsInstance(result["error"].get("code"), str)
            self.assertIsInstance(result["error"].get("message"), str)
        if result["status"] == "duplicate":
            self.assertIs(result["replayed"], True)
        elif result["status"] != "conflict":
            self.assertIs(result["replayed"], False)

    def row(self, sql):
        text = self.db.scalar(sql)
        return json.loads(text) if text else None


class OutcomeTest(E2ETestCase):

    def test_created_duplicate_key_reused_and_scopes(self):
        self.start_worker()
        key = str(uuid.uuid4())
        records = [
            command(key, "Buy milk", payload={"title": "Buy milk", "description": "From store"}),
            # The same command again, with its payload keys in another order: same fingerprint.
            {"payload": {"description": "From store", "title": "Buy milk"}, "type": "todo.create",
             "scope": "org-1", "idempotency_key": key},
            command(key, "Buy bread"),                  # same key, other payload
            command(key, "Buy milk", scope="org-2", payload={"title": "Buy milk", "description": "From store"}),
        ]
        created, duplicate, reused, other_scope = (r for _, r in self.produce_checked(records))

        self.assertEqual(created["status"], "created")
        self.assertFalse(created["replayed"])
        self.assertEqual((created["idempotency_key"], created["scope"], created["type"]),
                         (key, "org-1", "todo.create"))
        entity = created["entity"]
        self.assertIsInstance(entity["id"], int)
        self.assertEqual((entity["title"], entity["description"]), ("Buy milk", "From store"))
        self.assertEqual(self.row(f"SELECT to_jsonb(t) FROM public.todos t WHERE id = {entity['id']}"), entity)
        self.assertEqual(created["first_processed_at"], created["processed_at"])

        self.assertEqual(duplicate["status"], "duplicate")
        self.assertTrue(duplicate["replayed"])
        self.assertEqual(duplicate["entity"], entity)
        self.assertIsNone(duplicate["error"])
        self.assertEqual(duplicate["first_processed_at"], created["first_processed_at"])

        self.assertEqual(reused["status"], "key_reused")
        self.assertFalse(reused["replayed"])
        self.assertEqual(reused["error"]["code"], "key_reused")
        self.assertEqual(reused["first_processed_at"], created["first_processed_at"])
        self.assertIsNone(reused["entity"])

        self.assertEqual(other_scope["status"], "created", "the same key in another scope is another command")
        self.assertEqual(other_scope["scope"], "org-2")
        self.assertNotEqual(other_scope["entity"]["id"], entity["id"])

        self.assertEqual(self.db.count("public.todos"), 2)
        self.assertEqual(self.db.count("dedup.idempotency_keys"), 2)
        stored = self.row("SELECT to_jsonb(k) - 'fingerprint' FROM dedup.idempotency_keys k "
                          f"WHERE scope = 'org-1' AND idempotency_key = '{key}'")
        self.assertEqual(stored["status"], "created")
        self.assertEqual(stored["result"]["entity"], entity)
        # check_result verified created["source"] is the first record's position.
        self.assertEqual((stored["source_topic"], stored["source_partition"], stored["source_offset"]),
                         (created["source"]["topic"], created["source"]["partition"],
                          created["source"]["offset"]))
        # Nothing was rejected: the dead-letter topic stays empty.
        with TopicReader(self.broker.bootstrap, DLQ) as dlq:
            self.assertEqual(dlq.poll(2), [])

    def test_conflict_is_stored_and_replayed(self):
        self.start_worker()
        first = command("appt-1", None, ctype="appointment.create",
                        payload={"professional_id": 7, "starts_at": "2030-01-01T10:00:00Z",
                                 "ends_at": "2030-01-01T11:00:00Z"})
        overlapping = command("appt-2", None, ctype="appointment.create",
                              payload={"professional_id": 7, "starts_at": "2030-01-01T10:30:00Z",
                                       "ends_at": "2030-01-01T11:30:00Z"})
        # One at a time, so which one wins is not left to partition order.
        [s1] = self.produce([first])
        created = self.results_for([s1])[s1][1]
        [s2] = self.produce([overlapping])
        key2, conflict = self.results_for([s2])[s2]
        [s3] = self.produce([overlapping])  # another record with the conflicting key
        key3, replay = self.results_for([s3])[s3]
        self.check_result(key2, conflict, s2)
        self.check_result(key3, replay, s3)

        self.assertEqual(created["status"], "created")
        self.assertEqual(created["entity"]["professional_id"], 7)
        self.assertEqual(conflict["status"], "conflict")
        self.assertFalse(conflict["replayed"])
        self.assertIsNone(conflict["entity"])
        self.assertEqual(conflict["error"]["code"], "conflict")
        self.assertEqual(conflict["error"]["constraint"], "appointments_no_overlap")
        self.assertEqual(key2, b"org-1/appt-2")

        self.assertEqual(replay["status"], "conflict")
        self.assertTrue(replay["replayed"])
        self.assertEqual(replay["error"], conflict["error"])
        self.assertIsNone(replay["entity"])
        self.assertEqual(replay["first_processed_at"], conflict["first_processed_at"])

        self.assertEqual(self.db.count("public.appointments"), 1)
        self.assertEqual(self.db.scalar("SELECT status FROM dedup.idempotency_keys "
                                        "WHERE idempotency_key = 'appt-2'"), "conflict")
        with TopicReader(self.broker.bootstrap, DLQ) as dlq:
            self.assertEqual(dlq.poll(2), [], "a conflict is an outcome, not a dead letter")

    def test_natural_key_conversation(self):
        self.start_worker()
        payload = {"context_type": "ticket", "context_id": "T-9", "created_by": "u-1", "title": "Help"}
        records = [
            command(None, None, ctype="conversation.create", payload=payload),
            command(None, None, ctype="conversation.create", payload=dict(reversed(list(payload.items())))),
            command(None, None, ctype="conversation.create", payload={**payload, "created_by": "u-2"}),
            command(None, None, ctype="conversation.create",
                    payload={"context_type": "ticket", "context_id": "T-9", "title": "no author"}),
        ]
        # Same record key for all, so they stay in order on one partition.
        raw = [(b"conversations", json.dumps(r).encode(), None) for r in records]
        checked = self.produce_checked(raw)
        first, again, other, incomplete = (r for _, r in checked)
        self.assertEqual(first["status"], "created")
        self.assertRegex(first["idempotency_key"], r"^nk:[0-9a-f]{64}$")
        self.assertEqual(checked[0][0], f'org-1/{first["idempotency_key"]}'.encode())
        self.assertEqual(again["status"], "duplicate")
        self.assertTrue(again["replayed"])
        self.assertEqual(again["idempotency_key"], first["idempotency_key"])
        self.assertEqual(again["entity"], first["entity"])
        self.assertEqual(other["status"], "created")
        self.assertNotEqual(other["idempotency_key"], first["idempotency_key"])
        self.assertEqual(incomplete["status"], "rejected")
        self.assertEqual(incomplete["error"]["code"], "missing_key")
        self.assertEqual(self.db.count("public.conversations"), 2)

    def test_rejections_and_dead_letters(self):
        self.start_worker("--max-message-bytes", "400")
        headers = [("trace-id", b"\x00\x01\xfe\xff"), ("dup", b"1"), ("dup", b"2"), ("empty", b"")]
        valid_with_header_key = json.dumps({"scope": "org-1", "type": "todo.create",
                                            "payload": {"title": "from header"}}).encode()
        cases = [
            # (name, record, expected code or None for accepted, expected result key)
            ("bad json", (b"k-bad", b'{"idempotency_key": "x", not json', headers), "invalid_json", None),
            ("not an object", (None, b"[1,2,3]", None), "not_an_object", None),
            ("missing key", (b"k-mk", json.dumps(command(None, "no key")).encode(), headers),
             "missing_key", None),
            ("unknown type", (b"k-ut", json.dumps(command("ut-1", "x", ctype="nope.create")).encode(), None),
             "unknown_type", b"org-1/ut-1"),
            ("key mismatch", (b"k-km", json.dumps(command("body-key", "x")).encode(),
                              [("idempotency-key", b"header-key")]), "key_mismatch", None),
            ("missing scope", (b"k-ms", json.dumps({"idempotency_key": "ms-1", "type": "todo.create",
                                                    "payload": {"title": "x"}}).encode(), None),
             "missing_scope", None),
            ("too large", (b"k-big", json.dumps(command("big-1", "x" * 500)).encode(), headers),
             "too_large", None),
            ("null value", (b"k-null", None, None), "invalid_json", None),
            ("key from header", (b"k-hk", valid_with_header_key, [("idempotency-key", b"hk-1")]), None,
             b"org-1/hk-1"),
        ]
        sources = self.produce([record for _, record, _, _ in cases])
        found = self.results_for(sources)
        expected_dead = {}
        for (name, record, code, result_key), source in zip(cases, sources):
            with self.subTest(name):
                key, result = found[source]
                self.check_result(key, result, source)
                self.assertEqual(key, result_key)
                if code is None:
                    self.assertEqual(result["status"], "created")
                    self.assertEqual(result["idempotency_key"], "hk-1")
                    continue
                self.assertEqual(result["status"], "rejected")
                self.assertFalse(result["replayed"])
                self.assertEqual(result["error"]["code"], code, result["error"])
                self.assertTrue(result["error"]["message"])
                expected_dead[source] = (record, code)
        self.assertEqual(self.db.count("public.todos"), 1)
        self.assertEqual(self.db.count("dedup.idempotency_keys"), 1)

        with TopicReader(self.broker.bootstrap, DLQ) as dlq:
            dlq.wait_for_count(len(expected_dead), timeout=30)
            dlq.settle(idle=1.5, timeout=10)
            dead = {}
            for message in dlq.messages:
                extra = dict(message["headers"][-5:])
                source = (extra["dedup-source-topic"].decode(), int(extra["dedup-source-partition"]),
                          int(extra["dedup-source-offset"]))
                self.assertNotIn(source, dead, "one dead letter per rejected record")
                dead[source] = message
        self.assertEqual(set(dead), set(expected_dead))
        for source, ((key, value, headers), code) in expected_dead.items():
            message = dead[source]
            with self.subTest(dead_letter=code):
                self.assertEqual(message["key"], key)
                self.assertEqual(message["value"], value)
                original = list(headers or [])
                self.assertEqual(message["headers"][:len(original)], original, "original headers byte for byte")
                added = message["headers"][len(original):]
                self.assertEqual([name for name, _ in added], DLQ_HEADERS)
                added = dict(added)
                self.assertEqual(added["dedup-error-code"], code.encode())
                self.assertTrue(added["dedup-error-message"])
                self.assertEqual(added["dedup-source-topic"], COMMANDS.encode())
                self.assertEqual(added["dedup-source-partition"], str(source[1]).encode())
                self.assertEqual(added["dedup-source-offset"], str(source[2]).encode())

    def test_default_scope(self):
        self.start_worker("--default-scope", "tenant-x")
        no_scope = {"idempotency_key": "ds-1", "type": "todo.create", "payload": {"title": "scoped"}}
        with_scope = command("ds-2", "explicit", scope="org-9")
        header_scope = (b"hs", json.dumps({"idempotency_key": "ds-3", "type": "todo.create",
                                           "payload": {"title": "h"}}).encode(),
                        [("idempotency-scope", b"org-h")])
        (k1, r1), (k2, r2), (k3, r3) = self.produce_checked(
            [(b"ds", json.dumps(no_scope).encode(), None), with_scope, header_scope])
        self.assertEqual((r1["status"], r1["scope"], k1), ("created", "tenant-x", b"tenant-x/ds-1"))
        self.assertEqual((r2["status"], r2["scope"], k2), ("created", "org-9", b"org-9/ds-2"))
        self.assertEqual((r3["status"], r3["scope"], k3), ("created", "org-h", b"org-h/ds-3"))
        self.assertEqual(self.db.scalar("SELECT scope FROM dedup.idempotency_keys WHERE idempotency_key = 'ds-1'"),
                         "tenant-x")


class CommandLineTest(E2ETestCase):

    def run_cli(self, *args, env=None, timeout=60):
        return subprocess.run([harness.worker_bin(), *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def run_args(self, *extra, config=CONFIG_YAML, brokers=True):
        return ["--log-format", "text", "run", *(["--brokers", self.broker.bootstrap] if brokers else []),
                "--db", self.db.conninfo, "--config", config,
                "--metrics-addr", f"127.0.0.1:{harness.free_port()}", *extra]

    def test_env_var_configuration(self):
        # --db and --brokers only from DEDUP_DB / DEDUP_BROKERS (and the group from DEDUP_GROUP).
        log_path = os.path.join(self.broker.dir, "env-worker.log")
        port = harness.free_port()
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [harness.worker_bin(), "--log-format", "text", "run", "--config", CONFIG_YAML,
                 "--metrics-addr", f"127.0.0.1:{port}", "-X", "session.timeout.ms=6000"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "DEDUP_DB": self.db.conninfo, "DEDUP_BROKERS": self.broker.bootstrap,
                     "DEDUP_GROUP": "env-group", "DEDUP_DEFAULT_SCOPE": "env-scope"})
        try:
            sources = self.produce([(b"e", json.dumps({"idempotency_key": "env-1", "type": "todo.create",
                                                       "payload": {"title": "env"}}).encode(), None)])
            try:
                key, result = self.results_for(sources)[sources[0]]
            except AssertionError:
                raise AssertionError(open(log_path).read()[-4000:]) from None
            self.assertEqual(result["status"], "created")
            self.assertEqual(key, b"env-scope/env-1")
            wait_for(lambda: harness.committed_offsets(self.broker.bootstrap, "env-group", COMMANDS)
                     .get(sources[0][1], -1) > sources[0][2], 30, "offsets committed by group env-group")
            process.terminate()
            self.assertEqual(process.wait(40), 0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def test_invalid_configuration_exits_2_naming_the_field(self):
        bad_yaml = os.path.join(self.broker.dir, "both.yaml")
        with open(bad_yaml, "w") as f:
            f.write("commands:\n  todo.create:\n    table: public.todos\n"
                    "    sql: INSERT INTO public.todos (title) SELECT $1->>'title' RETURNING *\n")
        missing_table = os.path.join(self.broker.dir, "missing.yaml")
        with open(missing_table, "w") as f:
            f.write("commands:\n  todo.create:\n    table: public.no_such_table\n")
        cases = [
            ("bad --key-ttl", self.run_args("--key-ttl", "forever"), "--key-ttl"),
            ("too short --key-ttl", self.run_args("--key-ttl", "10s"), "--key-ttl"),
            ("table and sql", self.run_args(config=bad_yaml), "commands.todo.create"),
            ("missing table", self.run_args(config=missing_table), "commands.todo.create.table"),
            ("unknown -X", self.run_args("-X", "no.such.property=1"), "no.such.property"),
            ("-X not key=value", self.run_args("-X", "novalue"), "-X"),
            ("forced -X", self.run_args("-X", "enable.idempotence=false"), "enable.idempotence"),
            ("results = commands", self.run_args("--results-topic", "commands"), "--results-topic"),
            ("missing --brokers", self.run_args(brokers=False), "--brokers"),
            ("unknown flag", self.run_args("--no-such-flag"), "--no-such-flag"),
        ]
        for name, args, field in cases:
            with self.subTest(name):
                out = self.run_cli(*args)
                self.assertEqual(out.returncode, 2, f"{name}: stdout={out.stdout!r} stderr={out.stderr!r}")
                self.assertIn(field, out.stderr, name)
        # librdkafka properties also come from DEDUP_KAFKA_<PROPERTY> (for secrets): these reach
        # the clients only if the worker passes its environment through.
        for name, env, field in [
            ("refused setting via env", {"DEDUP_KAFKA_ENABLE_IDEMPOTENCE": "false"}, "enable.idempotence"),
            ("unknown property via env", {"DEDUP_KAFKA_NO_SUCH_PROPERTY": "1"}, "no.such.property"),
        ]:
            with self.subTest(name):
                out = self.run_cli(*self.run_args(), env=env)
                self.assertEqual(out.returncode, 2, f"{name}: stderr={out.stderr!r}")
                self.assertIn(field, out.stderr, name)
        # A bad flag is named before any connection is tried: a database that cannot be reached
        # must not hide it behind "cannot connect" (exit 1).
        unreachable_db = ["--log-format", "text", "run", "--brokers", self.broker.bootstrap,
                          "--db", f"host=127.0.0.1 port={harness.free_port()} connect_timeout=2",
                          "--config", CONFIG_YAML, "--metrics-addr", f"127.0.0.1:{harness.free_port()}"]
        for name, extra, field in [
            ("--max-batch 0, database down", ["--max-batch", "0"], "--max-batch"),
            ("results = commands, database down", ["--results-topic", "commands"], "--results-topic"),
            ("--cleanup-interval 0, database down", ["--cleanup-interval", "0s"], "--cleanup-interval"),
        ]:
            with self.subTest(name):
                out = self.run_cli(*unreachable_db, *extra)
                self.assertEqual(out.returncode, 2, f"{name}: stderr={out.stderr!r}")
                self.assertIn(field, out.stderr, name)
        with self.subTest("bad DEDUP_KEY_TTL env var"):
            out = self.run_cli(*self.run_args(), env={"DEDUP_KEY_TTL": "soon"})
            self.assertEqual(out.returncode, 2, out.stderr)
            self.assertIn("--key-ttl", out.stderr)

    def test_migrate_is_idempotent(self):
        schema = "dedup_m" + uuid.uuid4().hex[:6]
        first = self.run_cli("migrate", "--db", self.db.conninfo, "--db-schema", schema)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertRegex(first.stdout, r"[1-9]\d* migration\(s\) applied")
        version = self.db.scalar(f"SELECT max(version) FROM {schema}.schema_migrations")
        for _ in range(2):
            again = self.run_cli("migrate", "--db", self.db.conninfo, "--db-schema", schema)
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertIn("0 migration(s) applied", again.stdout)
            self.assertIn(f"at version {version}", again.stdout)
        self.assertEqual(self.db.scalar(f"SELECT count(*) = count(DISTINCT version) FROM {schema}.schema_migrations"),
                         "t")
        # The database the harness migrated: migrating again keeps its data.
        self.db.scalar("INSERT INTO dedup.idempotency_keys VALUES ('s','k','todo.create', decode(repeat('00',32),'hex'),"
                       " 'created', '{}', now(), now() + interval '1 day', 'commands', 0, 0)")
        again = self.run_cli("migrate", "--db", self.db.conninfo)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("0 migration(s) applied", again.stdout)
        self.assertEqual(self.db.count("dedup.idempotency_keys"), 1)

    def test_inspect_prints_the_stored_row(self):
        self.start_worker()
        [source] = self.produce([command("insp-1", "inspect me", scope="org-i")])
        _, result = self.results_for([source])[source]
        out = self.run_cli("inspect", "--db", self.db.conninfo, "--scope", "org-i", "--key", "insp-1")
        self.assertEqual(out.returncode, 0, out.stderr)
        row = json.loads(out.stdout)
        self.assertEqual((row["scope"], row["idempotency_key"], row["command_type"], row["status"]),
                         ("org-i", "insp-1", "todo.create", "created"))
        self.assertEqual(row["result"]["entity"], result["entity"])
        self.assertRegex(row["fingerprint"], r"^[0-9a-f]{64}$")
        self.assertEqual(row["source"], result["source"])
        self.assertIs(row["expired"], False)
        missing = self.run_cli("inspect", "--db", self.db.conninfo, "--scope", "org-i", "--key", "nope")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("nope", missing.stderr)

    def test_sigterm_drains_commits_and_nothing_is_processed_twice(self):
        worker = self.start_worker("--max-batch", "50")
        total, chunk = 1500, 100
        sources = []

        def feed():  # records keep flowing while the worker is told to stop
            for start in range(0, total, chunk):
                sources.extend(self.produce([command(f"st-{i}", f"todo {i}") for i in range(start, start + chunk)]))
                time.sleep(0.3)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            self.results.wait_until(lambda m: len(m) >= 200, 60, "the first results")
            stopped_at = time.time()
            worker.kill(signal.SIGTERM)
            code = worker.wait(45)
            elapsed = time.time() - stopped_at
        finally:
            feeder.join(120)
        self.assertEqual(code, 0, worker.log_text()[-3000:])
        self.assertLess(elapsed, 30 + 5, "exit within the drain timeout (30s by default)")
        self.assertEqual(len(sources), total)
        self.results.settle(idle=2, timeout=30)
        processed = harness.result_sources(self.results.messages)
        committed = harness.committed_offsets(self.broker.bootstrap, "dedup-worker", COMMANDS)
        for _, partition, offset in processed:
            self.assertLess(offset, committed.get(partition, -1),
                            f"result for {partition}/{offset} published but offset not committed: {committed}")
        # The committed offsets hold exactly the processed prefix of every partition.
        for partition, offset in committed.items():
            missing = [o for o in range(max(offset, 0)) if (COMMANDS, partition, o) not in processed]
            self.assertEqual(missing, [], f"partition {partition}: committed {offset} but no result")

        # A new worker on the same group: the rest, and nothing old again.
        self.start_worker("--max-batch", "50", name="second")
        found = self.results_for(sources, timeout=90)
        self.results.settle(idle=2, timeout=30)
        counts = collections.Counter()
        for message in self.results.messages:
            source = json.loads(message["value"])["source"]
            counts[(source["topic"], source["partition"], source["offset"])] += 1
        repeated = {s: n for s, n in counts.items() if n > 1}
        self.assertEqual(repeated, {}, "records processed again after a clean shutdown")
        self.assertEqual(len(self.results.messages), total)
        self.assertEqual(collections.Counter(r["status"] for _, r in found.values()), {"created": total})
        self.assertEqual(self.db.count("public.todos"), total)
        self.assertEqual(self.db.count("dedup.idempotency_keys"), total)

if __name__ == "__main__":
    unittest.main()
