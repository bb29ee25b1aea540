"""The broker's MSG_SIZE_TOO_LARGE fallback on a real Kafka broker.

A topic's max.message.bytes limits a whole record batch (after compression), not one record.
librdkafka batches up to batch.size (1,000,000 bytes) per partition, so when the results topic's
limit is below that, a batch of small results is refused as a unit: every record in it reports
MSG_SIZE_TOO_LARGE, and Worker::publish writes ALL of them cut down (entity omitted) although each
one fits. Read again with smaller batches (another member, --max-batch, a restart), the same
records get their full entity: results differ on redelivery, and entities are omitted that fit.

Regression test of the review of issue 8's fixes: a refused record is retried alone, whole, and
cut down only if refused alone.
"""
import base64
import json
import os
import sys
import unittest

import harness  # noqa: E402
from harness import Database, RealKafka, Worker, command, produce, read_topic, wait_for  # noqa: E402

COUNT = 60
RESULTS_LIMIT = 20000  # each result is ~1 KB; a batch of 60 is ~60 KB (random titles: lz4 cannot shrink it)


class BrokerRefusalIsPerRecord(unittest.TestCase):
    def test_small_results_are_not_cut_down_because_they_were_batched(self):
        with RealKafka(topics=("commands:1", f"commands.results:1:max.message.bytes={RESULTS_LIMIT}",
                               "commands.dlq:1:max.message.bytes=1114112")) as broker, Database() as db:
            titles = [base64.b85encode(os.urandom(500)).decode() for _ in range(COUNT)]
            produce(broker.bootstrap, "commands", [command(f"k{i}", t) for i, t in enumerate(titles)])

            # One worker, batches as large as the fetch gives (all 60 at once, typically).
            with Worker(broker, db.conninfo, extra_args=("--group", "g1", "--batch-wait", "2s")) as worker:
                wait_for(lambda: db.count("todos") == COUNT, 120, "the first pass's entities")
                wait_for(lambda: len(read_topic(broker.bootstrap, "commands.results", idle=2)) >= COUNT,
                         60, "every result")
                first = read_topic(broker.bootstrap, "commands.results", idle=2)
                log = worker.log_text()
            omitted = [json.loads(m["value"]) for m in first if "entity_omitted" in json.loads(m["value"])]
            sizes = sorted(len(m["value"]) for m in first)
            print(f"first pass: {len(first)} results, sizes {sizes[0]}..{sizes[-1]} bytes, "
                  f"{len(omitted)} with entity_omitted; 'too large' in log: {'too large' in log}")

            # The same records read again by another group, one record per batch (a redelivery):
            # each result goes out alone and fits.
            with Worker(broker, db.conninfo, extra_args=("--group", "g2", "--max-batch", "1")):
                wait_for(lambda: len(read_topic(broker.bootstrap, "commands.results", idle=2)) >= 2 * COUNT,
                         120, "the second pass")
            every = read_topic(broker.bootstrap, "commands.results", idle=2)
            second = [json.loads(m["value"]) for m in every[len(first):]]
            print(f"second pass: {len(second)} results, "
                  f"{sum('entity_omitted' in r for r in second)} with entity_omitted")
            try:
                harness.results_by_source(every)
                differ = None
            except AssertionError as e:
                differ = str(e)[:400]
            self.assertEqual(len(omitted), 0, "results of ~1 KB had their entity omitted under a 20 KB limit")
            self.assertIsNone(differ, "a record's result changed on redelivery")


if __name__ == "__main__":
    unittest.main(verbosity=2)
