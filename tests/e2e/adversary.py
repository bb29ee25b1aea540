"""The adversary of the end-to-end suites: a seeded stream generator (unique commands, redeliveries,
keys on several partitions at once, key reuse, a corpus of hostile records), a cluster driver
(dev broker or any harness broker, Postgres, 1..n `dedup-worker run` processes that join, leave,
get SIGKILLed or crash at failpoints, and are restarted like an orchestrator would) and ONE
invariant checker. Used by test_adversarial.py (CI: fixed seeds, bounded size) and by
tests/e2e/soak.py (scripts/soak: long runs).

Invariants (check_invariants(); every violation names its number):
  1. every produced record has a result (matched by the result's `source`);
  2. repeated results of one record are identical except `processed_at`; its dead letters too;
  3. per entity table: every `created` key row's entity is a row of its table, equal to it
     (to_jsonb text), and every row written during the run is referenced by exactly one key row;
  4. per (scope, key): exactly one `created`/`conflict` claimant, the one the key row points to,
     with the status of the key row; the others are duplicates / replayed conflicts of the same
     payload, or `key_reused`; records of a key on one partition: the first valid one claims;
     plus what the generator knows of each record (expected rejection code, outcome, exact
     numbers, fields echoed, result record key, oversized entity...);
  5. no committed offset ever passed a record without a published result (sampled while running:
     a record below a committed offset read at time t has a result processed before t);
  6. no worker exited or looped because of record content (exit codes, logs, offsets stuck);
  7. /metrics dedup_commands_total{type,status} (and dead letters by reason), summed over the
     workers, equal what the results (and dead-letter) topic shows (runs without kills only);
  8. every `rejected` result has its dead letter (dedup-error-code = error.code), nothing else is
     dead-lettered, a dead letter keeps the original (or a flagged prefix of it), and every result
     and dead letter fits the topic's maximum message size;
  9. results are deterministic per record: a record processed twice (crash, rebalance) got the
     same status/entity/error (part of 2, and counted so that a crash run proves it happened).
"""
import collections
import contextlib
import dataclasses
import datetime
import decimal
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE_SQL = os.path.join(HERE, "fixtures", "hostile.sql")
HOSTILE_YAML = os.path.join(HERE, "fixtures", "hostile.yaml")

COMMANDS, RESULTS, DLQ = "commands", "commands.results", "commands.dlq"
GROUP = "dedup-worker"
DEFAULT_TOPICS = ("commands:4", "commands.results:4", "commands.dlq:1")
# Entity tables of hostile.yaml: type -> table. Invariant 3 is checked per table.
TABLE_OF_TYPE = {
    "todo.create": "public.todos",
    "appointment.create": "public.appointments",
    "conversation.create": "public.conversations",
    "item.create": "public.hostile_items",
    "note.create": "public.hostile_notes",
}
CONFIGURED_TYPES = set(TABLE_OF_TYPE)
# docs/contract.md §2-3: no result or dead letter is larger than the producer's message.max.bytes
# (1,114,112 by default, what docs/operations.md asks of the topics) less 4 KiB for framing. Real
# Kafka enforces its topic limit, the dev broker nothing: the checker holds every result and dead
# letter (key + value + header names and values) to this.
DEFAULT_MAX_MESSAGE_BYTES = 1114112 - 4096
MAX_MESSAGE_TEXT = 1024          # error messages (and dedup-error-message) quote at most this much
DLQ_VALUE_PREFIX, DLQ_KEY_PREFIX, DLQ_MAX_ORIGINAL_HEADERS = 4096, 1024, 16 * 1024
MAX_INPUT_BYTES = 1048576  # the worker's --max-message-bytes default


# --- JSON text with numbers as written ---------------------------------------------------------

class Num(str):
    """A JSON number written exactly as given (e.g. Num("12345678901234567.89"), Num("1e2"))."""


@dataclasses.dataclass(frozen=True)
class Style:
    """How a JSON value is written: key order (as given, reversed, or shuffled by `shuffle_seed`)
    and whitespace. Every style of one value has the same fingerprint."""
    order: str = "given"          # given | reversed | shuffled
    spaced: bool = False
    indent: bool = False
    shuffle_seed: int = 0
    ascii: bool = False           # \\u-escape non-ASCII (same string, other bytes)


COMPACT = Style()


def dumps(value, style=COMPACT, _depth=0):
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        items = list(value.items())
        if style.order == "reversed":
            items.reverse()
        elif style.order == "shuffled":
            random.Random(style.shuffle_seed + _depth).shuffle(items)
        colon = ": " if style.spaced else ":"
        sep = (",\n" + "  " * (_depth + 1)) if style.indent else (", " if style.spaced else ",")
        open_, close = ("{\n" + "  " * (_depth + 1), "\n" + "  " * _depth + "}") if style.indent else ("{", "}")
        if not items:
            return "{}"
        return open_ + sep.join(json.dumps(k, ensure_ascii=style.ascii) + colon + dumps(v, style, _depth + 1)
                                for k, v in items) + close
    if isinstance(value, (list, tuple)):
        sep = ", " if style.spaced else ","
        return "[" + sep.join(dumps(v, style, _depth + 1) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=style.ascii)
    return json.dumps(value)


def loads_exact(text):
    """JSON with exact numbers: fractions/exponents as Decimal, integers as int."""
    return json.loads(text, parse_float=decimal.Decimal)


def result_key(scope, key):
    """The result record key of docs/contract.md: <scope>/<key>, '%' -> %25 and '/' -> %2F in each."""
    def enc(part):
        return part.replace("%", "%25").replace("/", "%2F")
    return f"{enc(scope)}/{enc(key)}".encode()


# --- Records and what they must become ---------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Rec:
    """One record to produce and everything the generator knows about its outcome."""
    kind: str                              # e.g. unique, redeliver-exact, hostile:nul-in-title
    value: bytes = None
    key: bytes = None                      # record key (None: null)
    headers: list = None
    partition: int = None                  # explicit partition (None: by record key)
    ikey: tuple = None                     # (scope, key) the worker must derive (None: rejected early)
    ctype: str = None                      # command type echoed in the result
    variant: str = None                    # same variant (of one ikey) <=> same fingerprint
    reject: frozenset = None               # expected rejection codes (None: not rejected)
    sqlstate: str = None                   # a refusal: the SQLSTATE its message must contain
    claim: tuple = ("created",)            # outcome when it claims: ("created",) or ("conflict", sqlstate, constraint)
    ordered: bool = True                   # all records of ikey on one partition, in produce order
    check: object = None                   # check(ctx) -> [problems], ctx: RecordContext
    echo: tuple = None                     # (scope, key, type) the result must echo, when known


def rejected(codes):
    return frozenset([codes] if isinstance(codes, str) else codes)


def command_body(key, scope, ctype, payload, extra=None):
    body = {}
    if key is not None:
        body["idempotency_key"] = key
    if scope is not None:
        body["scope"] = scope
    if ctype is not None:
        body["type"] = ctype
    body["payload"] = payload
    body.update(extra or {})
    return body


def make_rec(kind, key, scope, ctype, payload, variant="v0", style=COMPACT, record_key=None, headers=None,
             **kw):
    value = dumps(command_body(key, scope, ctype, payload), style).encode()
    if record_key is None:
        record_key = f"{scope}/{key}".encode()
    rec = Rec(kind=kind, value=value, key=record_key, headers=headers, ikey=(scope, key), ctype=ctype,
              variant=variant, echo=(scope, key, ctype), **kw)
    return rec


def again(rec, kind, style=None, record_key=None):
    """A redelivery of rec: the exact bytes again (style None), or the same command written in
    another style (same fingerprint)."""
    if style is None:
        value = rec.value
    else:
        body = json.loads(rec.value, parse_float=Num, parse_int=Num)
        value = dumps(body, style).encode()
    return dataclasses.replace(rec, kind=kind, value=value, key=record_key if record_key is not None else rec.key)


# --- The random stream -------------------------------------------------------------------------

SCOPES = ["org-a", "org-b", "tenant/7", "100%", "ü-tenant", "a/b"]
TODO_DESCRIPTIONS = ["", "d", "From store", "ünïcödé ✓", "line\nbreak", "tab\there", "quote \" and \\"]


def random_payload(rng, ctype, tag, edit=0):
    """A valid payload of a type, unique per tag (unique columns stay unique); edit > 0: another
    payload for the same key (key reuse)."""
    if ctype == "todo.create":
        payload = {"title": f"todo {tag}" + (f" edit {edit}" if edit else ""),
                   "description": rng.choice(TODO_DESCRIPTIONS), "priority": rng.randint(0, 9)}
        if rng.random() < 0.3:
            payload["due"] = f"2031-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        return payload
    if ctype == "item.create":
        cents = rng.randint(0, 10**12)
        payload = {"name": f"item {tag}", "code": f"code-{tag}",
                   "amount": Num(f"{cents // 100}.{cents % 100:02d}" if not edit else f"{cents}.{edit}"),
                   "qty": rng.randint(0, 1000), "color": rng.choice(["red", "green", "blue"])}
        if rng.random() < 0.3:
            payload["tags"] = {"k": [1, 2, {"x": tag}], "n": Num("1.50")}
        if rng.random() < 0.3:
            payload["parent_id"] = rng.choice([1, 2])
        return payload
    if ctype == "note.create":
        return {"name": f"note {tag}", "score": rng.randint(-5, 5) + edit * 100, "body": rng.choice(TODO_DESCRIPTIONS)}
    raise ValueError(ctype)


def random_styles(rng):
    return Style(order=rng.choice(["reversed", "shuffled"]), spaced=rng.random() < 0.5,
                 indent=rng.random() < 0.3, shuffle_seed=rng.randint(0, 10**6), ascii=rng.random() < 0.5)


