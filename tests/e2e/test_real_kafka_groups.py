"""What only a real Apache Kafka broker can show about consumer groups, broker restarts and record
sizes (issue 9). librdkafka's mock cluster (the dev broker) takes ~5 s per rebalance step, cannot
be SIGKILLed and restarted on its data, and does not enforce a topic's max.message.bytes.

  - three workers with the cooperative-sticky assignor, and three with the eager default: members
    joining, leaving (SIGTERM) and SIGKILLed while records flow. Pinned on the way: librdkafka
    2.0.2 drops a member's whole assignment when an offset commit races a cooperative rebalance
    (ILLEGAL_GENERATION; librdkafka issue #4059), which costs time and redeliveries, not
    correctness;
  - offsets owed under `run --commit-interval` committed before an eager revocation gives the
    partitions up (the mock refuses every commit during a rebalance: only a real broker shows it
    lands): at most the batch whose results were on their way is processed again;
  - static membership (group.instance.id): each of three workers restarted in turn gets its own
    partitions back and the others do not rebalance;
  - the broker SIGKILLed and restarted on the same data directory under load;
  - a result larger than the results topic's max.message.bytes: published with its entity
    omitted, the offset committed, the worker carries on; small results refused with it keep
    their entity.

After each scenario the invariants are checked, not only counts: test_worker_robustness's
verify() (every record exactly one result, identical when repeated; one entity per key, equal to
the created key rows; duplicates carry the original entity; rejected records dead-lettered), plus
CommitWatcher's: the group's committed offset was never past a record whose result was not yet on
the results topic, sampled every ~0.3 s during the scenario.

Real parts only: the dedup-worker binary, Apache Kafka from Maven Central (scripts/kafka, KRaft,
one JVM for the whole module: DEDUP_E2E_KAFKA_VERSION, default scripts/kafka's newest), PostgreSQL
15, python3-confluent-kafka. Timings that differ from the mock are printed on stderr as
`[measured] ...` lines.
"""
import base64
import collections
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest
import warnings
from datetime import datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

import harness
from harness import KafkaTopics, TopicReader, command, produce_tracked, wait_for
import test_worker_robustness as robustness
from test_worker_robustness import COMMANDS, RESULTS, SCOPE, Feeder, Workload

GROUP = "dedup-worker"


def setUpModule():
    harness.worker_bin()                        # fails (never skips) without the environment
    harness.require_env("DEDUP_TEST_DB")
    harness.shared_kafka()                      # one broker JVM for the module


tearDownModule = harness.stop_shared_broker


def measured(text):
    """A timing worth comparing with the mock (collected for docs/operations.md and the issue)."""
    print(f"\n[measured] {text}", file=sys.stderr, flush=True)


# --- What the worker logs about its partitions ---------------------------------------------------

EVENT = re.compile(r"^(\S+)\s+\w+\s+kafka: (assigned|revoked|lost) (\d+) partition\(s\), (\d+) (?:in total|left)",
                   re.MULTILINE)

Event = collections.namedtuple("Event", "at kind changed held")


STOPPING = "worker stopping:"


def partition_events(worker, while_running=False):
    """The worker's assignment changes, in order: (wall-clock time, assigned|revoked|lost, number
    of partitions changed, number held afterwards). while_running: only those logged before the
    worker began to stop (the order of its log, not the test's clock: the stamps have millisecond
    resolution, so a revocation at shutdown can carry a stamp earlier than the moment the test
    sent the signal)."""
    text = worker.log_text()
    if while_running and STOPPING in text:
        text = text[:text.index(STOPPING)]
    events = []
    for match in EVENT.finditer(text):
        at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
        events.append(Event(at, match.group(2), int(match.group(3)), int(match.group(4))))
    return events


def holds_partitions(worker):
    events = partition_events(worker)
    return bool(events) and events[-1].held > 0


# --- The group as the coordinator sees it ----------------------------------------------------------

