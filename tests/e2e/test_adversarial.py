"""Adversarial end to end (issue #8): seeded random streams with a corpus of hostile records,
several workers in one group, members joining, leaving and SIGKILLed during long polls, SIGKILLs
at every failpoint, and the same key raced on several partitions. After every scenario ONE
checker (adversary.check_invariants) verifies the invariants listed in adversary.py: every record
has a result, repeats are identical, entity rows = `created` key rows, one claimant per key (and
each record's expected outcome), no commit past an unprocessed record, no worker death or retry
loop caused by record content, metrics = results topic, dead letters complete and within size
limits, deterministic results.

Scenarios (fixed seeds, ~6,200 records in all; ~3.5 min, mostly waiting out rebalances):
  hostile_stream        8101  1,620 records incl. the whole corpus; 3 workers, one joins mid-stream; metrics exact
  failpoint_crashes     8202  corpus crashed after its results were acked (all re-read), then
                              1,687 records through after_db_commit / before_offset_commit crashes
  churn_long_polls      8303  1,966 records at 25/s on 2 partitions; `a` polls up to 6 s while members
                              join, get SIGKILLed, leave, crash at a failpoint (2 cycles)
  cross_partition_race  8404  ~820 records: every key on 2-3 of 3 partitions at once, 3 workers
  lanes_race            8505  every key on 2-3 of 6 partitions, workers with --db-connections 3, one
                              SIGKILLed after its first commit
Every failure names its seed and the directory with the worker logs; rerun one scenario with
another seed: ADV_SEED=1234 python3 -m unittest test_adversarial.AdversarialTest.test_...;
ADV_VERBOSE=1 prints the scenario's steps, ADV_VERBOSE=2 also each hostile record's outcome.
Longer runs: scripts/soak. Needs DEDUP_WORKER_BIN and DEDUP_TEST_DB (scripts/test sets them).
"""
import dataclasses
import json
import os
import types
import unittest
import warnings

import adversary
import harness


def setUpModule():
    # DEDUP_E2E_BROKER=kafka: one real broker for the module (harness.make_broker); dev: nothing.
    start = getattr(harness, "start_shared_broker", None)
    if start:
        start()


def tearDownModule():
    stop = getattr(harness, "stop_shared_broker", None)
    if stop:
        stop()


class AdversarialTest(unittest.TestCase):

    def setUp(self):
        warnings.filterwarnings("ignore", category=ResourceWarning)
        harness.worker_bin()                    # fails (never skips) without the environment
        harness.require_env("DEDUP_TEST_DB")

    def run_named(self, name):
        seed = int(os.environ["ADV_SEED"]) if os.environ.get("ADV_SEED") else None
        try:
            outcome = adversary.run_named(name, seed=seed, log=lambda text: print(text, flush=True))
        except adversary.ScenarioFailed as failure:
            failed = failure.outcome.text
        else:
            print(f"\n    {outcome.text}", end=" ", flush=True)
            return
        raise self.failureException(failed)

    def test_hostile_stream_three_workers_metrics_exact(self):
        self.run_named("hostile_stream")

    def test_sigkill_at_every_failpoint(self):
        self.run_named("failpoint_crashes")

    def test_group_churn_during_long_polls(self):
        self.run_named("churn_long_polls")

    def test_same_key_on_several_partitions_at_once(self):
        self.run_named("cross_partition_race")

    def test_database_lanes_race_and_crash(self):
        self.run_named("lanes_race")


