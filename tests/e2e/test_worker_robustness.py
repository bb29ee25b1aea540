"""Tries hard to break exactly-once (SPEC §2, §4): crashes at every failpoint, a worker killed in
the middle of a Postgres transaction, consumer-group churn with SIGTERM and SIGKILL under load, a
frozen broker, and Postgres restarts (fast and immediate) under load.

After each scenario the same verification runs (verify()):
  - every input record has a result; a record read twice got the identical result except
    processed_at (harness.results_by_source);
  - exactly one entity per (scope, key) in Postgres, one key row per key, pointing at the record
    whose result was `created`;
  - every entity's `created` result reached the results topic (no creation became a duplicate);
  - every other record with that key is a `duplicate` carrying the original entity and
    first_processed_at (or `key_reused` when its payload differs);
  - the counts per status match the input; every rejected record is on the dead-letter topic.

Load per test is a few thousand records at most; the module runs in a few minutes.
"""
import collections
import json
import os
import random
import signal
import subprocess
import threading
import time
import unittest
import uuid
import warnings

import harness
from harness import (Database, PrivatePostgres, TopicReader, Worker, command, http_status, make_broker,
                     produce_tracked, wait_for)

# One test body, two brokers: DEDUP_E2E_BROKER=dev (default) or kafka (harness.make_broker).
setUpModule = harness.start_shared_broker
tearDownModule = harness.stop_shared_broker

COMMANDS = "commands"
RESULTS = "commands.results"
DLQ = "commands.dlq"
SCOPE = "org-r"


# --- Workload --------------------------------------------------------------------------------

class Workload:
    """Records and what each one must become. keys distinct todo keys; `repeats` extra records
    repeating a key with the same payload (payload keys reordered), `reused` records repeating
    a key with another payload, `bad` records that are not JSON. With `cross_partition`, a third
    of the records get a random record key, so one idempotency key travels on several partitions
    (which record wins is then not determined, and there are no key_reused records)."""

    def __init__(self, keys, repeats, reused=0, bad=0, cross_partition=False, seed=1, prefix=None):
        rng = random.Random(seed)
        prefix = prefix or "k" + uuid.uuid4().hex[:6]
        self.cross_partition = cross_partition
        self.keys = [f"{prefix}-{i}" for i in range(keys)]
        items = [("main", k) for k in self.keys]
        # Repeats and reuses of a key come after its first record (same partition: in order).
        for kind, count in (("repeat", repeats), ("reused", 0 if cross_partition else reused)):
            for _ in range(count):
                key = rng.choice(self.keys)
                first = items.index(("main", key))
                items.insert(rng.randint(first + 1, len(items)), (kind, key))
        for i in range(bad):
            items.insert(rng.randint(0, len(items)), ("bad", f"bad-{i}"))
        self.items = items
        self.records = []
        for kind, key in items:
            if kind == "bad":
                self.records.append((key.encode(), b'{"idempotency_key": "' + key.encode() + b'", oops',
                                     [("origin", b"robustness")]))
                continue
            if kind == "main":
                body = {"idempotency_key": key, "scope": SCOPE, "type": "todo.create",
                        "payload": {"title": f"title {key}", "description": "d"}}
            elif kind == "repeat":
                body = {"payload": {"description": "d", "title": f"title {key}"}, "type": "todo.create",
                        "scope": SCOPE, "idempotency_key": key}
            else:
                body = command(key, f"other {key}", scope=SCOPE)
            record_key = f"{SCOPE}/{key}".encode()
            if cross_partition and rng.random() < 1 / 3:
                record_key = uuid.uuid4().bytes
            self.records.append((record_key, json.dumps(body).encode(), None))

    def __len__(self):
        return len(self.records)

    def expected_counts(self):
        kinds = collections.Counter(kind for kind, _ in self.items)
        return {"created": kinds["main"], "duplicate": kinds["repeat"], "key_reused": kinds["reused"],
                "rejected": kinds["bad"]}


class Feeder(threading.Thread):
    """Produces a workload in chunks at a steady pace, in the background; `sources` fills up in
    record order. join() re-raises a producing failure."""

    def __init__(self, bootstrap, workload, chunk=100, interval=0.25):
        super().__init__(daemon=True)
        self.bootstrap, self.workload, self.chunk, self.interval = bootstrap, workload, chunk, interval
        self.sources = []
        self.error = None

    def run(self):
        try:
            records = self.workload.records
            for start in range(0, len(records), self.chunk):
                positions = produce_tracked(self.bootstrap, COMMANDS, records[start:start + self.chunk])
                self.sources.extend((COMMANDS, p, o) for p, o in positions)
                time.sleep(self.interval)
        except Exception as error:  # noqa: BLE001 - reported by join()
            self.error = error

    def join(self, timeout=180):
        super().join(timeout)
        if self.is_alive():
            raise AssertionError("the feeder did not finish")
        if self.error:
            raise self.error
        return self.sources


