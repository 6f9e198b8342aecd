"""The independent SQS client of tests/sqs.rs (boto3): creates queues and reads what they hold.

    sqs_tool.py ENDPOINT create NAME [fifo]      prints the queue URL
    sqs_tool.py ENDPOINT receive NAME COUNT      prints a JSON list of the messages received (waits up to 10 s)
    sqs_tool.py ENDPOINT delete NAME
    sqs_tool.py ENDPOINT respond NAME COUNT      answers COUNT requests of queue NAME (request-reply): a 201 with
                                                 {"echo": <request body>} to each request's sluice-reply-to queue
"""
import json
import sys

import boto3


def main():
    endpoint, command, name = sys.argv[1:4]
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    if command == "create":
        attributes = {"FifoQueue": "true"} if sys.argv[4:] == ["fifo"] else {}
        print(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
    elif command == "receive":
        want = int(sys.argv[4])
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        got = []
        for _ in range(10):
            r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                    MessageAttributeNames=["All"], AttributeNames=["All"])
            for m in r.get("Messages", []):
                attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
                got.append({"body": m["Body"], "attributes": attrs,
                            "group": m.get("Attributes", {}).get("MessageGroupId")})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            if len(got) >= want:
                break
        print(json.dumps(got))
    elif command == "respond":
        want = int(sys.argv[4])
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        answered = 0
        for _ in range(30):
            r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                    MessageAttributeNames=["All"])
            for m in r.get("Messages", []):
                attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
                sqs.send_message(
                    QueueUrl=attrs["sluice-reply-to"],
                    MessageBody=json.dumps({"echo": m["Body"]}),
                    MessageAttributes={
                        "sluice-correlation-id": {"DataType": "String", "StringValue": attrs["sluice-correlation-id"]},
                        "sluice-status": {"DataType": "String", "StringValue": "201"},
                        "content-type": {"DataType": "String", "StringValue": "application/json"},
                    })
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                answered += 1
            if answered >= want:
                break
        print(answered)
    elif command == "delete":
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.delete_queue(QueueUrl=url)


if __name__ == "__main__":
    main()