class CheckerSelfTest(unittest.TestCase):
    """The checker must fail: a consistent synthetic run (records, results, dead letters, commits,
    key rows and entity rows in a real database) passes, and each planted defect is reported under
    its invariant. No broker, no worker: a second or two."""

    def setUp(self):
        harness.worker_bin()
        harness.require_env("DEDUP_TEST_DB")
        self.db = self.enterContext(harness.Database(extra_sql=[adversary.HOSTILE_SQL]))
        self.baseline = {t: int(self.db.scalar(f"SELECT coalesce(max(id), 0) FROM {t}"))
                         for t in set(adversary.TABLE_OF_TYPE.values())}

    def store(self, scope, key, title, source):
        """A todo row and its `created` key row, as the worker writes them; returns the entity."""
        entity = self.db.scalar(
            f"WITH t AS (INSERT INTO public.todos (title) VALUES ('{title}') RETURNING *),"
            " k AS (INSERT INTO dedup.idempotency_keys (scope, idempotency_key, command_type, fingerprint, status,"
            " result, created_at, expires_at, source_topic, source_partition, source_offset)"
            f" SELECT '{scope}', '{key}', 'todo.create', decode(repeat('00', 32), 'hex'), 'created',"
            " jsonb_build_object('entity', to_jsonb(t), 'error', null), now(), now() + interval '1 day',"
            f" '{source[0]}', {source[1]}, {source[2]} FROM t)"
            " SELECT to_jsonb(t) FROM t")
        return adversary.loads_exact(entity)

    @staticmethod
    def result(rec, source, status, entity=None, error=None, replayed=False, at="2030-01-01T00:00:00.000Z"):
        scope, key = rec.ikey if rec.ikey else (None, None)
        body = {"idempotency_key": key, "scope": scope, "type": rec.ctype, "status": status, "replayed": replayed,
                "entity": entity, "error": error, "first_processed_at": None if status == "rejected" else at,
                "processed_at": at, "source": {"topic": source[0], "partition": source[1], "offset": source[2]}}
        value = json.dumps(body).encode()
        return {"key": adversary.result_key(scope, key) if scope else None, "value": value, "headers": [],
                "partition": 0, "offset": 0}

    def good_run(self):
        created = adversary.make_rec("unique", "k1", "a/b", "todo.create", {"title": "one"})
        duplicate = adversary.again(created, "redeliver-exact")
        reused = adversary.make_rec("reuse-edited", "k1", "a/b", "todo.create", {"title": "two"}, variant="v2")
        bad = adversary.Rec(kind="hostile:invalid-json", value=b"{oops", key=b"x",
                            reject=adversary.rejected("invalid_json"))
        records = [created, duplicate, reused, bad]
        sources = [("commands", 0, i) for i in range(4)]
        entity = self.store("a/b", "k1", "one", sources[0])
        results = [self.result(created, sources[0], "created", entity),
                   self.result(duplicate, sources[1], "duplicate", entity, replayed=True),
                   self.result(reused, sources[2], "key_reused", error={"code": "key_reused", "message": "m"}),
                   self.result(bad, sources[3], "rejected", error={"code": "invalid_json", "message": "m"})]
        dead = [{"key": b"x", "value": b"{oops", "partition": 0, "offset": 0,
                 "headers": [("dedup-error-code", b"invalid_json"), ("dedup-error-message", b"m"),
                             ("dedup-source-topic", b"commands"), ("dedup-source-partition", b"0"),
                             ("dedup-source-offset", b"3")]}]
        later = adversary.parse_ts("2030-01-01T00:00:01.000Z")
        return adversary.RunData(
            seed=0, records=records, sources=sources, results=results, dead=dead, commits=[(later, {0: 4})],
            end_offsets={0: 4}, members=[], unexpected=[], metrics=[], db=self.db, baseline=dict(self.baseline),
            broker_dir="-", faults=False, max_message_bytes=adversary.DEFAULT_MAX_MESSAGE_BYTES)

    def assertFlags(self, run, invariant):
        violations, _ = adversary.check_invariants(run)
        self.assertIn(invariant, violations.items, f"invariant {invariant} not flagged:\n{violations.summary()}")

    def test_consistent_run_passes(self):
        violations, stats = adversary.check_invariants(self.good_run())
        self.assertFalse(violations, violations.summary())
        self.assertEqual(stats["key rows"], 1)

    def test_each_planted_defect_is_flagged(self):
        run = self.good_run()
        with self.subTest("1: a record without a result"):
            self.assertFlags(dataclasses.replace(run, results=run.results[:2] + run.results[3:]), 1)
        with self.subTest("9: a record processed twice with another outcome"):
            other = self.result(run.records[2], run.sources[2], "duplicate", {"id": 1}, replayed=True)
            self.assertFlags(dataclasses.replace(run, results=run.results + [other]), 9)
        with self.subTest("4: a second claimant; the result record key unescaped"):
            twice = self.result(run.records[1], run.sources[1], "created", json.loads(run.results[0]["value"])["entity"])
            self.assertFlags(dataclasses.replace(run, results=[run.results[0], twice] + run.results[2:]), 4)
            unescaped = dict(run.results[0], key=b"a/b/k1")
            self.assertFlags(dataclasses.replace(run, results=[unescaped] + run.results[1:]), 4)
        with self.subTest("5: an offset committed before its record's result"):
            early = adversary.parse_ts("2029-12-31T23:59:59.000Z")
            self.assertFlags(dataclasses.replace(run, commits=[(early, {0: 2})] + run.commits), 5)
        with self.subTest("6: a worker exited on its own; offsets stuck"):
            self.assertFlags(dataclasses.replace(run, unexpected=[("w", 1, "critical unexpected error, stopping: x")]), 6)
            self.assertFlags(dataclasses.replace(run, commits=[(run.commits[0][0], {0: 3})]), 6)
        with self.subTest("7: metrics that disagree with the topic"):
            member = types.SimpleNamespace(name="w", fate="alive", exit_code=lambda: None,
                                           proc=types.SimpleNamespace(log_text=lambda: ""))
            samples = {"dedup_commands_total": {(("status", "created"), ("type", "todo.create")): 2.0}}
            self.assertFlags(dataclasses.replace(run, members=[member], metrics=[("w", samples)]), 7)
        with self.subTest("8: no dead letter; an oversized result"):
            self.assertFlags(dataclasses.replace(run, dead=[]), 8)
            self.assertFlags(dataclasses.replace(run, max_message_bytes=100), 8)
        with self.subTest("3: an orphan entity row; a key row whose entity differs from its row"):
            self.db.scalar("INSERT INTO public.todos (title) VALUES ('orphan')")
            self.assertFlags(run, 3)
            self.db.scalar("DELETE FROM public.todos WHERE title = 'orphan'")
            self.db.scalar("UPDATE public.todos SET title = 'changed' WHERE title = 'one'")
            self.assertFlags(run, 3)


if __name__ == "__main__":
    unittest.main()