class Stream:
    """A seeded stream: records in produce order. Records of one (scope, key) on one partition
    keep their order; `cross` keys travel on several partitions (random record keys, or explicit
    partitions when `partitions` is given, all close together: they race)."""

    def __init__(self, seed, keys, prefix, redeliver=0.3, reuse=0.08, cross=0.15, hostile=True,
                 partitions=None, types=(("todo.create", 6), ("item.create", 3), ("note.create", 2)),
                 scopes=SCOPES, odd_keys=0.1, hostile_copies=1):
        self.seed = seed
        rng = random.Random(seed)
        self.prefix = prefix
        events = []  # (time, seq, rec)
        seq = 0

        def add(t, rec):
            nonlocal seq
            events.append((t, seq, rec))
            seq += 1

        names, weights = zip(*types)
        for i in range(keys):
            ctype = rng.choices(names, weights)[0]
            scope = rng.choice(scopes)
            key = f"{prefix}/{i}%x" if rng.random() < odd_keys else f"{prefix}-{i}"
            tag = f"{prefix}-{i}"
            payload = random_payload(rng, ctype, tag)
            t = rng.random()
            is_cross = rng.random() < cross
            if is_cross:
                copies = rng.randint(2, 3)
                if partitions:
                    targets = rng.sample(range(partitions), min(copies, partitions))
                else:
                    targets = [None] * copies
                first = None
                for c, part in enumerate(targets):
                    rk = uuid.UUID(int=rng.getrandbits(128)).bytes
                    rec = make_rec("cross", key, scope, ctype, payload, record_key=rk, ordered=False,
                                   style=COMPACT if c == 0 else random_styles(rng), partition=part)
                    first = first or rec
                    add(t + c * 1e-6, rec)
                if rng.random() < reuse * 2:
                    rec = make_rec("cross-reuse", key, scope, ctype, random_payload(rng, ctype, tag, edit=1),
                                   variant="v1", record_key=uuid.UUID(int=rng.getrandbits(128)).bytes,
                                   ordered=False, partition=rng.randrange(partitions) if partitions else None)
                    add(t + 3e-6, rec)
                continue
            main = make_rec("unique", key, scope, ctype, payload)
            add(t, main)
            later = t
            while rng.random() < redeliver:
                later += rng.uniform(0, 0.05)
                if rng.random() < 0.5:
                    add(later, again(main, "redeliver-exact"))
                else:
                    add(later, again(main, "redeliver-restyled", random_styles(rng)))
            if rng.random() < reuse:
                later += rng.uniform(0, 0.05)
                add(later, make_rec("reuse-edited", key, scope, ctype, random_payload(rng, ctype, tag, edit=2),
                                    variant="v2"))
        if hostile:
            groups = [g for copy in range(hostile_copies)
                      for g in hostile_corpus(random.Random(seed * 7919 + 1 + copy), prefix + ("" if not copy else f"x{copy}"))]
            if hostile == "parse":  # only records refused before the database, and small ones
                groups = [g for g in groups if all(r.ikey is None and len(r.value or b"") < 10_000 for r in g)]
            for g, group in enumerate(groups):
                t = rng.random()
                for j, rec in enumerate(group):
                    add(t + j * 1e-3, rec)
        events.sort(key=lambda e: (e[0], e[1]))
        self.records = [rec for _, _, rec in events]

    def __len__(self):
        return len(self.records)

    def kinds(self):
        return collections.Counter(r.kind.split(":")[0] for r in self.records)


# --- The hostile corpus ------------------------------------------------------------------------

def _num_check(field, expected_text):
    """The entity's `field` must be exactly the number `expected_text`, in the result's raw JSON
    text too (not a double's approximation)."""
    def check(ctx):
        problems = []
        entity = ctx.entity()
        if entity is None:
            return [f"no entity to compare {field} with (result {ctx.brief()})"]
        got = entity.get(field)
        if not isinstance(got, (int, decimal.Decimal)) or decimal.Decimal(got) != decimal.Decimal(expected_text):
            problems.append(f"{field} = {str(got)[:80]!r}, expected exactly {expected_text[:80]}")
        stored = (ctx.key_row or {}).get("entity") or {}
        if stored.get(field) is None or decimal.Decimal(stored[field]) != decimal.Decimal(expected_text):
            problems.append(f"stored {field} = {str(stored.get(field))[:80]!r}, expected {expected_text[:80]}")
        return problems
    return check


def _raw_contains(fragment):
    def check(ctx):
        return [] if fragment in ctx.raw else [f"result text does not contain {fragment!r}: {ctx.raw[:300]}"]
    return check


def _entity_field(field, expected):
    def check(ctx):
        entity = ctx.entity()
        got = None if entity is None else entity.get(field)
        return [] if got == expected else [f"entity {field} = {got!r}, expected {expected!r}"]
    return check


