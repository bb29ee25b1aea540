"""The topics teams already have (docs/contract.md §1, "Input formats"): CloudEvents in binary and
structured mode, and mapped messages, produced by a client nobody here wrote
(python3-confluent-kafka), read by the real worker into real Postgres."""
import json
import os
import tempfile
import unittest

import harness
from harness import Database, TopicReader, Worker, make_broker, produce, wait_for

COMMANDS = "commands"
RESULTS = "commands.results"
DLQ = "commands.dlq"


def setUpModule():
    harness.start_shared_broker()


def tearDownModule():
    harness.stop_shared_broker()


def config_with(input_yaml):
    with open(harness.CONFIG_YAML) as f:
        base = f.read()
    handle, path = tempfile.mkstemp(prefix="dedup-input-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        f.write(base + "\n" + input_yaml)
    return path


def binary_event(event_id, source, event_type, data_text, extra=()):
    """data_text: the data as JSON text, exactly as sent (numbers as written)."""
    headers = [("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_source", source.encode()),
               ("ce_type", event_type.encode()), ("content-type", b"application/json"), *extra]
    return (event_id.encode(), data_text.encode(), headers)


def structured_event(attributes, data_text):
    event = json.dumps(attributes)[:-1] + ', "data": ' + data_text + "}"
    return (attributes["id"].encode(), event.encode(),
            [("content-type", b"application/cloudevents+json")])


class InputFormatCase(unittest.TestCase):
    input_yaml = ""

    def setUp(self):
        self.broker = self.enterContext(make_broker())
        self.db = self.enterContext(Database())
        self.config = config_with(self.input_yaml)
        self.addCleanup(os.unlink, self.config)
        self.worker = self.enterContext(Worker(self.broker, self.db.conninfo, config=self.config))
        self.results = self.enterContext(TopicReader(self.broker.bootstrap, RESULTS))

    def results_in_order(self, count):
        self.results.wait_for_count(count, timeout=90)
        ordered = sorted(self.results.messages, key=lambda m: (json.loads(m["value"])["source"]["offset"]))
        return [(json.loads(m["value"]), dict(m["headers"])) for m in ordered]


class CloudEventsTest(InputFormatCase):
    input_yaml = "input:\n  format: cloudevents\n  types:\n    com.example.todo.created: todo.create\n"

    def test_binary_and_structured_forms_of_one_event_are_duplicates_and_sources_are_scopes(self):
        data = '{"title": "Buy milk", "priority": 1e2}'  # 1e2 as written: an integer column takes it
        records = [
            binary_event("e-1", "/orders", "com.example.todo.created", data),
            structured_event({"specversion": "1.0", "id": "e-1", "source": "/orders",
                              "type": "com.example.todo.created", "time": "2026-12-02T10:00:00Z"},
                             '{"priority":1e2,"title":"Buy milk"}'),                 # keys reordered
            binary_event("e-1", "/billing", "com.example.todo.created", data),   # another source
            binary_event("e-1", "/orders", "com.example.todo.created", data),    # redelivered
            structured_event({"specversion": "0.3", "id": "e-2", "source": "/orders",
                              "type": "com.example.todo.created"}, data),
        ]
        # One partition keeps them in order (the same id from two sources hashes apart otherwise).
        produce(self.broker.bootstrap, COMMANDS, [(None, v, h) for _, v, h in records])
        results = self.results_in_order(len(records))
        statuses = [r["status"] for r, _ in results]
        self.assertEqual(sorted(statuses), ["created", "created", "duplicate", "duplicate", "rejected"],
                         results)
        by_id_source = {}
        for result, headers in results:
            if result["status"] == "rejected":
                self.assertEqual(result["error"]["code"], "invalid_event")
                self.assertIn("0.3", result["error"]["message"])
                continue
            self.assertEqual(result["cloudevent"]["type"], "com.example.todo.created")
            self.assertEqual(result["type"], "todo.create")
            self.assertEqual(headers["ce_specversion"], b"1.0")
            self.assertEqual(headers["ce_type"], b"dedup.result")
            self.assertEqual(headers["ce_subject"], result["cloudevent"]["id"].encode())
            src = result["source"]
            self.assertEqual(headers["ce_id"], f'{src["topic"]}:{src["partition"]}:{src["offset"]}'.encode())
            by_id_source.setdefault((result["idempotency_key"], result["scope"]), []).append(result)
        self.assertEqual(len(by_id_source[("e-1", "/orders")]), 3)
        self.assertEqual(len(by_id_source[("e-1", "/billing")]), 1)
        created = [r for r in by_id_source[("e-1", "/orders")] if r["status"] == "created"]
        self.assertEqual(len(created), 1)
        for duplicate in by_id_source[("e-1", "/orders")]:
            self.assertEqual(duplicate["entity"], created[0]["entity"])  # replayed, not re-created
        self.assertEqual(self.db.count("public.todos"), 2)
        self.assertEqual(self.db.scalar("SELECT priority FROM public.todos LIMIT 1"), "100")

        # The dead letter keeps the original record byte for byte, headers included.
        with TopicReader(self.broker.bootstrap, DLQ) as dlq:
            dlq.wait_for_count(1, timeout=60)
            dead = dlq.messages[0]
            self.assertEqual(dead["value"], records[4][1])
            self.assertEqual(dict(dead["headers"])["content-type"], b"application/cloudevents+json")
            self.assertEqual(dict(dead["headers"])["dedup-error-code"], b"invalid_event")


class MappedTest(InputFormatCase):
    input_yaml = ("input:\n  format: mapped\n  key: [header:Idempotency-Key, /meta/request_id]\n"
                  "  scope: [/tenant_id]\n  type: [header:event-type]\n  payload: /data\n")

    def test_keys_in_headers_and_in_the_body(self):
        def record(key_header, request_id, title, tenant="acme"):
            body = {"tenant_id": tenant, "data": {"title": title}}
            if request_id is not None:
                body["meta"] = {"request_id": request_id}
            headers = [("EVENT-TYPE", b"todo.create")]
            if key_header is not None:
                headers.append(("idempotency-key", key_header.encode()))
            return (None, json.dumps(body).encode(), headers)

        records = [
            record("h-1", None, "from a header"),
            record(None, "b-1", "from the body"),
            record("h-1", "ignored", "from a header"),  # the header wins: a duplicate of the first
            record(None, "b-1", "edited"),              # same key, other payload
            record(None, None, "no key anywhere"),
        ]
        produce(self.broker.bootstrap, COMMANDS, records)
        results = [r for r, _ in self.results_in_order(len(records))]
        by_title = {}
        for result in results:
            by_title.setdefault(result["idempotency_key"], []).append(result["status"])
        self.assertEqual(sorted(by_title["h-1"]), ["created", "duplicate"], results)
        self.assertEqual(sorted(by_title["b-1"]), ["created", "key_reused"], results)
        missing = [r for r in results if r["status"] == "rejected"]
        self.assertEqual(len(missing), 1)
        self.assertEqual(missing[0]["error"]["code"], "missing_key")
        self.assertIn("/meta/request_id", missing[0]["error"]["message"])
        self.assertEqual(self.db.count("public.todos"), 2)
        # The record without a key in any place counts as missing a key.
        def missing_keys():
            samples = harness.scrape_metrics(self.worker).get("dedup_missing_key_total", {})
            return sum(v for labels, v in samples.items() if ("type", "todo.create") in labels)
        wait_for(lambda: missing_keys() == 1.0, 10, "dedup_missing_key_total == 1")


if __name__ == "__main__":
    unittest.main()