def decode_assignment(data):
    """ConsumerProtocolAssignment (any version): {topic: sorted partitions}."""
    if not data:
        return {}
    _version, topics = struct.unpack_from(">hi", data, 0)
    at = 6
    out = {}
    for _ in range(topics):
        (length,) = struct.unpack_from(">h", data, at)
        topic = data[at + 2:at + 2 + length].decode()
        at += 2 + length
        (count,) = struct.unpack_from(">i", data, at)
        at += 4
        out[topic] = sorted(struct.unpack_from(f">{count}i", data, at))
        at += 4 * count
    return out


def group_assignment(bootstrap, group=GROUP):
    """{client.id: [partitions of the commands topic]} from DescribeGroups (the coordinator's
    view, not the workers' own)."""
    admin = AdminClient(harness.client_config(bootstrap))
    groups = admin.list_groups(group, timeout=10)
    if not groups or groups[0].error is not None:
        return None
    return {m.client_id: decode_assignment(m.assignment).get(COMMANDS, []) for m in groups[0].members}


# --- Committed offsets never ahead of results -----------------------------------------------------

class CommitWatcher(threading.Thread):
    """Samples the group's committed offsets on the commands topic and, right after, the results
    topic's high watermarks. A worker commits only after Kafka acknowledged the batch's results,
    and an acknowledged (acks=all) record is below the high watermark; so at every sample, each
    record below the committed offset must have a result below the watermark sampled after it.
    check() verifies that against everything read from the results topic in the end. Samples
    that fail (broker down) are skipped."""

    def __init__(self, bootstrap, group=GROUP, interval=0.3):
        super().__init__(daemon=True)
        self.bootstrap, self.group, self.interval = bootstrap, group, interval
        self.samples = []
        self.stopping = threading.Event()

    def run(self):
        config = {**harness.client_config(self.bootstrap), "enable.auto.commit": False,
                  "socket.timeout.ms": 3000, "log_level": 2}
        offsets = Consumer({**config, "group.id": self.group})      # never subscribes: no member
        marks = Consumer({**config, "group.id": "e2e-watermarks"})
        try:
            commands = sorted(offsets.list_topics(COMMANDS, timeout=10).topics[COMMANDS].partitions)
            results = sorted(marks.list_topics(RESULTS, timeout=10).topics[RESULTS].partitions)
            while not self.stopping.wait(self.interval):
                try:
                    committed = offsets.committed([TopicPartition(COMMANDS, p) for p in commands], timeout=3)
                    high = {p: marks.get_watermark_offsets(TopicPartition(RESULTS, p), timeout=3)[1]
                            for p in results}
                except KafkaException:
                    continue
                self.samples.append(({tp.partition: tp.offset for tp in committed if tp.offset >= 0}, high))
        finally:
            offsets.close()
            marks.close()

    def stop(self):
        self.stopping.set()
        self.join(30)

    def check(self, case, sources, messages):
        """sources: every produced commands record; messages: every record of the results topic."""
        case.assertGreater(len(self.samples), 5, "too few samples of the committed offsets")
        case.assertTrue(any(c for c, _ in self.samples), "no committed offset was ever sampled")
        produced = collections.defaultdict(list)
        for topic, partition, offset in sources:
            produced[partition].append(offset)
        for offsets in produced.values():
            offsets.sort()
        results = []
        for m in messages:
            source = json.loads(m["value"])["source"]
            results.append((m["partition"], m["offset"], (source["topic"], source["partition"], source["offset"])))
        for committed, high in self.samples:
            answered = {s for p, o, s in results if o < high.get(p, 0)}
            for partition, upto in committed.items():
                unanswered = [o for o in produced[partition] if o < upto and (COMMANDS, partition, o) not in answered]
                case.assertEqual(unanswered, [], f"committed offset {upto} of partition {partition} "
                                                 f"was past records without a result")


# --- Test base ---------------------------------------------------------------------------------------