def _entity_omitted(ctx):
    """A result too big for Kafka: `entity: null` plus `entity_omitted {bytes, sha256}`; the key
    row keeps the whole entity."""
    problems = []
    result = ctx.result
    if result.get("status") not in ("created", "duplicate"):
        return problems
    omitted = result.get("entity_omitted")
    if result.get("entity") is not None or not isinstance(omitted, dict):
        problems.append(f"oversized entity published inline or without entity_omitted ({len(ctx.raw)} bytes)")
        return problems
    if not isinstance(omitted.get("bytes"), int) or omitted["bytes"] < 600_000:
        problems.append(f"entity_omitted.bytes = {omitted.get('bytes')!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(omitted.get("sha256"))):
        problems.append(f"entity_omitted.sha256 = {omitted.get('sha256')!r}")
    stored = (ctx.key_row or {}).get("entity")
    if not stored or len(str(stored.get("blob", ""))) < 1_200_000:
        problems.append("the key row does not keep the full entity")
    return problems


def _all(*checks):
    def check(ctx):
        return [p for c in checks for p in c(ctx)]
    return check


def hostile_corpus(rng, prefix):
    """Groups of records (each group: one record key, produced in order). Expectations follow
    docs/contract.md and the decisions of issue #8."""
    p = f"{prefix}-h"
    groups = []
    scope = "org-hostile"
    sq = 0

    def k(name):
        nonlocal sq
        sq += 1
        return f"{p}-{name}-{sq}"

    def early(kind, value, codes, key=b"hostile", headers=None, **kw):
        groups.append([Rec(kind="hostile:" + kind, value=value, key=key, headers=headers,
                           reject=rejected(codes), **kw)])

    def refused(kind, ctype, payload, sqlstate, codes="invalid_payload", key=None, scope_=scope, **kw):
        key = key or k(kind)
        groups.append([make_rec("hostile:" + kind, key, scope_, ctype, payload, reject=rejected(codes),
                                sqlstate=sqlstate, **kw)])

    def accepted(kind, ctype, payload, key=None, scope_=scope, check=None, **kw):
        key = key or k(kind)
        rec = make_rec("hostile:" + kind, key, scope_, ctype, payload, check=check, **kw)
        groups.append([rec])
        return rec

    def conflicting(kind, ctype, payload, sqlstate, constraint, replay=False):
        key = k(kind)
        rec = make_rec("hostile:" + kind, key, scope, ctype, payload, claim=("conflict", sqlstate, constraint))
        group = [rec]
        if replay:  # another record, same key and payload: the stored conflict, replayed
            group.append(again(rec, "hostile:" + kind + "-again", Style(order="reversed", spaced=True)))
        groups.append(group)

    todo = "todo.create"
    item = "item.create"
    note = "note.create"
    valid = lambda key, payload=None, ctype=todo, scope_=scope: dumps(  # noqa: E731
        command_body(key, scope_, ctype, payload or {"title": "t"})).encode()

    # Not a command at all.
    early("invalid-json", b'{"idempotency_key": "x", oops', "invalid_json")
    early("truncated-json", valid(k("trunc"))[:-3], "invalid_json")
    early("not-an-object-array", b"[1,2,3]", "not_an_object")
    early("not-an-object-string", b'"just a string"', "not_an_object")
    early("not-an-object-number", b"42", "not_an_object")
    early("not-an-object-null", b"null", "not_an_object")
    early("null-value", None, "invalid_json")
    early("empty-value", b"", "invalid_json")
    early("nul-byte-in-string", b'{"idempotency_key":"nul\x00k","scope":"org-hostile","type":"todo.create",'
                                b'"payload":{"title":"x"}}', "invalid_json")
    early("nul-byte-after-object", valid(k("nul-after")) + b"\x00", "invalid_json")
    early("nul-byte-then-garbage", valid(k("nul-garbage")) + b"\x00{not json at all", "invalid_json")
    early("nul-byte-leading", b"\x00" + valid(k("nul-lead")), "invalid_json")
    early("invalid-utf8-in-string", valid(k("utf8"), {"title": "x"}).replace(b'"x"', b'"\xff\xfe"'), "invalid_json")
    early("overlong-utf8", valid(k("overlong"), {"title": "x"}).replace(b'"x"', b'"\xc0\xaf"'), "invalid_json")
    early("raw-surrogate-utf8", valid(k("rawsur"), {"title": "x"}).replace(b'"x"', b'"\xed\xa0\x80"'), "invalid_json")
    # Lone surrogate escapes: not a Unicode string; refused at parse (invalid_json) or as a payload.
    for n, esc in enumerate((rb'"\ud800"', rb'"\udc00"', rb'"a\ud800b"', rb'"\ud800\u0041"')):
        key = k("lone-surrogate")
        early(f"lone-surrogate-{n}", valid(key, {"title": "x"}).replace(b'"x"', esc),
              {"invalid_json", "invalid_payload"}, key=f"{scope}/{key}".encode())
    # Nesting: 64 levels in all is allowed (into a jsonb column), 65 is not.
    tags62 = "[" * 62 + "1" + "]" * 62
    deep_ok = k("depth-64")
    groups.append([Rec(kind="hostile:depth-64", key=f"{scope}/{deep_ok}".encode(), ikey=(scope, deep_ok),
                       ctype=item, variant="v0", echo=(scope, deep_ok, item),
                       value=('{"idempotency_key":"%s","scope":"%s","type":"item.create","payload":{"name":"deep",'
                              '"tags":%s}}' % (deep_ok, scope, tags62)).encode())])
    early("depth-65", ('{"idempotency_key":"%s","scope":"%s","type":"item.create","payload":{"name":"deep",'
                       '"tags":[%s]}}' % (k("depth-65"), scope, tags62)).encode(), "invalid_json")
    early("depth-100000", b"[" * 100000 + b"]" * 100000, "invalid_json")
    early("deep-unknown-field", ('{"idempotency_key":"%s","scope":"%s","type":"todo.create","payload":{"title":"x"},'
                                 '"x":%s}' % (k("deep-extra"), scope, "[" * 70 + "]" * 70)).encode(), "invalid_json")

    # Keys and scopes at and beyond their limits.
    accepted("key-255", todo, {"title": "long key"}, key=("K" * 240 + prefix)[-255:].rjust(255, "k"))
    refused_key = ("K" * 256 + prefix)[-256:]
    early("key-256", valid(refused_key), "invalid_key")
    early("key-non-ascii", valid("ключ-" + prefix), "invalid_key")
    early("key-leading-space", valid(" " + k("lead")), "invalid_key")
    early("key-trailing-space", valid(k("trail") + " "), "invalid_key")
    early("key-empty", valid(""), "invalid_key")
    early("key-nul-escape", valid(k("nulkey") + "\x00"), "invalid_key")
    early("key-a-number", b'{"idempotency_key": 42, "scope": "org-hostile", "type": "todo.create", '
                          b'"payload": {"title": "x"}}', "invalid_key")
    early("header-key-256", dumps(command_body(None, scope, todo, {"title": "x"})).encode(), "invalid_key",
          headers=[("idempotency-key", refused_key.encode())])
    accepted("scope-255-non-ascii", todo, {"title": "wide scope"}, scope_=("é" * 250 + prefix[-5:]).rjust(255, "é"))
    early("scope-256", valid(k("scope256"), scope_="é" * 256), "invalid_scope")
    early("scope-nul-escape", valid(k("nulscope"), scope_="org\x00x"), "invalid_scope")
    early("scope-control", valid(k("ctlscope"), scope_="org\x07x"), "invalid_scope")
    early("scope-trailing-space", valid(k("spscope"), scope_="org "), "invalid_scope")
    early("missing-scope", dumps(command_body(k("noscope"), None, todo, {"title": "x"})).encode(), "missing_scope")

    # Headers: duplicated with different values, or disagreeing with the body.
    hk = k("two-key-headers")
    early("two-key-headers", dumps(command_body(None, scope, todo, {"title": "x"})).encode(), "key_mismatch",
          headers=[("idempotency-key", hk.encode()), ("idempotency-key", (hk + "-other").encode())])
    same = k("same-key-headers")
    groups.append([Rec(kind="hostile:same-key-headers", key=b"same-headers", ikey=(scope, same), ctype=todo,
                       variant="v0", echo=(scope, same, todo),
                       value=dumps(command_body(None, scope, todo, {"title": "two equal headers"})).encode(),
                       headers=[("idempotency-key", same.encode()), ("idempotency-key", same.encode())])])
    early("two-scope-headers", dumps(command_body(k("two-scope"), None, todo, {"title": "x"})).encode(),
          "scope_mismatch", headers=[("idempotency-scope", b"org-x"), ("idempotency-scope", b"org-y")])
    early("body-header-key-mismatch", valid(k("bodykey")), "key_mismatch",
          headers=[("idempotency-key", b"another-key")])
    early("body-header-scope-mismatch", valid(k("bodyscope")), "scope_mismatch",
          headers=[("idempotency-scope", b"org-elsewhere")])
    hs = k("key-from-header")
    groups.append([Rec(kind="hostile:key-from-header", key=b"from-header", ikey=(scope, hs), ctype=todo,
                       variant="v0", echo=(scope, hs, todo),
                       value=dumps(command_body(None, None, todo, {"title": "header key"})).encode(),
                       headers=[("idempotency-key", hs.encode()), ("idempotency-scope", scope.encode()),
                                ("trace", b"\x00\xff")])])

    # Types and payload shapes.
    early("unknown-type", valid(k("ut"), ctype="nope.create"), "unknown_type")
    early("type-too-long", valid(k("longtype"), ctype="t" * 300), "unknown_type")
    early("type-a-number", b'{"idempotency_key":"tn-%s","scope":"org-hostile","type":7,"payload":{"title":"x"}}'
          % prefix.encode(), "unknown_type")
    early("missing-type", dumps(command_body(k("mt"), scope, None, {"title": "x"})).encode(), "missing_type")
    early("payload-array", valid(k("parr"), [1, 2]), "invalid_payload")
    early("payload-missing", dumps({"idempotency_key": k("pmiss"), "scope": scope, "type": todo}).encode(),
          "invalid_payload")
    early("payload-empty-table-mode", dumps(command_body(k("pempty"), scope, todo, {})).encode(), "invalid_payload")
    early("payload-bad-column-name", valid(k("pbad"), {"title": "x", "bad-name": 1}), "invalid_payload")
    early("payload-long-column-name", valid(k("plong"), {"title": "x", "c" * 64: 1}), "invalid_payload")
    early("conversation-missing-natural-field",
          dumps(command_body(None, scope, "conversation.create", {"context_type": "ticket", "title": "x"})).encode(),
          "missing_key")
    accepted("unknown-top-level-field", todo, {"title": "forward compatible"})
    groups[-1][0].value = groups[-1][0].value[:-1] + b',"future":{"x":[1,2,3]}}'

    # \u0000 anywhere in the payload: Postgres cannot store U+0000.
    refused("nul-escape-in-title", todo, {"title": "a\u0000b"}, None)
    refused("nul-escape-in-jsonb", item, {"name": "n", "tags": {"x": "\u0000"}}, None)
    refused("nul-escape-in-jsonb-key", item, {"name": "n", "tags": {"a\u0000": 1}}, None)
    refused("nul-escape-sql-mode", note, {"name": k("nulnote"), "body": "x\u0000"}, None)
    refused("nul-escape-unused-field-sql-mode", note, {"name": k("nulunused"), "extra": "\u0000"}, None)

    # Values Postgres refuses: rejected, invalid_payload, the SQLSTATE in the message.
    refused("enum-invalid", item, {"name": "n", "color": "purple"}, "22P02")
    refused("date-invalid", item, {"name": "n", "due": "2024-02-30"}, "22008")
    refused("date-garbage", item, {"name": "n", "due": "not a date"}, "22007")
    refused("int-overflow", item, {"name": "n", "qty": 3000000000}, "22003")
    refused("int-fraction", item, {"name": "n", "qty": Num("1.5")}, "22P02")
    refused("numeric-garbage", item, {"name": "n", "amount": "12,5"}, "22P02")
    refused("enum-invalid-long", item, {"name": "n", "color": "purple" * 2000}, "22P02")  # message quotes 12 KB
    refused("numeric-beyond-range", item, {"name": "n", "amount": Num("1e200000")}, "22003")
    refused("unknown-column", item, {"name": "n", "nope": 1}, "42703")
    refused("regclass-naming-nothing", item, {"name": "n", "rel": "no_such_table"}, "42P01")
    accepted("regclass", item, {"name": "n", "rel": "hostile_parents"}, check=_entity_field("rel", "hostile_parents"))
    refused("sql-mode-invalid-json-text", note, {"name": k("badjson"), "doc_text": "{"}, "22P02")
    # The statement turns a string into jsonb: the stored entity would nest 600 levels (a payload
    # may nest 64). The worker refuses to store what it cannot read back (DD002).
    refused("sql-mode-stored-json-600-deep", note, {"name": k("deepdoc"), "doc_text": "[" * 600 + "]" * 600}, None)
    accepted("sql-mode-stored-json-500-deep", note, {"name": k("deepdoc-ok"), "doc_text": "[" * 500 + "]" * 500})
    refused("generated-always-identity", item, {"name": "n", "id": 5}, "428C9")
    refused("index-row-too-big", item, {"name": "n", "code": "%x" % rng.getrandbits(36000)}, "54000")
    refused("sql-mode-bad-int", note, {"name": k("badint"), "score": "abc"}, "22P02")
    refused("sql-mode-trigger-raises", note, {"name": "forbidden", "score": 1}, "P0001")
    refused("appointment-bad-timestamp", "appointment.create",
            {"professional_id": 1, "starts_at": "yesterday-ish", "ends_at": "2030-01-01T10:00:00Z"}, "22007")

    # Constraint violations: a stored conflict (and replayed to a later record of the same key).
    conflicting("not-null", item, {"code": k("nn")}, "23502", None, replay=True)
    conflicting("check", item, {"name": "n", "qty": -1}, "23514", "hostile_items_qty_check", replay=True)
    conflicting("foreign-key", item, {"name": "n", "parent_id": 999}, "23503", "hostile_items_parent_id_fkey")
    conflicting("unique", item, {"name": "n", "code": "taken"}, "23505", "hostile_items_code_key", replay=True)
    conflicting("unique-sql-mode", note, {"name": "taken"}, "23505", "hostile_notes_name_key")
    conflicting("not-null-sql-mode", note, {"score": 3}, "23502", None)
    conflicting("check-sql-mode", "appointment.create",
                {"professional_id": 900001, "starts_at": "2030-01-01T11:00:00Z", "ends_at": "2030-01-01T10:00:00Z"},
                "23514", None)
    # Natural key taken by another client key on the same partition: the later one conflicts.
    nk_payload = {"context_type": "ticket", "context_id": f"T-{prefix}", "created_by": "u-1", "title": "nk"}
    first_nk, second_nk = k("nk-first"), k("nk-second")
    groups.append([
        make_rec("hostile:natural-key-first", first_nk, scope, "conversation.create", nk_payload,
                 record_key=b"natural-key-pair"),
        make_rec("hostile:natural-key-second", second_nk, scope, "conversation.create", nk_payload,
                 record_key=b"natural-key-pair", claim=("conflict", "23505", "conversations_natural_key")),
    ])

    # Numbers as written.
    exact = k("numeric-exact")
    first = make_rec("hostile:numeric-exact", exact, scope, item, {"name": "exact", "amount": Num("12345678901234567.89")},
                     check=_all(_num_check("amount", "12345678901234567.89"), _raw_contains("12345678901234567.89")))
    groups.append([
        first,
        again(first, "hostile:numeric-exact-again"),
        make_rec("hostile:numeric-exact-edited", exact, scope, item, {"name": "exact", "amount": Num("12345678901234567.80")},
                 variant="v1"),
    ])
    accepted("numeric-1e400-string", item, {"name": "huge", "amount": "1e400"},
             check=_num_check("amount", "1e400"))
    accepted("numeric-1e-400", item, {"name": "tiny", "amount": Num("1e-400")}, check=_num_check("amount", "1e-400"))
    accepted("numeric-beyond-64-bits", item, {"name": "big", "amount": Num("123456789012345678901234567890")},
             check=_all(_num_check("amount", "123456789012345678901234567890"),
                        _raw_contains("123456789012345678901234567890")))
    accepted("numeric-negative-beyond-64-bits", item, {"name": "neg", "amount": Num("-98765432109876543210.5")},
             check=_num_check("amount", "-98765432109876543210.5"))
    # A repeated payload field: the last one counts (as in jsonb), for the row and the fingerprint.
    dup = k("repeated-field")
    dup_first = Rec(kind="hostile:repeated-field", key=f"{scope}/{dup}".encode(), ikey=(scope, dup), ctype=todo,
                    variant="v0", echo=(scope, dup, todo), check=_entity_field("title", "second"),
                    value=('{"idempotency_key":"%s","scope":"%s","type":"todo.create",'
                           '"payload":{"title":"first","title":"second"}}' % (dup, scope)).encode())
    groups.append([dup_first,
                   make_rec("hostile:repeated-field-as-last", dup, scope, todo, {"title": "second"}),
                   make_rec("hostile:repeated-field-as-first", dup, scope, todo, {"title": "first"}, variant="v1")])
    accepted("integer-1e2", todo, {"title": "priority 1e2", "priority": Num("1e2")}, check=_entity_field("priority", 100))
    accepted("sql-mode-1e2", note, {"name": k("note1e2"), "score": Num("1e2")}, check=_entity_field("score", 100))
    # A surrogate pair escape (written \ud83d\ude00 by the ASCII style) is one valid character.
    accepted("unicode", todo, {"title": "emoji \U0001F600 rtl \u05d0\u05d1 zero-width \u200b", "description": "é"},
             check=_entity_field("title", "emoji \U0001F600 rtl \u05d0\u05d1 zero-width \u200b"),
             style=Style(ascii=True))

    # A refused payload and a valid one under the same key, in both orders: the refused one is
    # rejected whatever the state of its key (and stays so when read again).
    for order in ("refused-first", "valid-first"):
        key = k("refused-and-valid-" + order)
        bad = make_rec(f"hostile:refused-{order}", key, scope, item, {"name": "bad", "color": "purple"},
                       variant="bad", reject=rejected("invalid_payload"), sqlstate="22P02")
        good = make_rec(f"hostile:valid-{order}", key, scope, item, {"name": "good", "color": "red"})
        group = [bad, good] if order == "refused-first" else [good, bad]
        group.append(again(bad, f"hostile:refused-{order}-again"))
        groups.append(group)
    # One refused command resent many times (one batch), then a valid one under its key.
    key = k("refused-resent")
    bad = make_rec("hostile:refused-resent", key, scope, item, {"name": "bad", "qty": "many"}, variant="bad",
                   reject=rejected("invalid_payload"), sqlstate="22P02")
    groups.append([again(bad, "hostile:refused-resent") for _ in range(20)] +
                  [make_rec("hostile:valid-after-resent", key, scope, item, {"name": "good", "qty": 1})])
    key = k("refused-and-valid-sql")
    groups.append([
        make_rec("hostile:refused-sql-mode", key, scope, note, {"name": "forbidden"}, variant="bad",
                 reject=rejected("invalid_payload"), sqlstate="P0001"),
        make_rec("hostile:valid-sql-mode", key, scope, note, {"name": key}),
    ])

    # '/' and '%' in scope and key: distinct result keys.
    accepted("slash-in-scope", todo, {"title": "a/b + c"}, key="c", scope_="a/b")
    accepted("slash-in-key", todo, {"title": "a + b/c"}, key="b/c", scope_="a")
    accepted("percent-everywhere", todo, {"title": "percent"}, key="k%2F" + prefix, scope_="100%")

    # Oversized: a result too big for Kafka, and a record too big to take.
    accepted("bytea-600k", item, {"name": "blob", "blob": "a" * 600_000}, check=_entity_omitted)
    early("record-1.2MB", dumps(command_body(k("huge"), scope, todo, {"title": "x" * 1_200_000})).encode(),
          "too_large", key=b"huge", headers=[("trace", b"big")])
    early("record-too-large-long-key-big-headers",
          dumps(command_body(k("huge2"), scope, todo, {"title": "z" * 1_100_000})).encode(), "too_large",
          key=b"K" * 2000, headers=[("trace", b"t"), ("blob", b"h" * 20_000)])
    early("record-just-too-large", dumps(command_body(k("big"), scope, todo,
                                                      {"title": "y" * (MAX_INPUT_BYTES - 60)})).encode(),
          "too_large", key=b"big")
    return groups


# --- Observing the topics ----------------------------------------------------------------------

class TopicTap(threading.Thread):
    """Reads the results and dead-letter topics from the beginning in the background (the dev
    broker keeps ~5 MiB per partition: read as it comes, not at the end)."""

    def __init__(self, client, topics=(RESULTS, DLQ)):
        super().__init__(daemon=True)
        self.consumer = Consumer({**client, "group.id": "adv-tap-" + uuid.uuid4().hex,
                                  "enable.auto.commit": False, "enable.partition.eof": False,
                                  "fetch.message.max.bytes": 4 * 1024 * 1024})
        assignment = []
        for topic in topics:
            md = self.consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
        self.consumer.assign(assignment)
        self.lock = threading.Lock()
        self.messages = {t: [] for t in topics}
        self.stopping = threading.Event()
        self.error = None
        self.start()

    def run(self):
        try:
            while not self.stopping.is_set():
                message = self.consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                record = {"key": message.key(), "value": message.value(), "headers": list(message.headers() or []),
                          "partition": message.partition(), "offset": message.offset(), "read_at": time.time()}
                with self.lock:
                    self.messages[message.topic()].append(record)
        except Exception as error:  # noqa: BLE001 - reported by stop()
            self.error = error
        finally:
            self.consumer.close()

    def snapshot(self, topic):
        with self.lock:
            return list(self.messages[topic])

    def stop(self):
        self.stopping.set()
        self.join(10)
        if self.error:
            raise self.error


def result_source(message):
    try:
        s = json.loads(message["value"])["source"]
        return (s["topic"], s["partition"], s["offset"])
    except Exception:  # noqa: BLE001 - an unparseable result is reported by the checker
        return None


class CommitSampler(threading.Thread):
    """Reads the group's committed offsets every `interval` seconds: (time read, {partition: offset})."""

    def __init__(self, client, interval=1.0):
        super().__init__(daemon=True)
        self.client, self.interval = client, interval
        self.samples = []
        self.stopping = threading.Event()
        self.start()

    def read(self):
        offsets = harness.committed_offsets(self.client, GROUP, COMMANDS)
        return time.time(), offsets

    def run(self):
        while not self.stopping.wait(self.interval):
            with contextlib.suppress(Exception):
                self.samples.append(self.read())

    def stop(self):
        self.stopping.set()
        self.join(30)
        with contextlib.suppress(Exception):
            self.samples.append(self.read())


# --- Workers -----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Member:
    name: str
    proc: harness.Worker
    args: tuple
    env: dict
    fate: str = "alive"          # alive | sigterm | sigkill | failpoint | crashed
    restarts_of: str = None

    def exit_code(self):
        return self.proc.process.poll()


def scrape(member):
    return harness.scrape_metrics(member.proc)


class Cluster(contextlib.ExitStack):
    """Broker + database + readers + workers of one run. Workers that exit on their own (not
    killed by us, not at a failpoint) are recorded and restarted, as an orchestrator would, at
    most `max_restarts` times."""

    def __init__(self, seed, topics=DEFAULT_TOPICS, max_restarts=4, log=print):
        super().__init__()
        self.seed = seed
        self.started = time.time()
        self.log = lambda text: log(f"    [{time.time() - self.started:5.1f}s] {text}")
        try:
            self.broker = self.enter_context(open_broker(topics))
            self.db = self.enter_context(harness.Database(extra_sql=[HOSTILE_SQL]))
            self.baseline = {table: int(self.db.scalar(f"SELECT coalesce(max(id), 0) FROM {table}"))
                             for table in set(TABLE_OF_TYPE.values())}
            self.verbose = bool(os.environ.get("ADV_VERBOSE"))
            self.client = client_config(self.broker)
            self.partitions = self._partition_count(COMMANDS)
            self.tap = TopicTap(self.client)
            self.callback(self.tap.stop)
            self.sampler = CommitSampler(self.client)
            self.callback(self.sampler.stop)
            self.producer = Producer({**self.client, "enable.idempotence": True,
                                      "linger.ms": 5, "compression.type": "lz4",
                                      "message.max.bytes": 4 * 1024 * 1024, "batch.size": 64 * 1024 * 1024})
            self.callback(self._close_producer)
            self.records, self.sources = [], []
            self.members = []
            self.unexpected = []   # (member name, exit code, log tail)
            self.max_restarts = max_restarts
            self.metrics = []      # scrapes, one per member that was alive at the end
            self.lock = threading.RLock()
            self.stopping = threading.Event()
            self.supervisor = threading.Thread(target=self._supervise, daemon=True)
            self.supervisor.start()
            self.callback(self._stop_supervisor)
            self.callback(self._stop_members)
        except BaseException:
            self.close()
            raise

    def _close_producer(self):
        self.producer.flush(10)
        self.producer = None  # destroyed now, before the broker goes away

    def _partition_count(self, topic):
        consumer = Consumer({**self.client, "group.id": "adv-md-" + uuid.uuid4().hex})
        try:
            return len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        finally:
            consumer.close()

    # Workers
    def start(self, name, *args, env=None, failpoint=None, batch=100):
        env = dict(env or {})
        if failpoint:
            env["DEDUP_FAILPOINT"] = failpoint
        all_args = ("--max-batch", str(batch), *args)
        proc = harness.Worker(self.broker, self.db.conninfo, extra_args=all_args, env=env, name=name,
                              config=HOSTILE_YAML)
        member = Member(name, proc, all_args, env, fate="failpoint" if failpoint else "alive")
        if self.verbose:
            self.log(f"start {name} {' '.join(args)}" + (f" DEDUP_FAILPOINT={failpoint}" if failpoint else ""))
        with self.lock:
            self.members.append(member)
        return member

    def kill(self, member, sig=signal.SIGKILL):
        if self.verbose:
            self.log(f"{signal.Signals(sig).name} {member.name}")
        with self.lock:
            member.fate = "sigkill" if sig == signal.SIGKILL else "sigterm"
        member.proc.kill(sig)

    def stop(self, member, timeout=60):
        """SIGTERM; returns the exit code (None: did not exit in time, then SIGKILLed)."""
        self.kill(member, signal.SIGTERM)
        try:
            return member.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            member.proc.kill(signal.SIGKILL)
            member.proc.wait(10)
            return None

    def wait_assigned(self, member, timeout=60):
        try:
            harness.wait_for(lambda: "kafka: assigned" in member.proc.log_text() or member.exit_code() is not None,
                             timeout, f"{member.name} assigned")
            if self.verbose:
                self.log(f"{member.name} assigned")
        except TimeoutError:
            self.log(f"{member.name} not assigned after {timeout}s")

    def wait_exit(self, member, timeout=120):
        try:
            return member.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self):
        with self.lock:
            return [m for m in self.members if m.exit_code() is None]

    def _supervise(self):
        while not self.stopping.wait(0.3):
            with self.lock:
                for member in list(self.members):
                    code = member.exit_code()
                    if code is None or member.fate in ("sigkill", "sigterm", "crashed"):
                        continue
                    if member.fate == "failpoint" and code == -signal.SIGKILL and \
                            "TEST FAILPOINT" in member.proc.log_text():
                        member.fate = "failpoint-fired"
                        continue
                    if member.fate == "failpoint-fired":
                        continue
                    member.fate = "crashed"
                    self.unexpected.append((member.name, code, member.proc.log_text()[-2500:]))
                    restarts = sum(1 for m in self.members if m.restarts_of)
                    if restarts < self.max_restarts and not self.stopping.is_set():
                        env = {k: v for k, v in member.env.items() if k != "DEDUP_FAILPOINT"}
                        self.log(f"{member.name} exited {code}: restarting it")
                        replacement = harness.Worker(self.broker, self.db.conninfo, extra_args=member.args, env=env,
                                                     name=member.name + "-r", config=HOSTILE_YAML)
                        self.members.append(Member(member.name + "-r", replacement, member.args, env,
                                                   restarts_of=member.name))

    def _stop_supervisor(self):
        self.stopping.set()
        self.supervisor.join(10)

    def _stop_members(self):
        for member in self.members:
            with contextlib.suppress(Exception):
                member.proc.__exit__(None, None, None)

    # Producing
    def produce(self, records):
        """Produces records (in order), waits for every delivery; appends to records/sources."""
        positions = [None] * len(records)
        errors = []

        def report(index):
            def callback(err, message):
                if err is not None:
                    errors.append(f"record {index}: {err}")
                else:
                    positions[index] = (message.topic(), message.partition(), message.offset())
            return callback

        for i, rec in enumerate(records):
            kwargs = {"value": rec.value, "key": rec.key, "headers": rec.headers, "on_delivery": report(i)}
            if rec.partition is not None:
                kwargs["partition"] = rec.partition % self.partitions
            while True:
                try:
                    self.producer.produce(COMMANDS, **kwargs)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)
        if self.producer.flush(120) or errors or None in positions:
            raise RuntimeError(f"producing failed: {errors[:3]}")
        with self.lock:
            self.records.extend(records)
            self.sources.extend(positions)
        return positions

    def feed(self, records, rate, chunk=None):
        """Produces in the background at about `rate` records/s, `chunk` records at a time
        (default: a quarter second's worth); returns the thread (finish() it)."""
        cluster = self
        chunk = chunk or max(1, int(rate / 4))

        class Feeder(threading.Thread):
            error = None

            def run(self):
                try:
                    next_at = time.time()
                    for start in range(0, len(records), chunk):
                        cluster.produce(records[start:start + chunk])
                        next_at += chunk / rate
                        time.sleep(max(0.0, next_at - time.time()))
                except Exception as error:  # noqa: BLE001 - re-raised by finish()
                    self.error = error

            def finish(self, timeout=600):
                self.join(timeout)
                if self.is_alive():
                    raise RuntimeError("the feeder did not finish")
                if self.error:
                    raise self.error

        feeder = Feeder(daemon=True)
        feeder.start()
        return feeder

    def result_count(self):
        return len(self.tap.snapshot(RESULTS))

    def wait_results_growth(self, count, timeout=60):
        """Waits until `count` more results arrived (or timeout; returns whether they did)."""
        target = self.result_count() + count
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.result_count() >= target:
                return True
            time.sleep(0.2)
        return False

    def wait_all(self, timeout=240, stall=45):
        """Waits until every produced record has a result; gives up after `timeout`, or after
        `stall` seconds without a result for a new record. Then waits for the group to commit up
        to the end of every partition (a shorter wait). Returns whether both happened."""
        wanted = set(self.sources)
        if self.verbose:
            self.log(f"waiting for the results of {len(wanted)} records")
        deadline = time.time() + timeout
        have, last_change = -1, time.time()
        while time.time() < deadline:
            got = {result_source(m) for m in self.tap.snapshot(RESULTS)}
            missing = len(wanted - got)
            if missing == 0:
                break
            if len(got) != have:
                have, last_change = len(got), time.time()
            elif time.time() - last_change > stall:
                self.log(f"no new result for {stall}s, {missing} record(s) without one: giving up")
                return False
            time.sleep(0.3)
        else:
            return False
        end = harness.end_offsets(self.client, COMMANDS)
        try:
            harness.wait_for(lambda: all(harness.committed_offsets(self.client, GROUP, COMMANDS).get(p, -1) >= o
                                         for p, o in end.items() if o > 0), 30, "offsets committed", interval=1)
        except TimeoutError:
            return False
        time.sleep(1.5)  # repeated results still in flight are checked too
        return True

    def scrape_all(self):
        """Scrapes every live member's /metrics (for invariant 7: call when idle, before stopping)."""
        self.metrics = [(m.name, scrape(m)) for m in self.alive()]
        return self.metrics

    def stop_all(self, timeout=60):
        """SIGTERM to every live member at once, then waits for each (invariant 6 checks that each
        exits 0)."""
        members = self.alive()
        for member in members:
            self.kill(member, signal.SIGTERM)
        deadline = time.time() + timeout
        for member in members:
            try:
                member.proc.wait(max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                member.proc.kill(signal.SIGKILL)
                member.proc.wait(10)

    def collect(self, faults=False):
        """Everything the checker needs; stops the readers and the sampler."""
        self.sampler.stop()
        time.sleep(0.5)
        self.tap.stop()
        return RunData(seed=self.seed, records=list(self.records), sources=list(self.sources),
                       results=self.tap.snapshot(RESULTS), dead=self.tap.snapshot(DLQ),
                       commits=list(self.sampler.samples),
                       end_offsets=harness.end_offsets(self.client, COMMANDS),
                       members=list(self.members), unexpected=list(self.unexpected), metrics=list(self.metrics),
                       db=self.db, baseline=dict(self.baseline), broker_dir=self.broker.dir, faults=faults,
                       max_message_bytes=getattr(self.broker, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))


def client_config(broker):
    """librdkafka settings for our own clients of `broker` (a secured real broker needs more than
    bootstrap.servers)."""
    config = getattr(broker, "client_config", None)
    return dict(config) if isinstance(config, dict) else {"bootstrap.servers": broker.bootstrap}


def open_broker(topics):
    """The harness's broker: a factory chosen by the environment if harness has one (real Kafka),
    else the dev broker."""
    factory = getattr(harness, "make_broker", None) or getattr(harness, "broker_factory", None)
    if callable(factory):
        return factory(topics=topics)
    return harness.Broker(topics=topics)


# --- The checker -------------------------------------------------------------------------------

@dataclasses.dataclass
class RunData:
    seed: int
    records: list
    sources: list
    results: list
    dead: list
    commits: list
    end_offsets: dict
    members: list
    unexpected: list
    metrics: list
    db: object
    baseline: dict
    broker_dir: str
    faults: bool
    max_message_bytes: int


class RecordContext:
    def __init__(self, rec, source, raw, result, key_row):
        self.rec, self.source, self.raw, self.result, self.key_row = rec, source, raw, result, key_row

    def entity(self):
        return self.result.get("entity")

    def brief(self):
        return brief(self.result)


def brief(result):
    if not isinstance(result, dict):
        return repr(result)[:200]
    error = result.get("error") or {}
    return (f"{result.get('status')}" + (f"/{error.get('code')}" if error else "") +
            (" replayed" if result.get("replayed") else "") +
            (f" ({str(error.get('message'))[:160]})" if error.get("message") else ""))


def parse_ts(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def message_size(message):
    return len(message["key"] or b"") + len(message["value"] or b"") + \
        sum(len(n.encode()) + len(v or b"") for n, v in message["headers"])


class Violations:
    NAMES = {1: "every record has a result", 2: "repeated results identical", 3: "entities = created keys",
             4: "one claimant per key, outcomes as expected", 5: "no commit past a record without a result",
             6: "no worker exit/loop on record content", 7: "metrics = results topic",
             8: "dead letters and sizes", 9: "deterministic per record"}

    def __init__(self):
        self.items = collections.defaultdict(list)

    def add(self, number, text):
        self.items[number].append(text)

    def __bool__(self):
        return bool(self.items)

    def summary(self, limit=8):
        lines = []
        for number in sorted(self.items):
            found = self.items[number]
            lines.append(f"  invariant {number} ({self.NAMES[number]}): {len(found)} violation(s)")
            lines += [f"    - {text}" for text in found[:limit]]
            if len(found) > limit:
                lines.append(f"    ... {len(found) - limit} more")
        return "\n".join(lines)

    def one_liners(self):
        return {n: f"{len(v)}x, e.g. {v[0][:200]}" for n, v in sorted(self.items.items())}


def fetch_key_rows(db):
    text = db.scalar(
        "SELECT coalesce(json_agg(json_build_object('scope', scope, 'key', idempotency_key, 'type', command_type, "
        "'status', status, 'entity', result->'entity', 'error', result->'error', "
        "'source', json_build_array(source_topic, source_partition, source_offset))), '[]') "
        "FROM dedup.idempotency_keys")
    rows = loads_exact(text or "[]")
    return {(r["scope"], r["key"]): r for r in rows}


def check_entities(run, v):
    """Invariant 3, per table, in SQL (exact jsonb text comparison), in one query."""
    tables = collections.defaultdict(list)
    for ctype, table in TABLE_OF_TYPE.items():
        tables[table].append(ctype)
    parts = []
    for table, types in sorted(tables.items()):
        type_list = ",".join(f"'{t}'" for t in types)
        base = run.baseline.get(table, 0)
        parts.append(f"""
            (WITH k AS (SELECT scope, idempotency_key AS key, result->'entity' AS e,
                               (result->'entity'->>'id')::bigint AS id
                          FROM dedup.idempotency_keys WHERE status = 'created' AND command_type IN ({type_list})),
                  t AS (SELECT id, to_jsonb(x) AS row FROM {table} x WHERE id > {base})
             SELECT json_build_object(
              'table', '{table}',
              'no_row', (SELECT coalesce(json_agg(json_build_array(scope, key, id)), '[]') FROM
                          (SELECT * FROM k WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = k.id) LIMIT 10) a),
              'differs', (SELECT coalesce(json_agg(json_build_array(scope, key, id, left(e::text, 200),
                                                                   left(row::text, 200))), '[]') FROM
                          (SELECT k.scope, k.key, k.id, k.e, t.row FROM k JOIN t USING (id)
                            WHERE k.e::text <> t.row::text LIMIT 10) d),
              'orphans', (SELECT coalesce(json_agg(left(row::text, 200)), '[]') FROM
                          (SELECT * FROM t WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.id = t.id) LIMIT 10) o),
              'orphan_count', (SELECT count(*) FROM t WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.id = t.id)),
              'doubles', (SELECT coalesce(json_agg(json_build_array(id, n)), '[]') FROM
                          (SELECT id, count(*) AS n FROM k GROUP BY id HAVING count(*) > 1 LIMIT 10) d)))""")
    sql = "SELECT json_build_array(" + ",".join(parts) + ")"
    for found in json.loads(run.db.scalar(sql)):
        table = found["table"]
        for scope, key, id_ in found["no_row"]:
            v.add(3, f"{table}: key ({scope!r}, {key[:60]!r}) is created with entity id {id_}, which is not in the table")
        for scope, key, id_, stored, row in found["differs"]:
            v.add(3, f"{table}: entity {id_} of key ({scope!r}, {key[:60]!r}) differs from its row: key row {stored} vs row {row}")
        if found["orphan_count"]:
            v.add(3, f"{table}: {found['orphan_count']} row(s) that no created key row references (orphans), "
                     f"e.g. {found['orphans'][:3]}")
        for id_, n in found["doubles"]:
            v.add(3, f"{table}: entity {id_} is referenced by {n} key rows")


def check_invariants(run):
    """All invariants over one run. Returns (Violations, stats)."""
    v = Violations()
    stats = collections.Counter()
    rec_of = {}
    for rec, source in zip(run.records, run.sources):
        rec_of[source] = rec
    stats["records"] = len(run.records)

    # 1, 2, 9: results per source.
    by_source = collections.defaultdict(list)    # source -> [(raw text, parsed, message)]
    for message in run.results:
        try:
            raw = message["value"].decode()
            result = loads_exact(raw)
            source = (result["source"]["topic"], result["source"]["partition"], result["source"]["offset"])
        except Exception as error:  # noqa: BLE001
            v.add(2, f"unparseable result at {message['partition']}/{message['offset']}: {error}")
            continue
        by_source[source].append((raw, result, message))
    stats["results"] = len(run.results)
    missing = [s for s in run.sources if s not in by_source]
    if missing:
        kinds = collections.Counter(rec_of[s].kind for s in missing)
        v.add(1, f"{len(missing)} of {len(run.sources)} records have no result; by kind: {dict(kinds.most_common(12))}")
    for source in missing:
        rec = rec_of[source]
        v.add(1, f"no result for {source} ({rec.kind}, ikey={_short(rec.ikey)})")
    for source in set(by_source) - set(run.sources):
        v.add(1, f"a result for a record that was never produced: {source}")
    repeated = 0
    for source, entries in by_source.items():
        if len(entries) > 1:
            repeated += 1
        first = {k: x for k, x in entries[0][1].items() if k != "processed_at"}
        for _, result, _ in entries[1:]:
            other = {k: x for k, x in result.items() if k != "processed_at"}
            if other != first:
                kind = rec_of[source].kind if source in rec_of else "?"
                number = 9 if (other.get("status"), other.get("entity"), other.get("error")) != \
                    (first.get("status"), first.get("entity"), first.get("error")) else 2
                v.add(number, f"{source} ({kind}) got different results: {brief(first)} then {brief(other)}"
                              + _diff(first, other))
    stats["records processed more than once"] = repeated

    # 3: entity tables vs key rows.
    key_rows = fetch_key_rows(run.db)
    stats["key rows"] = len(key_rows)
    check_entities(run, v)

    # 4: per record and per (scope, key).
    per_key = collections.defaultdict(list)  # ikey -> [(produce index, rec, source, result)]
    bad_keys = []
    statuses = collections.Counter()
    for index, (rec, source) in enumerate(zip(run.records, run.sources)):
        if source not in by_source:
            continue
        raw, result, message = by_source[source][0]
        statuses[result.get("status")] += 1
        problems = check_record(rec, raw, result, message, key_rows)
        for problem in problems:
            if problem.startswith("result record key"):
                bad_keys.append(f"{problem} ({rec.kind})")
                continue
            v.add(4, f"{source} {rec.kind} ikey={_short(rec.ikey)}: {problem}")
        if rec.ikey is not None and rec.reject is None:
            per_key[rec.ikey].append((index, rec, source, result))
    if bad_keys:
        v.add(4, f"{len(bad_keys)} result(s) with a wrong record key (<scope>/<key>, '%' and '/' escaped), "
                 f"e.g. {'; '.join(bad_keys[:3])}")
    stats.update({f"status {k}": n for k, n in statuses.items()})
    for ikey, entries in per_key.items():
        for problem in check_key(ikey, entries, key_rows.get(ikey)):
            v.add(4, f"ikey={_short(ikey)}: {problem}")
    expected_keys = set(per_key)
    for ikey, row in key_rows.items():
        if ikey not in expected_keys:
            v.add(4, f"a key row for ({_short(ikey)}) that no valid record carries: status {row['status']}, "
                     f"source {row['source']}")

    # 5: committed offsets, sampled while running and at the end.
    first_processed = {}
    for source, entries in by_source.items():
        with contextlib.suppress(Exception):
            first_processed[source] = min(parse_ts(r["processed_at"]) for _, r, _ in entries)
    reported = set()
    checked = collections.Counter()  # partition -> offsets below it already passed an earlier sample
    for taken_at, committed in run.commits:
        for partition, offset in committed.items():
            for o in range(checked[partition], max(0, offset)):
                source = (COMMANDS, partition, o)
                if source in reported:
                    continue
                at = first_processed.get(source)
                if at is None or at > taken_at + 0.25:
                    reported.add(source)
                    rec = rec_of.get(source)
                    when = "never processed" if at is None else f"first processed {at - taken_at:.1f}s later"
                    v.add(5, f"partition {partition} committed at {offset} (seen at +{taken_at - run.commits[0][0]:.1f}s) "
                             f"past offset {o} ({rec.kind if rec else '?'}) without a result: {when}")
            checked[partition] = max(checked[partition], offset)
    final = run.commits[-1][1] if run.commits else {}
    for partition, end in run.end_offsets.items():
        if end > 0 and final.get(partition, -1) < end:
            v.add(6, f"partition {partition}: committed offset {final.get(partition)} never reached the end {end} "
                     f"(a record blocks it?)")

    # 6: worker exits and logs.
    for name, code, tail in run.unexpected:
        v.add(6, f"worker {name} exited on its own with {code}: " + crash_reason(tail))
    for member in run.members:
        text = member.proc.log_text()
        for pattern in ("unexpected error", "permanent database error", "kafka error, stopping", "logic_error",
                        "rebalance callback failed",
                        # ASan/UBSan builds (CI runs one): a report is a defect even if the process lives on.
                        "runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
            if pattern in text:
                v.add(6, f"worker {member.name} logged '{pattern}': " + _grep(text, pattern))
        if not run.faults:
            for pattern in (r"database unavailable \(attempt [3-9]", r"publishing failed .*\(attempt [3-9]"):
                m = re.search(pattern, text)
                if m:
                    v.add(6, f"worker {member.name} retries a batch again and again: " + _grep(text, m.group(0)))
        if member.fate == "sigterm" and member.exit_code() not in (0, None):
            v.add(6, f"worker {member.name} exited {member.exit_code()} after SIGTERM")
    stats["workers"] = len(run.members)
    stats["workers killed"] = sum(1 for m in run.members if m.fate in ("sigkill", "failpoint-fired"))

    # 7: metrics vs the topics (only when every worker ever started was scraped alive).
    if run.metrics:
        complete = len(run.metrics) == len(run.members) and not run.unexpected
        if not complete:
            stats["metrics check skipped (a worker exited)"] = 1
        else:
            check_metrics(run, by_source, v)

    # 8: dead letters.
    check_dead_letters(run, by_source, rec_of, v, stats)
    return v, stats


def _short(ikey):
    if ikey is None:
        return None
    scope, key = ikey
    return f"{scope[:24]!r}/{key[:40]!r}"


def _diff(a, b):
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return " [differ in " + ", ".join(f"{k}: {str(a.get(k))[:80]} vs {str(b.get(k))[:80]}" for k in keys) + "]"


def crash_reason(text):
    """The worker's last 'stopping: ...' message (it spans lines for Postgres errors), in one line."""
    at = text.rfind("stopping: ")
    if at < 0:
        return _last_lines(text, 2)
    reason = text[at + len("stopping: "):at + 1200]
    reason = reason.split(" info ")[0]
    return " ".join(reason.split())[:400]


def _last_lines(text, n):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(line[-220:] for line in lines[-n:])


def _grep(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line[-260:]
    return ""


def check_record(rec, raw, result, message, key_rows):
    """What the generator knows about one record's (first) result."""
    problems = []
    status = result.get("status")
    error = result.get("error") or {}
    # The result record key: <scope>/<key>, each part escaped; null when either is unknown.
    scope, key = result.get("scope"), result.get("idempotency_key")
    expected_key = result_key(scope, key) if scope is not None and key is not None else None
    if message["key"] != expected_key:
        problems.append(f"result record key {message['key'][:80] if message['key'] else None!r}, "
                        f"expected {expected_key[:80] if expected_key else None!r}")
    if rec.echo is not None:
        if (scope, key, result.get("type")) != rec.echo:
            problems.append(f"result names ({scope!r}, {key!r}, {result.get('type')!r}), expected {rec.echo}")
    if rec.reject is not None:
        if status != "rejected" or error.get("code") not in rec.reject:
            problems.append(f"expected rejected/{'|'.join(sorted(rec.reject))}, got {brief(result)}")
        elif rec.sqlstate and not str(error.get("message")).endswith(f"(SQLSTATE {rec.sqlstate})"):
            problems.append(f"rejection message does not end with (SQLSTATE {rec.sqlstate}): "
                            f"{str(error.get('message'))[-300:]!r}")
        if status == "rejected" and result.get("entity") is not None:
            problems.append("a rejected result carries an entity")
    elif status == "rejected":
        problems.append(f"rejected, expected a stored outcome: {brief(result)}")
    if len(str(error.get("message", "")).encode()) > MAX_MESSAGE_TEXT:
        problems.append(f"error message of {len(str(error.get('message')).encode())} bytes (at most {MAX_MESSAGE_TEXT})")
    if status == "conflict":
        for field in ("code", "sqlstate", "message"):
            if not error.get(field):
                problems.append(f"conflict error without {field}: {error}")
        if error.get("code") != "conflict":
            problems.append(f"conflict error code {error.get('code')!r}")
    if rec.check is not None and status in ("created", "duplicate"):
        ctx = RecordContext(rec, None, raw, result, key_rows.get(rec.ikey))
        try:
            problems += rec.check(ctx)
        except Exception as exc:  # noqa: BLE001 - a check that blows up is a finding too
            problems.append(f"check failed: {exc!r}")
    return problems


def check_key(ikey, entries, row):
    """Invariant 4 for one (scope, key): entries = [(produce index, rec, source, first result)] of
    its records that are not expected to be rejected."""
    problems = []
    claimants = [e for e in entries if e[3].get("status") in ("created", "conflict") and not e[3].get("replayed")]
    if row is None:
        return [f"no key row, results: {[brief(e[3]) for e in entries][:4]}"]
    if len(claimants) != 1:
        problems.append(f"{len(claimants)} claimants: {[(e[2], brief(e[3])) for e in claimants][:4]}")
    row_source = tuple(row["source"])
    by_source = {e[2]: e for e in entries}
    claimant = by_source.get(row_source)
    if claimant is None:
        return problems + [f"the key row points at {row_source}, not at one of its records "
                           f"{[e[2] for e in entries][:4]}"]
    index, rec, source, result = claimant
    if result.get("status") != row["status"] or result.get("replayed"):
        problems.append(f"the key row's record {source} got {brief(result)}, the row says {row['status']}")
    if all(e[1].ordered for e in entries):
        first = min(entries, key=lambda e: e[0])
        if first[2] != source:
            problems.append(f"the first record {first[2]} ({first[1].kind}) did not claim; {source} ({rec.kind}) did")
    # The claimant's outcome is what its payload must give.
    expected = rec.claim
    if row["status"] != expected[0]:
        problems.append(f"claimant {source} ({rec.kind}) is {row['status']}, expected {expected[0]}"
                        f" ({brief(result)})")
    elif expected[0] == "conflict":
        error = row.get("error") or {}
        if expected[1] and error.get("sqlstate") != expected[1]:
            problems.append(f"conflict sqlstate {error.get('sqlstate')!r}, expected {expected[1]}")
        if expected[2] and error.get("constraint") != expected[2]:
            problems.append(f"conflict constraint {error.get('constraint')!r}, expected {expected[2]}")
    if row["status"] == "conflict" and (result.get("error") != row.get("error") or result.get("entity") is not None):
        problems.append(f"the conflict result {brief(result)} is not the stored conflict {row.get('error')}")
    if row["status"] == "created" and result.get("entity") is not None and result.get("entity") != row.get("entity"):
        problems.append(f"the created result's entity differs from the key row's: {str(result.get('entity'))[:160]} "
                        f"vs {str(row.get('entity'))[:160]}")
    for index2, rec2, source2, result2 in entries:
        if source2 == source:
            continue
        status2 = result2.get("status")
        if rec2.variant == rec.variant:
            if row["status"] == "created":
                if status2 != "duplicate" or not result2.get("replayed"):
                    problems.append(f"{source2} ({rec2.kind}, same payload as the claimant) got {brief(result2)}, "
                                    "expected duplicate")
                elif (result2.get("entity"), result2.get("entity_omitted")) != \
                        (result.get("entity"), result.get("entity_omitted")):
                    problems.append(f"duplicate {source2} carries another entity than the claimant")
            else:
                if status2 != "conflict" or not result2.get("replayed") or result2.get("error") != result.get("error"):
                    problems.append(f"{source2} ({rec2.kind}, same payload as the conflicting claimant) got "
                                    f"{brief(result2)}, expected the replayed conflict")
        elif status2 != "key_reused" or (result2.get("error") or {}).get("code") != "key_reused":
            problems.append(f"{source2} ({rec2.kind}, another payload than the claimant {rec.kind}) got "
                            f"{brief(result2)}, expected key_reused")
        # Duplicates, replayed conflicts and key reuse all report when the key was first processed.
        if result2.get("first_processed_at") != result.get("first_processed_at"):
            problems.append(f"{source2} ({status2}): first_processed_at {result2.get('first_processed_at')} differs "
                            f"from the claimant's {result.get('first_processed_at')}")
    return problems


def check_metrics(run, by_source, v):
    from_topic = collections.Counter()
    for message in run.results:
        with contextlib.suppress(Exception):
            result = json.loads(message["value"])
            label = result.get("type") if result.get("type") in CONFIGURED_TYPES else "unknown"
            from_topic[(label, result.get("status"))] += 1
    from_metrics = collections.Counter()
    dead_metrics = collections.Counter()
    for _, samples in run.metrics:
        for labels, value in samples.get("dedup_commands_total", {}).items():
            d = dict(labels)
            from_metrics[(d.get("type"), d.get("status"))] += int(value)
        for labels, value in samples.get("dedup_dead_letters_total", {}).items():
            dead_metrics[dict(labels).get("reason")] += int(value)
    from_metrics = +from_metrics
    if from_metrics != from_topic:
        diff = {k: (from_metrics.get(k, 0), from_topic.get(k, 0)) for k in set(from_metrics) | set(from_topic)
                if from_metrics.get(k, 0) != from_topic.get(k, 0)}
        v.add(7, f"dedup_commands_total (metrics, topic) differ: {diff}")
    dead_topic = collections.Counter()
    for message in run.dead:
        dead_topic[_header(message, "dedup-error-code", b"?").decode(errors="replace")] += 1
    if +dead_metrics != dead_topic:
        v.add(7, f"dedup_dead_letters_total by reason {dict(+dead_metrics)} != dead-letter topic {dict(dead_topic)}")


def _header(message, name, default=None):
    value = default
    for n, val in message["headers"]:
        if n == name:
            value = val  # the last one: ours come after the original headers
    return value


def check_dead_letters(run, by_source, rec_of, v, stats):
    limit = run.max_message_bytes
    for message in run.results:
        size = message_size(message)
        if size > limit:
            v.add(8, f"result at {message['partition']}/{message['offset']} is {size} bytes (> {limit})")
    dead_by_source = collections.defaultdict(list)
    for message in run.dead:
        size = message_size(message)
        if size > limit:
            v.add(8, f"dead letter at {message['offset']} is {size} bytes (> {limit})")
        try:
            source = (_header(message, "dedup-source-topic").decode(), int(_header(message, "dedup-source-partition")),
                      int(_header(message, "dedup-source-offset")))
        except Exception:  # noqa: BLE001
            v.add(8, f"dead letter at {message['offset']} without dedup-source-* headers")
            continue
        dead_by_source[source].append(message)
    stats["dead letters"] = len(run.dead)
    rejected = {s for s, entries in by_source.items() if entries[0][1].get("status") == "rejected"}
    for source in sorted(rejected):
        rec = rec_of.get(source)
        kind = rec.kind if rec else "?"
        letters = dead_by_source.get(source)
        if not letters:
            v.add(8, f"rejected {source} ({kind}) has no dead letter")
            continue
        first = letters[0]
        for other in letters[1:]:
            if (other["key"], other["value"], other["headers"]) != (first["key"], first["value"], first["headers"]):
                v.add(2, f"dead letters of {source} ({kind}) differ")
        code = by_source[source][0][1]["error"]["code"]
        got = _header(first, "dedup-error-code")
        if len(_header(first, "dedup-error-message", b"")) > MAX_MESSAGE_TEXT:
            v.add(8, f"dead letter of {source} ({kind}): dedup-error-message longer than {MAX_MESSAGE_TEXT} bytes")
        if got != code.encode():
            v.add(8, f"dead letter of {source} ({kind}) has dedup-error-code {got!r}, the result says {code!r}")
        if rec is None:
            continue
        truncated = _header(first, "dedup-truncated")
        original = rec.value or b""
        if truncated is None:
            if first["value"] != rec.value or first["key"] != rec.key:
                v.add(8, f"dead letter of {source} ({kind}) does not keep the original key/value "
                         f"({len(first['value'] or b'')} of {len(original)} bytes) and is not flagged dedup-truncated")
            if [h for h in first["headers"][:len(rec.headers or [])]] != list(rec.headers or []):
                v.add(8, f"dead letter of {source} ({kind}) does not start with the original headers")
        else:
            # Cut down, always the same way (docs/contract.md §3).
            size = _header(first, "dedup-original-size")
            digest = _header(first, "dedup-original-sha256")
            cut = set(truncated.decode(errors="replace").split(","))
            if size != str(len(original)).encode():
                v.add(8, f"dead letter of {source} ({kind}): dedup-original-size {size!r}, original is {len(original)}")
            if digest != hashlib.sha256(original).hexdigest().encode():
                v.add(8, f"dead letter of {source} ({kind}): dedup-original-sha256 is not the original's")
            value_kept = original[:DLQ_VALUE_PREFIX] if "value" in cut else rec.value
            if first["value"] != value_kept:
                v.add(8, f"dead letter of {source} ({kind}) keeps {len(first['value'] or b'')} bytes of the value, "
                         f"expected {'its first 4096' if 'value' in cut else 'all'} (dedup-truncated {truncated!r})")
            key_kept = (rec.key or b"")[:DLQ_KEY_PREFIX] if "key" in cut else rec.key
            if first["key"] != key_kept:
                v.add(8, f"dead letter of {source} ({kind}): key not kept as dedup-truncated {truncated!r} says")
            headers_size = sum(len(n.encode()) + len(x or b"") for n, x in rec.headers or [])
            if ("headers" in cut) != (headers_size > DLQ_MAX_ORIGINAL_HEADERS):
                v.add(8, f"dead letter of {source} ({kind}): original headers ({headers_size} B) "
                         f"{'dropped' if 'headers' in cut else 'kept'}")
            elif "headers" not in cut and first["headers"][:len(rec.headers or [])] != list(rec.headers or []):
                v.add(8, f"dead letter of {source} ({kind}) does not start with the original headers")
            if not cut <= {"key", "value", "headers", "none"}:
                v.add(8, f"dead letter of {source} ({kind}): dedup-truncated {truncated!r}")
    for source in set(dead_by_source) - rejected:
        rec = rec_of.get(source)
        v.add(8, f"dead letter for {source} ({rec.kind if rec else '?'}), whose result is not rejected")


def hostile_outcomes(run):
    """One line per hostile record: what it got (for reading a run, ADV_VERBOSE=2)."""
    first = {}
    for message in run.results:
        with contextlib.suppress(Exception):
            result = loads_exact(message["value"])
            s = result["source"]
            first.setdefault((s["topic"], s["partition"], s["offset"]), (result, message))
    dead = {}
    for message in run.dead:
        with contextlib.suppress(Exception):
            dead.setdefault((_header(message, "dedup-source-topic").decode(), int(_header(message, "dedup-source-partition")),
                             int(_header(message, "dedup-source-offset"))), message)
    lines = []
    for rec, source in zip(run.records, run.sources):
        if not rec.kind.startswith("hostile"):
            continue
        result, message = first.get(source, (None, None))
        text = brief(result) if result else "NO RESULT"
        if result and result.get("entity_omitted"):
            text += f" entity_omitted={result['entity_omitted']}"
        if result and message:
            text += f" [{message_size(message)} B]"
        if source in dead:
            d = dead[source]
            text += (f" DLQ[{message_size(d)} B, truncated={_header(d, 'dedup-truncated')}, "
                     f"size={_header(d, 'dedup-original-size')}]")
        lines.append(f"      {rec.kind[8:]:<40} {text[:260]}")
    return "hostile outcomes:\n" + "\n".join(lines)


def describe_run(run, stats, seconds):
    kinds = collections.Counter(r.kind.split(":")[0] for r in run.records)
    return (f"seed={run.seed}: {stats['records']} records ({dict(kinds)}), {stats['results']} results, "
            f"{stats.get('dead letters', 0)} dead letters, {stats['key rows']} key rows, "
            f"{stats['records processed more than once']} record(s) processed more than once, "
            f"{stats['workers']} worker process(es) ({stats['workers killed']} killed), {seconds:.0f}s")


def failure_report(scenario, run, violations, stats, seconds):
    logs = "\n".join(f"  {m.name} [{m.fate}, exit {m.exit_code()}] {m.proc.log_path}" for m in run.members)
    return (f"\n{scenario} FAILED with seed {run.seed} (rerun: ADV_SEED={run.seed}; logs in {run.broker_dir})\n"
            f"{describe_run(run, stats, seconds)}\n{violations.summary()}\nworkers:\n{logs}")


# --- Scenarios (shared by test_adversarial.py and soak.py) -------------------------------------

class ScenarioFailed(AssertionError):
    def __init__(self, outcome):
        super().__init__(outcome.text)
        self.outcome = outcome


@dataclasses.dataclass
class Outcome:
    name: str
    seed: int
    violations: Violations
    stats: collections.Counter
    seconds: float
    text: str


def run_scenario(name, seed, body, topics=DEFAULT_TOPICS, faults=False, log=print, **kw):
    """Runs body(cluster, rng, **kw) on a fresh broker and database, then checks every invariant.
    Raises ScenarioFailed (inside the cluster, so the broker's directory with the worker logs is
    kept) with a report naming the seed; returns the Outcome otherwise."""
    started = time.time()
    with Cluster(seed, topics=topics, log=log) as cluster:
        expectations = body(cluster, random.Random(seed), **kw) or {}
        run = cluster.collect(faults=faults)
        violations, stats = check_invariants(run)
        if os.environ.get("ADV_VERBOSE") == "2":
            log(hostile_outcomes(run))
        if expectations.get("repeats") and not stats["records processed more than once"]:
            violations.add(9, "no record was processed twice: the crashes did not test redelivery")
        for problem in expectations.get("problems", []):
            violations.add(expectations.get("problem_invariant", 6), problem)
        seconds = time.time() - started
        if violations:
            outcome = Outcome(name, seed, violations, stats, seconds,
                              failure_report(name, run, violations, stats, seconds))
            raise ScenarioFailed(outcome)
        outcome = Outcome(name, seed, violations, stats, seconds, f"{name}: {describe_run(run, stats, seconds)}")
    return outcome


def scenario_hostile_stream(cluster, rng, keys=900, rate=150):
    """The random stream and the whole hostile corpus through three workers (one polling up to
    6 s, one joining mid-stream); nobody is killed, so /metrics must match the topics exactly."""
    stream = Stream(cluster.seed, keys=keys, prefix=f"a{cluster.seed}", hostile_copies=max(1, keys // 3000))
    cluster.start("a", "--batch-wait", "6s")
    cluster.start("b", batch=50)
    feeder = cluster.feed(stream.records, rate=rate)
    cluster.wait_results_growth(min(300, len(stream) // 3), 60)
    c = cluster.start("c", batch=200)            # joins while records flow: a rebalance
    cluster.wait_assigned(c)
    feeder.finish()
    cluster.wait_all()
    cluster.scrape_all()
    cluster.stop_all()
    return {}


def scenario_failpoint_crashes(cluster, rng, keys=1000,
                               failpoints=("after_db_commit:2", "after_db_commit_in_flight:2", "before_offset_commit:3",
                                           "after_offset_commit_sent:2")):
    """Phase 1: the hostile corpus alone, and a worker that SIGKILLs itself once the results and
    dead letters of its first batch are acknowledged (offsets not committed): the next owner
    reads those records again, and every one must get the identical result (a refused payload
    stays `rejected` although its key was claimed meanwhile by a valid payload). Phase 2: the
    random stream, a worker crashing at each other failpoint in turn (the next one takes over
    the group). Then two workers finish."""
    stream = Stream(cluster.seed, keys=keys, prefix=f"b{cluster.seed}", hostile=False)
    # One partition, one message set (Cluster's producer batches up to 64 MiB): the first fetch
    # hands the whole corpus to the first batch, whatever the build's speed.
    corpus = [dataclasses.replace(rec, partition=0) for copy in range(max(1, keys // 3000))
              for group in hostile_corpus(random.Random(cluster.seed * 7919 + 1 + copy),
                                          f"b{cluster.seed}" + ("" if not copy else f"x{copy}"))
              for rec in group]
    problems = []

    def crash(name, failpoint, batch=100):
        member = cluster.start(name, failpoint=failpoint, batch=batch)
        code = cluster.wait_exit(member, 120)
        if code is None:
            problems.append(f"failpoint {failpoint} never fired in 120 s")
            cluster.kill(member)
        elif code != -signal.SIGKILL or "TEST FAILPOINT" not in member.proc.log_text():
            problems.append(f"worker {member.name} ({failpoint}) exited {code} before its failpoint")

    cluster.produce(corpus)
    crash("crash-corpus", "after_results_acked:1", batch=1000)
    hostile_sources = set(cluster.sources)
    cluster.produce(stream.records)
    for i, failpoint in enumerate(failpoints):
        crash(f"crash{i}", failpoint)
    cluster.start("survivor1")
    cluster.start("survivor2", "--batch-wait", "6s", batch=30)
    cluster.wait_all()
    cluster.stop_all()
    counts = collections.Counter(result_source(m) for m in cluster.tap.snapshot(RESULTS))
    twice = sum(1 for s in hostile_sources if counts[s] > 1)
    if twice < len(hostile_sources) // 2:
        problems.append(f"only {twice} of {len(hostile_sources)} hostile records were read again after the crash: "
                        "the scenario did not test their redelivery")
    cluster.log(f"{twice} of {len(hostile_sources)} hostile records were processed twice")
    return {"repeats": True, "problems": problems, "problem_invariant": 9}


def scenario_churn_long_polls(cluster, rng, keys=1100, rate=25, max_cycles=2):
    """Commands on 2 partitions at ~25 records/s; worker `a` polls up to 6 s; members join and are
    SIGKILLed while `a` is mid-poll (three times), others join and leave with SIGTERM (twice),
    another crashes at a failpoint. Repeated while the stream is produced, at most `max_cycles` times
    (None: no limit), at least once.
    The hostile share is the records refused before the database (dead letters between commits):
    this scenario is about offsets, and a poison record here would hide a lost one."""
    stream = Stream(cluster.seed, keys=keys, prefix=f"c{cluster.seed}", cross=0.2, hostile="parse", hostile_copies=max(1, keys // 3000))
    a = cluster.start("a", "--batch-wait", "6s")
    cluster.wait_assigned(a)
    feeder = cluster.feed(stream.records, rate=rate)
    cycle = 0
    while cycle == 0 or (feeder.is_alive() and (max_cycles is None or cycle < max_cycles)):
        for i in range(3):
            b = cluster.start(f"b{cycle}.{i}")
            cluster.wait_assigned(b, timeout=30)
            time.sleep(rng.uniform(0.3, 1.5))
            cluster.kill(b)
            time.sleep(rng.uniform(0.2, 1.5))
        for i in range(2):  # join and leave: two rebalances without waiting out a session
            c = cluster.start(f"c{cycle}.{i}")
            cluster.wait_assigned(c, timeout=30)
            time.sleep(rng.uniform(0.5, 2))
            cluster.stop(c)
        if feeder.is_alive():
            d = cluster.start(f"d{cycle}", failpoint=f"after_results_acked:{rng.randint(2, 4)}", batch=20)
            if cluster.wait_exit(d, 15) is None:
                cluster.kill(d)   # too few records reached it: a plain SIGKILL instead
        cycle += 1
    feeder.finish()
    cluster.start("e", "--batch-wait", "6s")
    cluster.wait_all()
    cluster.stop_all()
    return {}


def scenario_cross_partition_race(cluster, rng, keys=300, rate=45):
    """Three partitions, three workers (one partition each): every key is produced to 2-3 of the
    partitions at the same moment, one key at a time, so two workers run their single-statement
    fast paths for the same key concurrently. One entity per key, one claimant, no worker dies."""
    stream = Stream(cluster.seed, keys=keys, prefix=f"d{cluster.seed}", cross=1.0, redeliver=0, reuse=0.1,
                    hostile=False, partitions=cluster.partitions, types=(("todo.create", 3), ("item.create", 1)))
    members = [cluster.start(f"w{i}", batch=10) for i in range(3)]
    for member in members:
        cluster.wait_assigned(member)
    time.sleep(2)  # the last join's rebalance: every member holds its partition
    # Chunks of ~one key's copies (they are adjacent in the stream), ~15 keys/s.
    feeder = cluster.feed(stream.records, rate=rate, chunk=3)
    feeder.finish()
    cluster.wait_all()
    cluster.stop_all()
    return {}


def scenario_lanes_race(cluster, rng, keys=600, rate=120):
    """`--db-connections 3` (issue 10): six partitions, two workers with three database lanes
    each, so up to six transactions race at once. Every key is produced to 2-3 partitions at the
    same moment (different lanes of one worker, or of both); a third worker with lanes is
    SIGKILLed after its first batch is committed in Postgres and before anything is published,
    and its lanes' records are replayed by the others. One entity per key, identical results.
    A batch takes one lane per `--max-batch` records it holds, so the two members race their lanes
    in the two ways a poll brings a key's copies together: one with `--max-batch 40` over the
    backlog the crash left (a poll of up to 40 records from each partition, the copies' offsets
    close together, three lanes), the other with `--max-batch 1` over the live feed (a chunk's
    copies arrive in one poll, a lane each); the crashing worker with `--max-batch 2`."""
    stream = Stream(cluster.seed, keys=keys, prefix=f"e{cluster.seed}", cross=1.0, redeliver=0.1, reuse=0.1,
                    hostile=False, partitions=cluster.partitions, types=(("todo.create", 3), ("item.create", 1)))
    crashing = cluster.start("lanes-crash", "--db-connections", "3", failpoint="after_db_commit:1", batch=2)
    cluster.wait_assigned(crashing)
    feeder = cluster.feed(stream.records, rate=rate, chunk=3)
    if cluster.wait_exit(crashing, 120) is None:
        cluster.kill(crashing)
    members = [cluster.start(f"l{i}", "--db-connections", "3", batch=batch) for i, batch in enumerate((40, 1))]
    for member in members:
        cluster.wait_assigned(member)
    feeder.finish()
    cluster.wait_all()
    cluster.stop_all()
    return {}


SCENARIOS = {
    # name: (body, topics, default size (keys), CI seed)
    "hostile_stream": (scenario_hostile_stream, DEFAULT_TOPICS, 900, 8101),
    "failpoint_crashes": (scenario_failpoint_crashes, DEFAULT_TOPICS, 1000, 8202),
    "churn_long_polls": (scenario_churn_long_polls, ("commands:2", "commands.results:4", "commands.dlq:1"), 1100, 8303),
    "cross_partition_race": (scenario_cross_partition_race, ("commands:3", "commands.results:4", "commands.dlq:1"),
                             300, 8404),
    "lanes_race": (scenario_lanes_race, ("commands:6", "commands.results:4", "commands.dlq:1"), 600, 8505),
}


def run_named(name, seed=None, keys=None, log=print, **kw):
    """One scenario with its CI seed and size, or with the given ones."""
    body, topics, default_keys, ci_seed = SCENARIOS[name]
    return run_scenario(name, ci_seed if seed is None else seed, body, topics=topics, log=log,
                        keys=keys or default_keys, **kw)


def keys_for(name, records):
    """How many keys make a stream of about `records` records in scenario `name`."""
    body, topics, default_keys, ci_seed = SCENARIOS[name]
    sample = {"hostile_stream": lambda: Stream(1, keys=default_keys, prefix="x", hostile=False),
              "failpoint_crashes": lambda: Stream(1, keys=default_keys, prefix="x", hostile=False),
              "churn_long_polls": lambda: Stream(1, keys=default_keys, prefix="x", cross=0.2, hostile=False),
              "cross_partition_race": lambda: Stream(1, keys=default_keys, prefix="x", cross=1.0, redeliver=0,
                                                     reuse=0.1, hostile=False, partitions=3)}[name]()
    return max(10, round(default_keys * records / len(sample)))
