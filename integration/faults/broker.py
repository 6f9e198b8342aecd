#!/usr/bin/env python3
"""The fault suite's independent consumers (integration/faults.sh): pika for RabbitMQ, confluent-kafka for Kafka,
talking to the brokers directly (never through Toxiproxy, never through Sluice).

    broker.py rabbit-setup  AMQP_URL QUEUE ROUTING_KEY   durable queue bound to amq.topic with that key
    broker.py kafka-setup   BOOTSTRAP TOPIC PARTITIONS   create the topic, wait until every partition has a leader
    broker.py rabbit-drain  AMQP_URL QUEUE  RESPONSES TARGET OUT [--timeout S] [--idle S]
    broker.py kafka-drain   BOOTSTRAP TOPIC RESPONSES TARGET OUT [--timeout S] [--idle S]
    broker.py rabbit-delete AMQP_URL QUEUE
    broker.py kafka-delete  BOOTSTRAP TOPIC

A drain reads every message of the queue / topic and writes one JSON line per message to OUT: the message id
(AMQP message_id, Kafka header sluice-id) and the body's `seq`. RESPONSES is the load generator's record; the ids
it holds for target TARGET answered 202 are the ones the drain waits for: it stops once each of them arrived and
nothing new came for --idle seconds (duplicates arrive then, if any), or after --timeout seconds in all (a spool
replays after the broker is back, so the messages may still be on their way). Connection failures are retried
until the timeout: the broker may just have restarted.
"""

import json
import sys
import time


def expected_ids(responses, target):
    ids = set()
    with open(responses) as f:
        for line in f:
            r = json.loads(line)
            if r["target"] == int(target) and r["status"] == 202 and r.get("id"):
                ids.add(r["id"])
    return ids


def parse_opts(argv):
    opts = {"timeout": 120.0, "idle": 3.0}
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--timeout", "--idle"):
            opts[argv[i][2:]] = float(argv[i + 1])
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return rest, opts


def seq_of(body):
    try:
        return json.loads(body).get("seq")
    except (ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------ rabbitmq
def rabbit_connect(url, deadline):
    import pika

    while True:
        try:
            params = pika.URLParameters(url)
            params.blocked_connection_timeout = 30
            return pika.BlockingConnection(params)
        except Exception as e:  # noqa: BLE001 - the broker may be restarting
            if time.time() > deadline:
                raise SystemExit(f"broker.py: cannot connect to RabbitMQ: {e!r}")
            time.sleep(0.5)


def rabbit_setup(url, queue, key):
    c = rabbit_connect(url, time.time() + 60)
    ch = c.channel()
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "amq.topic", routing_key=key)
    c.close()


def rabbit_delete(url, queue):
    c = rabbit_connect(url, time.time() + 60)
    c.channel().queue_delete(queue)
    c.close()


def rabbit_drain(url, queue, responses, target, out, opts):
    want = expected_ids(responses, target)
    start = time.time()
    deadline = start + opts["timeout"]
    got = []
    seen = set()
    last_new = time.time()
    while True:
        c = rabbit_connect(url, deadline)
        try:
            ch = c.channel()
            ch.basic_qos(prefetch_count=500)
            # Acked one by one after recording: a connection lost mid-drain redelivers what was not recorded.
            for m, props, body in ch.consume(queue, inactivity_timeout=0.5):
                now = time.time()
                if m is not None:
                    got.append({"id": props.message_id, "seq": seq_of(body), "redelivered": bool(m.redelivered)})
                    seen.add(props.message_id)
                    ch.basic_ack(m.delivery_tag)
                    last_new = now
                    continue
                if want <= seen and now - last_new >= opts["idle"]:
                    break
                if now > deadline:
                    break
            ch.cancel()
            c.close()
            break
        except Exception as e:  # noqa: BLE001 - reconnect and go on until the deadline
            print(f"broker.py: rabbit drain interrupted ({e!r}); reconnecting", file=sys.stderr)
            if time.time() > deadline:
                break
            time.sleep(0.5)
    write_out(out, got, want, seen, start)


# ------------------------------------------------------------------------------------------------ kafka
def kafka_setup(bootstrap, topic, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])
    for _, f in fs.items():
        f.result(30)
    deadline = time.time() + 60
    while time.time() < deadline:
        md = a.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t and t.error is None and len(t.partitions) == int(partitions) and all(
            p.leader >= 0 for p in t.partitions.values()
        ):
            return
        time.sleep(0.2)
    raise SystemExit(f"broker.py: topic {topic} has no leader for every partition after 60s")


def kafka_delete(bootstrap, topic):
    from confluent_kafka.admin import AdminClient

    a = AdminClient({"bootstrap.servers": bootstrap})
    for _, f in a.delete_topics([topic]).items():
        try:
            f.result(30)
        except Exception as e:  # noqa: BLE001 - cleanup only
            print(f"broker.py: could not delete topic {topic}: {e!r}", file=sys.stderr)


def kafka_drain(bootstrap, topic, responses, target, out, opts):
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    want = expected_ids(responses, target)
    start = time.time()
    deadline = start + opts["timeout"]
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sluice-faults-{topic}-{int(start)}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
        }
    )
    md = None
    while md is None:
        try:
            md = c.list_topics(topic, timeout=10).topics[topic]
        except Exception as e:  # noqa: BLE001
            if time.time() > deadline:
                raise SystemExit(f"broker.py: no metadata for {topic}: {e!r}")
            time.sleep(0.5)
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    got = []
    seen = set()
    last_new = time.time()
    while True:
        m = c.poll(0.5)
        now = time.time()
        if m is not None:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    print(f"broker.py: kafka: {m.error()}", file=sys.stderr)
            else:
                sid = None
                for k, v in m.headers() or []:
                    if k == "sluice-id":
                        sid = v.decode() if isinstance(v, bytes) else v
                got.append({"id": sid, "seq": seq_of(m.value()), "partition": m.partition(), "offset": m.offset()})
                seen.add(sid)
                last_new = now
                continue
        if want <= seen and now - last_new >= opts["idle"]:
            break
        if now > deadline:
            break
    c.close()
    write_out(out, got, want, seen, start)


def write_out(out, got, want, seen, start):
    with open(out, "w") as f:
        for g in got:
            f.write(json.dumps(g, separators=(",", ":")) + "\n")
    missing = len(want - seen)
    print(
        f"broker.py: drained {len(got)} messages in {time.time() - start:.1f}s; "
        f"{len(want)} ids answered 202, {missing} of them not (yet) received",
        file=sys.stderr,
    )


def main():
    args, opts = parse_opts(sys.argv[1:])
    if not args:
        raise SystemExit(__doc__)
    cmd, rest = args[0], args[1:]
    if cmd == "rabbit-setup":
        rabbit_setup(*rest)
    elif cmd == "kafka-setup":
        kafka_setup(*rest)
    elif cmd == "rabbit-drain":
        rabbit_drain(*rest, opts)
    elif cmd == "kafka-drain":
        kafka_drain(*rest, opts)
    elif cmd == "rabbit-delete":
        rabbit_delete(*rest)
    elif cmd == "kafka-delete":
        kafka_delete(*rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