class RealKafkaGroupCase(robustness.RobustnessCase):
    """test_worker_robustness's base (workers, verify()), always on the module's real broker, with
    fresh topics per test."""
    topics = ("commands:6", "commands.results:4", "commands.dlq:1")

    def setUp(self):
        warnings.filterwarnings("ignore", category=ResourceWarning)
        harness.worker_bin()
        harness.require_env("DEDUP_TEST_DB")
        self.broker = self.enterContext(KafkaTopics(harness.shared_kafka(), self.topics))
        self.results = self.enterContext(TopicReader(self.broker.bootstrap, RESULTS))
        self.workers = []
        self.started = time.time()

    def watch_commits(self):
        watcher = CommitWatcher(self.broker.bootstrap)
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher

    def finish(self, workload, feeder, watcher, timeout=180):
        """Every record processed and committed; verify() and the commit watcher's invariant."""
        sources = feeder.join()
        self.wait_all(sources, timeout=timeout)
        self.wait_committed(timeout=90)
        watcher.stop()
        self.verify(workload, sources)
        watcher.check(self, sources, self.results.messages)
        return sources

    def wait_assigned(self, worker, timeout=60):
        try:
            wait_for(lambda: holds_partitions(worker) or worker.process.poll() is not None, timeout,
                     f"{worker.log_path} to hold partitions")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None
        self.assertIsNone(worker.process.poll(), f"the worker exited\n{self.logs()}")
        return partition_events(worker)[-1].at

    def wait_more(self, count, timeout=60):
        self.wait_results(len(self.results.messages) + count, timeout)


# --- Three workers, two assignors -------------------------------------------------------------------

