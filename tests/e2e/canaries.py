"""Unique strings planted in the model and in emails; none may ever reach a platform-side store."""

import base64

import redis

from infra.local.stack import LocalStack

MODEL_CANARY = "CANARY-MODEL-7f3e9a1c55d04b2e"
EMAIL_CANARIES = [f"CANARY-EMAIL-{i}-b81d2c4f9e" for i in range(5)]
FLAG_CANARY = "CANARY-FLAG-3c9d0e71a2"  # in an owner's reader flag: flags are as secret as the emails


def encoded_forms(secret: bytes) -> list[bytes]:
    """The ways a key could be written out by mistake: raw, hex, base64 and unpadded base64url."""
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


def redis_dump(stack: LocalStack) -> bytes:
    """Every key and value in the stack's Celery transport (strings, lists, hashes, sets, sorted sets), joined."""
    client = redis.Redis(unix_socket_path=stack.env["CSCORE_CELERY_BROKER_URL"].removeprefix("redis+socket://"))
    chunks = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        chunks.append(key)
        if kind == "string":
            chunks.append(client.get(key) or b"")
        elif kind == "list":
            chunks.extend(client.lrange(key, 0, -1))
        elif kind == "hash":
            chunks.extend(v for kv in client.hgetall(key).items() for v in kv)
        elif kind == "set":
            chunks.extend(client.smembers(key))
        elif kind == "zset":
            chunks.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
    return b"\n".join(chunks)