# --- Test base -------------------------------------------------------------------------------

class RobustnessCase(unittest.TestCase):

    def setUp(self):
        warnings.filterwarnings("ignore", category=ResourceWarning, message=r"unclosed file .*bootstrap")
        harness.worker_bin()                    # fails (never skips) without the environment
        harness.require_env("DEDUP_TEST_DB")
        self.broker = self.enterContext(make_broker())
        self.results = self.enterContext(TopicReader(self.broker.bootstrap, RESULTS))
        self.workers = []
        self.started = time.time()

    def tearDown(self):
        print(f" [{time.time() - self.started:.1f}s]", end=" ", flush=True)

    def use_database(self, server=None):
        self.db = self.enterContext(Database(server))
        return self.db

    def start_worker(self, *extra, env=None, name="worker", conninfo=None, max_batch=100):
        worker = self.enterContext(Worker(self.broker, conninfo or self.db.conninfo,
                                          extra_args=("--max-batch", str(max_batch), *extra), env=env, name=name))
        self.workers.append(worker)
        return worker

    def logs(self, chars=3000):
        return "\n".join(f"--- {w.log_path} (exit {w.process.poll()})\n" + w.log_text()[-chars:]
                         for w in self.workers)

    def wait_results(self, count, timeout=90):
        try:
            self.results.wait_until(lambda m: len(m) >= count, timeout, f"{count} results")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    def wait_all(self, sources, timeout=120):
        wanted = set(sources)
        try:
            self.results.wait_until(lambda m: wanted <= harness.result_sources(m), timeout,
                                    f"a result for each of {len(wanted)} records")
        except TimeoutError as error:
            missing = wanted - harness.result_sources(self.results.messages)
            raise AssertionError(f"{error}; {len(missing)} missing, e.g. {sorted(missing)[:5]}\n"
                                 f"{self.logs()}") from None
        self.results.settle(idle=2, timeout=30)  # repeats still in flight are checked too

    def wait_committed(self, group="dedup-worker", timeout=60):
        """Waits until the group committed everything on the commands topic."""
        end = harness.end_offsets(self.broker.bootstrap, COMMANDS)
        wait_for(lambda: all(harness.committed_offsets(self.broker.bootstrap, group, COMMANDS).get(p, -1) >= o
                             for p, o in end.items() if o > 0),
                 timeout, f"committed offsets to reach {end}", interval=1)

    def crashed(self, worker, timeout=90):
        """Waits for a failpoint to SIGKILL the worker."""
        try:
            code = worker.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the failpoint never fired\n{self.logs()}") from None
        self.assertEqual(code, -signal.SIGKILL, self.logs())
        self.assertIn("TEST FAILPOINT", worker.log_text())

    # The verification of every scenario.
    def verify(self, workload, sources):
        self.assertEqual(len(sources), len(workload))
        by_source = harness.results_by_source(self.results.messages)
        missing = [s for s in sources if s not in by_source]
        self.assertEqual(missing, [], "records without a result")
        unknown = set(by_source) - set(sources)
        self.assertEqual(unknown, set(), "results for records that were never produced")

        statuses = collections.Counter(r["status"] for r in by_source.values())
        self.assertEqual(dict(statuses), {k: v for k, v in workload.expected_counts().items() if v},
                         "results per status")

        todos = json.loads(self.db.scalar(
            "SELECT coalesce(json_agg(json_build_array(id, title)), '[]') FROM public.todos") or "[]")
        titles = collections.Counter(title for _, title in todos)
        self.assertEqual([t for t, n in titles.items() if n > 1], [], "keys with two entities")
        self.assertEqual(len(todos), len(workload.keys), "one entity per key")
        id_of_title = {title: id_ for id_, title in todos}
        key_rows = json.loads(self.db.scalar(
            "SELECT coalesce(json_agg(json_build_array(scope, idempotency_key, status, source_topic, "
            "source_partition, source_offset, result->'entity'->'id')), '[]') FROM dedup.idempotency_keys") or "[]")
        self.assertEqual(len(key_rows), len(workload.keys), "one key row per key")
        key_row = {(r[0], r[1]): r for r in key_rows}

        per_key = collections.defaultdict(list)
        for (kind, key), source in zip(workload.items, sources):
            per_key[key].append((kind, source, by_source[source]))
        for key in workload.keys:
            entries = per_key[key]
            created = [(s, r) for kind, s, r in entries if r["status"] == "created"]
            self.assertEqual(len(created), 1, f"{key}: created results {created}")
            created_source, created_result = created[0]
            entity = created_result["entity"]
            self.assertEqual(entity["id"], id_of_title.get(f"title {key}"), f"{key}: entity in Postgres")
            row = key_row[(SCOPE, key)]
            self.assertEqual((row[2], (row[3], row[4], row[5]), row[6]), ("created", created_source, entity["id"]),
                             f"{key}: key row")
            if not workload.cross_partition:
                self.assertEqual(created_source, entries[0][1], f"{key}: the first record creates")
            for kind, source, result in entries:
                if source == created_source:
                    continue
                if kind == "reused":
                    self.assertEqual(result["status"], "key_reused", f"{key} {source}")
                    self.assertEqual(result["error"]["code"], "key_reused")
                    continue
                self.assertEqual(result["status"], "duplicate", f"{key} {source}: {result}")
                self.assertTrue(result["replayed"])
                self.assertEqual(result["entity"], entity)
                self.assertEqual(result["first_processed_at"], created_result["first_processed_at"])

        rejected = {s for s, r in by_source.items() if r["status"] == "rejected"}
        if rejected:
            with TopicReader(self.broker.bootstrap, DLQ) as dlq:
                def dead_sources(messages):
                    found = set()
                    for m in messages:
                        h = dict(m["headers"])
                        found.add((h["dedup-source-topic"].decode(), int(h["dedup-source-partition"]),
                                   int(h["dedup-source-offset"])))
                    return found
                dlq.wait_until(lambda m: rejected <= dead_sources(m), 60, "every rejected record dead-lettered")
                self.assertEqual(dead_sources(dlq.messages), rejected, "dead letters only for rejected records")