class GroupChurnTest(RealKafkaGroupCase):
    """Three members join one by one while records flow, a fourth joins, one leaves with SIGTERM,
    one is SIGKILLed (its partitions wait for its session to time out: 6 s), and the rest carry
    on. One idempotency key travels on several partitions (cross_partition), so members race for
    keys in Postgres as well."""

    def churn(self, strategy, seed):
        """strategy: a partition.assignment.strategy, or None for librdkafka's default (eager
        range,roundrobin)."""
        extra = ("-X", f"partition.assignment.strategy={strategy}") if strategy else ()
        self.use_database()
        workload = Workload(keys=1800, repeats=500, bad=10, cross_partition=True, seed=seed)
        # ~125 records/s for ~18 s: every membership change below happens while records flow.
        feeder = Feeder(self.broker.bootstrap, workload, chunk=50, interval=0.4)
        watcher = self.watch_commits()
        timings = collections.defaultdict(list)

        def join(name):
            began = time.time()
            worker = self.start_worker(*extra, name=name)
            timings["join"].append(self.wait_assigned(worker) - began)
            return worker

        def handover(survivors, since, kind):
            """Seconds from `since` until the survivors hold all six partitions again (the time of
            the last assignment change that got them there)."""
            def all_settled():
                events = [partition_events(w) for w in survivors]
                if not all(events) or sum(e[-1].held for e in events) != 6:
                    return None
                after = [e.at for evs in events for e in evs if e.at >= since]
                return max(after) if after else None
            try:
                timings[kind].append(wait_for(all_settled, 60, f"the survivors' new assignment ({kind})") - since)
            except TimeoutError as error:
                raise AssertionError(f"{error}\n{self.logs()}") from None

        a = join("a")
        feeder.start()
        b = join("b")
        c = join("c")
        self.wait_more(150)
        d = join("d")                                   # four members, six partitions
        self.wait_more(150)
        stopped_at = time.time()
        a.kill(signal.SIGTERM)                          # leaves the group: an immediate rebalance
        self.assertEqual(a.wait(45), 0, self.logs())
        handover([b, c, d], stopped_at, "leave (SIGTERM)")
        self.assertTrue(feeder.is_alive(), "the load ended before the SIGKILL")
        stopped_at = time.time()
        b.kill(signal.SIGKILL)                          # no goodbye: the session times out
        b.wait(10)
        handover([c, d], stopped_at, "SIGKILL")
        self.finish(workload, feeder, watcher)
        for worker in (c, d):
            self.assertIsNone(worker.process.poll(), self.logs())

        # What each running member went through at the membership changes.
        # a's log ends with the revocation of its shutdown, b's (SIGKILLed) with whatever came
        # before the kill.
        running = {w: partition_events(w, while_running=True) for w in (a, b, c, d)}
        revokes = [(w, e) for w, evs in running.items() for e in evs if e.kind in ("revoked", "lost")]
        stop_the_world = [(w, e) for w, e in revokes if e.held == 0]
        incremental = [(w, e) for w, e in revokes if e.held > 0]
        paused = []  # seconds a running member held no partition between two assignments
        for evs in running.values():
            for before, after in zip(evs, evs[1:]):
                if before.held == 0 and before.kind != "assigned" and after.kind == "assigned":
                    paused.append(after.at - before.at)
        republished = len(self.results.messages) - len(harness.result_sources(self.results.messages))
        measured(f"{strategy or 'eager default'}: {republished} result(s) republished for redelivered records; join {self.spread(timings['join'])}; leave (SIGTERM) -> survivors reassigned "
                 f"{self.spread(timings['leave (SIGTERM)'])}; SIGKILL -> reassigned {self.spread(timings['SIGKILL'])} "
                 f"(session.timeout.ms=6000); revocations while running: {len(incremental)} incremental, "
                 f"{len(stop_the_world)} of everything; members idle during rebalances: "
                 f"{len(paused)} times, {self.spread(paused)}")
        return incremental, stop_the_world

    @staticmethod
    def spread(values):
        if not values:
            return "-"
        return f"{min(values):.2f}-{max(values):.2f}s" if len(values) > 1 else f"{values[0]:.2f}s"

    def test_cooperative_sticky(self):
        incremental, stop_the_world = self.churn("cooperative-sticky", seed=21)
        # Incremental: members give up only the partitions that move.
        self.assertTrue(incremental, "no incremental revocation: was cooperative-sticky in effect?")
        # Known, pinned: librdkafka before 2.10 (Debian 12 has 2.0.2) treats an offset commit
        # refused with ILLEGAL_GENERATION during a rebalance as the loss of the whole assignment
        # (librdkafka issue #4059, fixed by PR #4908), so a member that commits while the
        # generation moves on drops every partition and rejoins: ~1-2 s idle and redeliveries.
        # Any other stop-the-world revocation in a cooperative group is a failure.
        for worker, event in stop_the_world:
            log = worker.log_text()
            self.assertEqual(event.kind, "lost", f"{worker.log_path}: revoked everything in a cooperative "
                                                 f"rebalance\n{log[-3000:]}")
            refused = [at for at, line in self.log_lines(log)
                       if "offset commit failed" in line and "ILLEGAL_GENERATION" in line and event.at - 2 <= at <= event.at]
            self.assertTrue(refused, f"{worker.log_path}: lost its partitions without a refused commit "
                                     f"(not librdkafka #4059)\n{log[-3000:]}")

    @staticmethod
    def log_lines(text):
        for line in text.splitlines():
            stamp = line.split(" ", 1)[0]
            if stamp[:2] == "20" and stamp.endswith("Z"):
                yield datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), line

    def test_eager_default(self):
        incremental, stop_the_world = self.churn(None, seed=23)
        # Eager: every rebalance revokes everything from every member, then assigns anew.
        self.assertEqual(incremental, [])
        self.assertGreaterEqual(len(stop_the_world), 5, "eager rebalances revoke every member's partitions")


# --- Owed offsets committed at a revocation -----------------------------------------------------------

