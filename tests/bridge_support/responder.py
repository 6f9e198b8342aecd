"""An independent RabbitMQ responder for the request-reply tests, written with pika.

    responder.py AMQP_URL QUEUE [DELAY_SECONDS]

Declares QUEUE (exclusive to this connection), prints "ready", then answers every request on it: the reply goes to
the request's reply_to with its correlation_id, after DELAY_SECONDS (default 0). The reply's body is b"reply:" + the
request body; its content type is the request's; its headers are:
  sluice-status  the request's x-want-status header when it has one (so a test picks the status);
  x-quote-id     "q-" + the request's sluice-id;
  x-seen-route   the request's sluice-route header (what the gateway sent);
  x-seen-traceparent  the request's traceparent header.
"""
import sys
import time

import pika

url, queue = sys.argv[1], sys.argv[2]
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, exclusive=True)


def on_request(ch, method, props, body):
    headers = props.headers or {}
    if delay:
        time.sleep(delay)
    reply_headers = {
        "x-quote-id": "q-" + str(headers.get("sluice-id", "")),
        "x-seen-route": str(headers.get("sluice-route", "")),
        "x-seen-traceparent": str(headers.get("traceparent", "")),
    }
    if "x-want-status" in headers:
        want = headers["x-want-status"]
        reply_headers["sluice-status"] = want.decode() if isinstance(want, bytes) else str(want)
    ch.basic_publish(
        exchange="",
        routing_key=props.reply_to,
        properties=pika.BasicProperties(
            correlation_id=props.correlation_id, content_type=props.content_type, headers=reply_headers
        ),
        body=b"reply:" + body,
    )
    ch.basic_ack(delivery_tag=method.delivery_tag)


channel.basic_qos(prefetch_count=50)
channel.basic_consume(queue=queue, on_message_callback=on_request)
print("ready", flush=True)
channel.start_consuming()