# --- Scenarios -------------------------------------------------------------------------------

class CrashAtFailpointTest(RobustnessCase):
    """SIGKILL at each failpoint mid-stream, then a fresh worker on the same group."""

    def crash_and_recover(self, *failpoints):
        self.use_database()
        workload = Workload(keys=1000, repeats=300, reused=40, bad=20, seed=len(failpoints))
        sources = [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, workload.records)]
        for i, failpoint in enumerate(failpoints):
            worker = self.start_worker(env={"DEDUP_FAILPOINT": failpoint}, name=f"crash{i}")
            self.crashed(worker)
        self.assertLess(len(harness.result_sources(self.results.messages)), len(workload), "died mid-stream")
        survivor = self.start_worker(name="survivor")
        self.wait_all(sources)
        self.wait_committed()
        self.assertIsNone(survivor.process.poll())
        self.verify(workload, sources)
        # The audit trail survives the crashes: every created entity has its "entity created" line
        # in some worker's log. Lines are held in memory until a batch's results are all published
        # and written before its offsets are committed, so a line lost with a killed worker belongs
        # to a record that is read again, and logged again, by the next one.
        audited = set()
        for worker in self.workers:
            # A killed worker's last line may be cut short: only whole lines count.
            for line in worker.log_text().splitlines(keepends=True):
                # --log-format text: "<ts> info  entity created status=created ... scope=S key=K"
                if " entity created " in line and line.endswith("\n"):
                    fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
                    audited.add((fields["scope"], fields["key"]))
        self.assertEqual(audited, {(SCOPE, key) for key in workload.keys},
                         "an audit line for every created entity")

    def test_crash_after_db_commit(self):
        self.crash_and_recover("after_db_commit:3")

    def test_crash_with_the_next_batch_committed_and_results_in_flight(self):
        self.crash_and_recover("after_db_commit_in_flight:2")

    def test_crash_after_results_acked(self):
        self.crash_and_recover("after_results_acked:3")

    def test_crash_before_offset_commit(self):
        self.crash_and_recover("before_offset_commit:2")

    def test_crash_with_the_offset_commit_on_its_way(self):
        self.crash_and_recover("after_offset_commit_sent:2")

    def test_crash_at_every_failpoint_in_a_row(self):
        self.crash_and_recover("after_db_commit:2", "after_results_acked:2", "before_offset_commit:2",
                               "after_offset_commit_sent:2")