class RevocationCommitTest(RealKafkaGroupCase):
    """`run --commit-interval` leaves offsets owed between commits; before a revocation gives the
    partitions up they are committed while still ours. librdkafka's mock refuses every commit
    during a rebalance, so only a real broker shows that this commit lands. A worker with an
    interval of an hour drains a backlog in batches of 10 (never caught up: nothing commits its
    offsets but the revocation); a second member joins in the middle (eager: everything is
    revoked). Whatever the first had processed must not be processed again: with one lane and no
    publish failure, at most the batch whose results were on their way at a revocation is
    republished (abandoned uncommitted), not the thousands behind it."""

    MAX_BATCH = 10

    def test_owed_offsets_are_committed_before_a_revocation(self):
        self.use_database()
        workload = Workload(keys=6000, repeats=1500, reused=30, bad=10, seed=51)
        watcher = self.watch_commits()
        sources = [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, workload.records)]
        # A lost assignment commits nothing (the broker would refuse it): sessions long enough that
        # a loaded machine cannot lose one.
        flags = ("--commit-interval", "1h", "-X", "session.timeout.ms=30000")
        a = self.start_worker(*flags, name="a", max_batch=self.MAX_BATCH)
        self.wait_assigned(a)
        self.wait_more(1500, timeout=120)
        processed_before = len(self.results.messages)
        self.assertLess(processed_before, len(sources) - 1500, "the first worker drained too fast to be "
                        "revoked in the middle of the backlog")
        joined = time.time()
        b = self.start_worker(*flags, name="b", max_batch=self.MAX_BATCH)
        self.wait_assigned(b)
        revoked = [e for e in partition_events(a) if e.kind == "revoked" and e.at >= joined - 1]
        self.assertTrue(revoked, f"the first worker was not revoked when the second joined\n{self.logs()}")

        self.wait_all(sources, timeout=300)
        self.wait_committed(timeout=90)
        watcher.stop()
        self.verify(workload, sources)
        watcher.check(self, sources, self.results.messages)

        # The backlog outlasted the revocation: the second member created entities for keys the
        # first had not reached (had the first caught up before, an idle commit would have sent
        # its owed offsets and this test would prove nothing).
        created_by_b = b.log_text().count("entity created")
        self.assertGreater(created_by_b, 10 * self.MAX_BATCH, "the first worker had drained the backlog "
                           "before it was revoked")
        log_a = a.log_text()
        self.assertNotIn("commit of owed offsets failed", log_a, self.logs())
        self.assertNotIn("offset commit failed", log_a, self.logs())
        events = [e for w in (a, b) for e in partition_events(w, while_running=True)]
        self.assertNotIn("lost", [e.kind for e in events], f"an assignment was lost\n{self.logs()}")
        revocations = sum(1 for e in events if e.kind == "revoked")
        republished = len(self.results.messages) - len(harness.result_sources(self.results.messages))
        measured(f"owed offsets at a revocation (commit interval 1h, batches of {self.MAX_BATCH}): "
                 f"{processed_before} results before the second member joined, {created_by_b} entities "
                 f"created by it, {revocations} "
                 f"revocation(s), {republished} result(s) republished for redelivered records")
        self.assertLessEqual(republished, self.MAX_BATCH * revocations,
                             "records processed before the revocation were processed again: their "
                             "owed offsets were not committed")


# --- Static membership ---------------------------------------------------------------------------------

class StaticMembershipTest(RealKafkaGroupCase):
    """group.instance.id: a member restarted within its session gets its own partitions back, and
    the others do not rebalance at all (the coordinator hands the restarted member its stored
    assignment). librdkafka does not send LeaveGroup for a static member, so SIGTERM and a new
    process is exactly the restart of a rolling update. All three members are restarted in turn,
    so the group's leader is among them."""

    def test_restarts_keep_the_assignment(self):
        self.use_database()
        workload = Workload(keys=1500, repeats=400, reused=30, bad=10, seed=31)
        feeder = Feeder(self.broker.bootstrap, workload, chunk=60, interval=0.4)
        watcher = self.watch_commits()

        def start(name):
            # A session longer than the restart; client.id names the member in DescribeGroups.
            return self.start_worker("-X", f"group.instance.id=dedup-static-{name}", "-X", f"client.id=worker-{name}",
                                     "-X", "session.timeout.ms=30000", name=name)

        members = {name: start(name) for name in ("a", "b", "c")}
        feeder.start()
        wait_for(lambda: all(partition_events(w) and partition_events(w)[-1].held == 2 for w in members.values()),
                 60, "two partitions on each of the three members")
        before = group_assignment(self.broker.bootstrap)
        self.assertEqual(sorted(before), ["worker-a", "worker-b", "worker-c"])
        self.assertEqual(sorted(p for ps in before.values() for p in ps), list(range(6)))
        self.wait_more(150)
        timings = []
        for name in ("a", "b", "c"):
            self.assertTrue(feeder.is_alive(), "the load ended before the restarts did")
            others = {w: len(partition_events(w)) for n, w in members.items() if n != name}
            stopping = time.time()
            members[name].kill(signal.SIGTERM)
            self.assertEqual(members[name].wait(45), 0, self.logs())
            restarting = time.time()
            members[name] = start(name)
            back = self.wait_assigned(members[name])
            timings.append((restarting - stopping, back - restarting))
            self.assertRegex(members[name].log_text(), r"kafka: assigned 2 partition\(s\), 2 in total")
            self.assertEqual(group_assignment(self.broker.bootstrap), before,
                             f"after restarting {name}: the restarted member got other partitions, or the others moved")
            self.wait_more(60)
            for worker, count in others.items():
                self.assertEqual(len(partition_events(worker)), count,
                                 f"{worker.log_path}: rebalanced while static member {name} restarted\n{self.logs()}")
        self.finish(workload, feeder, watcher)
        self.assertEqual(group_assignment(self.broker.bootstrap), before)
        measured("static members restarted one by one: SIGTERM -> exit " +
                 ", ".join(f"{stop:.2f}s" for stop, _ in timings) + "; start -> own partitions back " +
                 ", ".join(f"{up:.2f}s" for _, up in timings) + "; the other members did not rebalance")


