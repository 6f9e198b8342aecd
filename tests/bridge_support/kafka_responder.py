"""An independent Kafka responder for the request-reply tests, written with confluent-kafka.

    kafka_responder.py BOOTSTRAP REQUEST_TOPIC [DELAY_SECONDS]

Reads every partition of REQUEST_TOPIC from the beginning (assigned, no group), prints "ready", then answers every
request: the reply goes to the topic named by the request's sluice-reply-to header, with the request's
sluice-correlation-id header. Its value is b"reply:" + the request's value; its headers are content-type (the
request's), x-quote-id ("q-" + the request's sluice-id), x-seen-traceparent (the request's traceparent) and, when the
request has an x-want-status header, sluice-status with that value. With DELAY_SECONDS, each reply is sent that long
after its request was read.
"""
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "responder-" + topic, "enable.auto.commit": False})
partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
print("ready", flush=True)

while True:
    msg = consumer.poll(0.1)
    if msg is None or msg.error():
        continue
    headers = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
    reply_headers = [
        ("sluice-correlation-id", headers.get("sluice-correlation-id", "")),
        ("content-type", headers.get("content-type", "")),
        ("x-quote-id", "q-" + headers.get("sluice-id", "")),
        ("x-seen-traceparent", headers.get("traceparent", "")),
    ]
    if "x-want-status" in headers:
        reply_headers.append(("sluice-status", headers["x-want-status"]))
    time.sleep(delay)
    producer.produce(headers["sluice-reply-to"], value=b"reply:" + (msg.value() or b""), headers=reply_headers)
    producer.flush()