class RejectedReplayTest(RobustnessCase):
    """SPEC §2: a record read again after a crash gets the very same result, identical except
    processed_at. Rejected records store nothing, so check their replay explicitly (this found
    first_processed_at = "now" on every re-read; docs/contract.md now makes it null)."""

    def test_rejected_record_read_twice_gets_the_identical_result(self):
        self.use_database()
        records = [(f"bad-{i}".encode(), b"{oops", None) for i in range(5)]
        sources = [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, records)]
        # Results and dead letters acknowledged, offsets not committed: all of them are read again.
        worker = self.start_worker(env={"DEDUP_FAILPOINT": "after_results_acked"}, name="crash")
        self.crashed(worker)
        acknowledged = harness.result_sources(self.results.poll(1))
        self.assertTrue(acknowledged, "the crashed batch's results were acknowledged")
        # The survivor gets the partitions only after the dead member's session timed out (6 s),
        # so a re-computed timestamp is seconds later.
        self.start_worker(name="survivor")
        self.wait_all(sources)
        self.wait_committed()
        # The survivor's results are acknowledged before its commit, but this reader may not have
        # polled them yet (a real broker commits quickly): wait for them, then check none extra.
        self.results.wait_for_count(len(records) + len(acknowledged), timeout=60)
        self.results.settle(idle=1.0)
        self.assertEqual(len(self.results.messages), len(records) + len(acknowledged), "re-read once")
        first = {}
        for message in self.results.messages:
            result = json.loads(message["value"])
            source = (result["source"]["topic"], result["source"]["partition"], result["source"]["offset"])
            self.assertEqual(result["status"], "rejected")
            first.setdefault(source, result)
            self.assertEqual(result["first_processed_at"], first[source]["first_processed_at"],
                             f"{source}: the replayed rejected result has another first_processed_at")
        harness.results_by_source(self.results.messages)


class KillMidTransactionTest(RobustnessCase):
    """The worker's transaction waits on a row lock that we hold; the worker is SIGKILLed while
    its batch is uncommitted; then the lock is released and a new worker takes over."""

    def test_kill_while_waiting_on_a_row_lock(self):
        self.use_database()
        workload = Workload(keys=600, repeats=150, bad=5, seed=7)
        locked_key = workload.keys[len(workload.keys) // 2]
        holder = subprocess.Popen(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.db.conninfo],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "PGAPPNAME": "e2e-lock-holder"})
        def stop_holder():
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            for stream in (holder.stdin, holder.stderr):
                if not stream.closed:
                    stream.close()
        self.addCleanup(stop_holder)
        holder.stdin.write(
            "BEGIN;\n"
            "INSERT INTO dedup.idempotency_keys (scope, idempotency_key, command_type, fingerprint, status,"
            " created_at, expires_at, source_topic, source_partition, source_offset)"
            f" VALUES ('{SCOPE}', '{locked_key}', 'todo.create', decode(repeat('00', 32), 'hex'), 'pending',"
            " now(), now() + interval '1 day', 'elsewhere', 0, 0);\n")
        holder.stdin.flush()
        activity = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                    "application_name = '{}' AND {}")
        wait_for(lambda: self.db.scalar(activity.format("e2e-lock-holder", "state = 'idle in transaction'")) == "1",
                 20, "the lock holder's open transaction")

        victim_conninfo = self.db.conninfo + " application_name=e2e-victim"
        victim = self.start_worker(conninfo=victim_conninfo, name="victim")
        sources = [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, workload.records)]
        try:
            wait_for(lambda: self.db.scalar(activity.format("e2e-victim", "wait_event_type = 'Lock'")) != "0",
                     60, "the worker's transaction to wait on the held lock")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None
        committed_before = self.db.count("dedup.idempotency_keys")
        victim.kill(signal.SIGKILL)
        victim.wait(10)
        holder.stdin.write("ROLLBACK;\n")
        holder.stdin.close()
        self.assertEqual(holder.wait(20), 0)
        # The orphaned backend gets its lock, finds its client gone and rolls back: nothing of the
        # batch may have been committed by it.
        wait_for(lambda: self.db.scalar(activity.format("e2e-victim", "true")) == "0", 60,
                 "the killed worker's backend to go away")
        self.assertEqual(self.db.count("dedup.idempotency_keys"), committed_before,
                         "the killed worker's transaction committed something")
        self.assertEqual(self.db.count("dedup.idempotency_keys", f"idempotency_key = '{locked_key}'"), 0)

        self.start_worker(name="successor")
        self.wait_all(sources)
        self.wait_committed()
        self.verify(workload, sources)
        locked_source = sources[workload.items.index(("main", locked_key))]
        self.assertEqual(harness.results_by_source(self.results.messages)[locked_source]["status"], "created")