# --- The broker killed and restarted -----------------------------------------------------------------

class BrokerRestartTest(RealKafkaGroupCase):
    """The broker JVM is SIGKILLed under load (two workers and the producers connected) and started
    again on the same data directory after a few seconds: the workers ride it out (results and
    offset commits retried), nothing lost, nothing doubled."""

    def test_broker_killed_and_restarted_under_load(self):
        self.use_database()
        workload = Workload(keys=1500, repeats=400, reused=30, bad=10, seed=41)
        feeder = Feeder(self.broker.bootstrap, workload, chunk=80, interval=0.3)
        watcher = self.watch_commits()
        workers = [self.start_worker(name=n) for n in ("a", "b")]
        for worker in workers:
            self.wait_assigned(worker)
        feeder.start()
        self.wait_more(600)
        self.assertTrue(feeder.is_alive(), "the load ended before the broker was killed")
        kafka = self.broker.broker
        killed = time.time()
        kafka.kill()
        try:
            time.sleep(3)  # the outage itself
        finally:
            kafka.start()
        up = time.time()
        before = len(self.results.messages)
        self.wait_more(1, timeout=120)
        first_result = time.time()
        self.finish(workload, feeder, watcher)
        for worker in workers:
            self.assertIsNone(worker.process.poll(), self.logs())
        logs = "".join(w.log_text() for w in workers)
        measured(f"broker SIGKILL + restart: down {up - killed:.1f}s (JVM start {kafka.start_seconds:.1f}s), "
                 f"first result {first_result - up:.1f}s after the broker answered; workers logged "
                 f"{logs.count('publishing failed')} failed publish(es), {logs.count('offset commit failed')} failed "
                 f"commit(s), {logs.count('kafka: lost')} lost and {logs.count('kafka: revoked')} revoked assignment(s); "
                 f"{len(self.results.messages) - len(harness.result_sources(self.results.messages))} result(s) "
                 f"republished for redelivered records; {before} results before")


# --- A result too large for the results topic ------------------------------------------------------

