"""An independent producer for the subscription tests: writes what stdin lists, with the brokers' own Python clients
(confluent-kafka, pika), and prints "done" once every record or message is confirmed.

    produce.py kafka BOOTSTRAP TOPIC    stdin: [{"key": "...", "value": "...", "headers": {"name": "value"}}, ...]
    produce.py amqp URL QUEUE           stdin: [{"body": "...", "message_id": "...", "content_type": "...",
                                                 "headers": {"name": "value"}}, ...]

Kafka records are produced with acks=all, in order; AMQP messages are published to the default exchange with
publisher confirms.
"""
import json
import sys

kind, address, destination = sys.argv[1], sys.argv[2], sys.argv[3]
items = json.load(sys.stdin)

if kind == "kafka":
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": address, "acks": "all", "enable.idempotence": True})
    failed = []
    for item in items:
        producer.produce(
            destination,
            key=item.get("key"),
            value=item["value"],
            headers=list(item.get("headers", {}).items()),
            on_delivery=lambda err, _msg: err and failed.append(err),
        )
    producer.flush(30)
    if failed:
        sys.exit(f"not delivered: {failed}")
elif kind == "amqp":
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(address))
    channel = connection.channel()
    channel.confirm_delivery()
    for item in items:
        properties = pika.BasicProperties(
            message_id=item.get("message_id"),
            content_type=item.get("content_type"),
            headers=item.get("headers"),
        )
        channel.basic_publish("", destination, item["body"].encode(), properties, mandatory=True)
    connection.close()
else:
    sys.exit(f"unknown kind {kind}")
print("done", flush=True)