class GroupChurnTest(RobustnessCase):
    """Two, then three workers in one group under continuous load; members stopped with SIGTERM
    and one with SIGKILL while records flow; one key may travel on several partitions."""

    def test_members_come_and_go_under_load(self):
        self.use_database()
        workload = Workload(keys=2000, repeats=600, bad=10, cross_partition=True, seed=11)
        # ~120 records/s for ~20 s: the membership changes below all happen while records flow.
        feeder = Feeder(self.broker.bootstrap, workload, chunk=60, interval=0.5)
        a = self.start_worker(name="a")
        b = self.start_worker(name="b")
        feeder.start()
        self.wait_assigned(a, b)
        self.wait_more(200)
        c = self.start_worker(name="c")
        self.wait_assigned(c)                     # three members now
        self.wait_more(200)
        a.kill(signal.SIGTERM)
        self.assertEqual(a.wait(45), 0, self.logs())
        self.wait_more(200)
        b.kill(signal.SIGKILL)                    # its session has to time out (6 s)
        d = self.start_worker(name="d")
        self.wait_assigned(d, timeout=60)
        self.wait_more(100)
        c.kill(signal.SIGTERM)
        self.assertEqual(c.wait(45), 0, self.logs())
        sources = feeder.join()
        self.wait_all(sources, timeout=180)
        self.wait_committed()
        self.assertIsNone(d.process.poll(), self.logs())
        self.verify(workload, sources)

    def wait_assigned(self, *workers, timeout=30):
        for worker in workers:
            try:
                wait_for(lambda: "kafka: assigned" in worker.log_text(), timeout, f"{worker.log_path} assigned")
            except TimeoutError as error:
                raise AssertionError(f"{error}\n{self.logs()}") from None

    def wait_more(self, count, timeout=60):
        self.wait_results(len(self.results.messages) + count, timeout)


class BrokerFreezeTest(RobustnessCase):
    """The dev broker stops answering (SIGSTOP) for a few seconds mid-stream."""

    def test_frozen_broker(self):
        self.use_database()
        workload = Workload(keys=1500, repeats=400, reused=30, bad=10, seed=13)
        feeder = Feeder(self.broker.bootstrap, workload, chunk=100, interval=0.3)
        worker = self.start_worker()
        feeder.start()
        self.wait_results(500)
        self.broker.freeze()
        try:
            time.sleep(5)  # the outage itself
        finally:
            self.broker.thaw()
        sources = feeder.join()
        self.wait_all(sources, timeout=180)
        self.wait_committed(timeout=90)
        self.assertIsNone(worker.process.poll(), self.logs())
        self.verify(workload, sources)


class PostgresRestartTest(RobustnessCase):
    """Postgres stops (fast, then immediate) for a few seconds under load: the worker reports not
    ready, keeps running, recovers, loses and doubles nothing."""

    def test_postgres_restarts_under_load(self):
        pg = self.enterContext(PrivatePostgres())
        self.use_database(pg.conninfo)
        workload = Workload(keys=1500, repeats=400, reused=30, bad=10, seed=17)
        feeder = Feeder(self.broker.bootstrap, workload, chunk=60, interval=0.3)
        worker = self.start_worker()
        ready = worker.metrics_url("/readyz")
        wait_for(lambda: http_status(ready) == 200, 30, "/readyz 200 once partitions are assigned")
        feeder.start()
        for mode, after in (("fast", 300), ("immediate", 900)):
            with self.subTest(stop=mode):
                self.wait_results(after)
                pg.stop(mode)
                try:
                    wait_for(lambda: http_status(ready) == 503, 30, f"/readyz 503 with Postgres down ({mode})")
                    time.sleep(3)  # the outage itself
                    self.assertIsNone(worker.process.poll(), f"the worker exited\n{self.logs()}")
                    self.assertEqual(http_status(ready), 503)
                    self.assertIn("database unavailable", worker.log_text())
                finally:
                    pg.start()
                wait_for(lambda: http_status(ready) == 200, 60, "/readyz 200 after Postgres is back")
        sources = feeder.join()
        self.wait_all(sources, timeout=180)
        self.wait_committed()
        self.assertIsNone(worker.process.poll(), self.logs())
        self.assertEqual(http_status(ready), 200)
        self.verify(workload, sources)


if __name__ == "__main__":
    unittest.main()