class OversizeResultTest(RealKafkaGroupCase):
    """docs/contract.md §2 "Size": the results topic takes at most 200,000 bytes per record, a
    todo's title is ~300 KB (incompressible: results are LZ4-compressed, and the broker checks
    the compressed batch). The broker refuses the result (MSG_SIZE_TOO_LARGE); the worker
    publishes it with "entity": null and "entity_omitted": {bytes, sha256}, commits, carries on.
    Small results refused with it (same produce request) keep their entity."""
    topics = ("commands:2", "commands.results:2:max.message.bytes=200000", "commands.dlq:1")
    LIMIT = 200_000

    def setUp(self):
        super().setUp()
        self.use_database()
        self.worker = self.start_worker()
        self.wait_assigned(self.worker)
        self.big_title = base64.b64encode(os.urandom(225_000)).decode()   # 300,000 characters
        # One record key for every record: one partition, read in order, in as few batches as can be.
        self.record_key = f"{SCOPE}/same".encode()

    def record(self, key, title):
        return (self.record_key, json.dumps(command(key, title, scope=SCOPE)).encode(), None)

    def produce(self, records):
        sources = [(COMMANDS, p, o) for p, o in produce_tracked(self.broker.bootstrap, COMMANDS, records)]
        self.wait_all(sources, timeout=90)
        by_source = harness.results_by_source(self.results.messages)
        return [by_source[s] for s in sources]

    def check_big(self, created, duplicate):
        """The big todo's results: entity omitted, its size and digest those of the stored entity."""
        stored = json.loads(subprocess.run([harness.worker_bin(), "inspect", "--db", self.db.conninfo, "--scope",
                                            SCOPE, "--key", "big"], check=True, capture_output=True, text=True).stdout)
        self.assertEqual(stored["result"]["entity"]["title"], self.big_title, "Postgres keeps the whole entity")
        self.assertEqual((created["status"], duplicate["status"]), ("created", "duplicate"))
        entity_text = json.dumps(stored["result"]["entity"], separators=(",", ":"), ensure_ascii=False).encode()
        for result in (created, duplicate):
            self.assertIsNone(result["entity"])
            self.assertEqual(result["entity_omitted"],
                             {"bytes": len(entity_text), "sha256": hashlib.sha256(entity_text).hexdigest()})
        self.assertEqual(self.db.scalar(f"SELECT length(title) FROM public.todos "
                                        f"WHERE id = {stored['result']['entity']['id']}"), "300000")

    def check_end(self, todos):
        self.wait_committed()
        self.assertIsNone(self.worker.process.poll(), self.logs())
        self.assertIn("refused by Kafka as too large", self.worker.log_text())
        for message in self.results.messages:
            self.assertLessEqual(len(message["value"]) + len(message["key"] or b""), self.LIMIT)
        # Entities equal created keys.
        self.assertEqual(self.db.count("public.todos"), todos)
        self.assertEqual(self.db.count("dedup.idempotency_keys", "status = 'created'"), todos)
        self.assertEqual(self.db.count("dedup.idempotency_keys"), todos)

    def test_result_larger_than_the_topic_takes(self):
        big = self.record("big", self.big_title)
        first = self.produce([big, (self.record_key, b"{not json", None), big])
        self.check_big(first[0], first[2])
        self.assertEqual((first[1]["status"], first[1]["error"]["code"]), ("rejected", "invalid_json"))
        # The worker carries on: the next records are processed, their results whole.
        after = self.produce([self.record(f"after-{i}", f"t {i}") for i in range(20)])
        self.assertEqual(collections.Counter(r["status"] for r in after), {"created": 20})
        self.assertEqual([r["idempotency_key"] for r in after if r["entity"] is None], [])
        self.check_end(todos=21)

    def test_small_results_sharing_the_batch_keep_their_entity(self):
        """Small results written in the same batch as the big one keep their entity. librdkafka
        does not split a produce request the broker refused as too large (the Java producer
        does): every record of that partition's message set fails with MSG_SIZE_TOO_LARGE. The
        worker sends each refused record again alone and cuts down only one refused alone; before
        it did, all of them went out without their entity, differently from one run to the next
        (a replay with other batches would have published another result for the same record)."""
        records = [self.record(f"before-{i}", f"t {i}") for i in range(20)]
        records += [self.record("big", self.big_title)]
        records += [self.record(f"after-{i}", f"t {i}") for i in range(20)]
        records += [self.record("big", self.big_title)]
        results = self.produce(records)
        self.check_big(results[20], results[41])
        small = [r for i, r in enumerate(results) if i not in (20, 41)]
        self.assertEqual(collections.Counter(r["status"] for r in small), {"created": 40})
        self.check_end(todos=41)
        # The scenario happened: the broker refused more records than the two big ones (each
        # refusal is logged as a Kafka error; the big ones twice: with the others, then alone).
        refusals = self.worker.log_text().count("error=MSG_SIZE_TOO_LARGE")
        self.assertGreater(refusals, 4, "no small result was refused along with a big one")
        self.assertEqual([r["idempotency_key"] for r in small if r["entity"] is None], [],
                         "small results lost their entity because a large one shared their batch")


if __name__ == "__main__":
    unittest.main()
