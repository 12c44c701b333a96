#!/usr/bin/env python3
"""Independent AWS client for Weir's tests, on boto3, against a moto server on loopback.

  aws_client.py ENDPOINT create-bucket BUCKET
  aws_client.py ENDPOINT objects BUCKET PREFIX   > JSON lines {"key", "body", "content_type"}
  aws_client.py ENDPOINT create-table TABLE KEY  (string partition key KEY, TTL on attribute ttl)
  aws_client.py ENDPOINT scan TABLE              > JSON lines, one item each (plain JSON values)
"""
import gzip
import json
import sys
from decimal import Decimal

import boto3
from boto3.dynamodb.types import TypeDeserializer


def session(endpoint, service):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test-key", aws_secret_access_key="test-secret")


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def main():
    endpoint, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "create-bucket":
        session(endpoint, "s3").create_bucket(Bucket=args[0])
    elif cmd == "objects":
        s3 = session(endpoint, "s3")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
            for o in page.get("Contents", []):
                got = s3.get_object(Bucket=args[0], Key=o["Key"])
                body = got["Body"].read()
                if o["Key"].endswith(".gz"):
                    body = gzip.decompress(body)
                print(json.dumps({"key": o["Key"], "body": body.decode(), "content_type": got.get("ContentType")}))
    elif cmd == "create-table":
        db = session(endpoint, "dynamodb")
        db.create_table(TableName=args[0], KeySchema=[{"AttributeName": args[1], "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": args[1], "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
        db.update_time_to_live(TableName=args[0], TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    elif cmd == "scan":
        db = session(endpoint, "dynamodb")
        des = TypeDeserializer()
        for page in db.get_paginator("scan").paginate(TableName=args[0]):
            for item in page["Items"]:
                print(json.dumps(plain({k: des.deserialize(v) for k, v in item.items()})))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
