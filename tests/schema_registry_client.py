"""The independent client of the Schema Registry tests: confluent-kafka's own serializers and
deserializers (PyPI confluent-kafka 2.16.2, not project code) against the same broker and
registry as the daemon.

  produce BROKERS REGISTRY TOPIC PREFIX N_AVRO N_JSON
      N_AVRO comments as Avro (subject by record name, emostream.test.Comment) and N_JSON as
      JSON Schema (subject <topic>-value), interleaved, ids PREFIX-avro-i / PREFIX-json-i.
  serialize REGISTRY TOPIC PREFIX N
      N comments framed with a second Avro schema (emostream.test.CommentV2, registered now),
      printed as hex lines, to be produced later (while the registry is down).
  consume BROKERS REGISTRY TOPIC avro|json_schema COUNT TIMEOUT_S
      reads events with the registry-aware deserializer (JSON Schema: validated against the
      registered schema) until COUNT distinct ids have arrived, printing each event as a JSON
      line; exits 1 if fewer arrive.
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.error import SchemaRegistryError
# The HTTP library the client itself uses (httpx, or its fork httpx2), for its transport errors.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

AVRO_COMMENT = json.dumps({
    "type": "record", "name": "Comment", "namespace": "emostream.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "text", "type": "string"},
        {"name": "community", "type": "string"},
    ],
})
AVRO_COMMENT_V2 = json.dumps({
    "type": "record", "name": "CommentV2", "namespace": "emostream.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "text", "type": "string"},
        {"name": "lang", "type": "string", "default": "en"},
    ],
})
JSON_COMMENT = json.dumps({
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Comment", "type": "object",
    "properties": {
        "id": {"type": "string"}, "text": {"type": "string"}, "community": {"type": "string"},
    },
    "required": ["id", "text"],
})
TEXTS = [
    "thank you so much, this made my day",
    "I can't believe they did that, so angry right now",
    "wow, that is a surprise",
    "this is really sad news",
    "lol that's hilarious",
    "I'm not sure what you mean",
]


def registry(url):
    # The client's default is no timeout at all: one request the registry never answers would
    # hold the test for as long as TCP lets it (CI once waited 30 minutes on one). 10 s per try,
    # its own retries on top.
    return SchemaRegistryClient({"url": url, "timeout": 10})


def produce(brokers, url, topic, prefix, n_avro, n_json):
    sr = registry(url)
    avro = AvroSerializer(sr, AVRO_COMMENT,
                          conf={"subject.name.strategy": record_subject_name_strategy})
    js = JSONSerializer(JSON_COMMENT, sr)
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for i in range(max(n_avro, n_json)):
        for kind, ser, n in (("avro", avro, n_avro), ("json", js, n_json)):
            if i < n:
                cid = f"{prefix}-{kind}-{i}"
                value = ser({"id": cid, "text": TEXTS[i % len(TEXTS)], "community": f"c{i % 3}"}, ctx)
                p.produce(topic, key=cid.encode(), value=value)
        p.poll(0)
    left = p.flush(30)
    assert left == 0, f"{left} comments not delivered"


def serialize(url, topic, prefix, n):
    avro = AvroSerializer(registry(url), AVRO_COMMENT_V2,
                          conf={"subject.name.strategy": record_subject_name_strategy})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for i in range(n):
        cid = f"{prefix}-{i}"
        print(avro({"id": cid, "text": TEXTS[i % len(TEXTS)], "lang": "en"}, ctx).hex())


def deserialize(de, value, topic, deadline):
    """The event in `value`, asking the registry again while it fails to answer (a registry
    restarted moments ago may time out a request); None when the deadline passes first."""
    while True:
        try:
            return de(value, SerializationContext(topic, MessageField.VALUE))
        except (httpx.TransportError, SchemaRegistryError) as e:
            print(f"deserializing a {topic} event: {type(e).__name__}: {e}", file=sys.stderr)
            transient = not isinstance(e, SchemaRegistryError) or e.http_status_code >= 500
            if not transient or time.time() >= deadline:
                return None
            time.sleep(1)


def consume(brokers, url, topic, fmt, count, timeout_s):
    sr = registry(url)
    de = AvroDeserializer(sr) if fmt == "avro" else JSONDeserializer(None, schema_registry_client=sr)
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"sr-reader-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    ids = set()
    deadline = time.time() + timeout_s
    try:
        while len(ids) < count and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                print(f"consumer error: {m.error()}", file=sys.stderr)
                continue
            event = deserialize(de, m.value(), topic, deadline)
            if event is None:
                break
            schema_id = int.from_bytes(m.value()[1:5], "big")
            print(json.dumps({"schema_id": schema_id, "event": event}), flush=True)
            ids.add(event["id"])
    finally:
        c.close()
    if len(ids) < count:
        print(f"read {len(ids)} of {count} ids in {timeout_s} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]))
    elif cmd == "serialize":
        serialize(args[0], args[1], args[2], int(args[3]))
    elif cmd == "consume":
        consume(args[0], args[1], args[2], args[3], int(args[4]), float(args[5]))
    else:
        sys.exit(f"unknown command {cmd}")
