"""What kombu's JSON envelope costs each wire, against a binary envelope no stock Celery reads.

    python -m inferq.worker.tools.envelopebench [--count 2000]

For each payload (raw, jpeg and png at 3x32x32 and 3x224x224, from crops of a photograph):

* ``kombu``: the envelope inferq publishes (``producer/envelope.py``): kombu's Redis JSON with
  the msgpack body base64-encoded, as kombu's Redis transport requires (it reads every message
  with ``loads(bytes_to_str(item))`` and knows one body codec, base64);
* ``binary``: the same fields in one msgpack document, the payload as raw bytes.

It prints the bytes of each, Redis's CPU per message (``INFO cpu`` deltas) to LPUSH and then
RPOP ``--count`` of them on a private Redis, and the reader's CPU to parse each (the worker's
own ``decode_message`` for kombu's; msgpack for the binary one).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from inferq.producer.envelope import task_envelope
from inferq.producer.preprocess import to_tensor
from inferq.shared import codec
from inferq.shared.redisconn import make_client
from inferq.shared.spec import InputSpec
from inferq.shared.wire import encode_image
from inferq.worker.intake import decode_message
from inferq.worker.tools.localredis import LocalRedis
from inferq.worker.tools.wirebench import images


@dataclass(frozen=True)
class Row:
    label: str
    envelope: str
    bytes: float
    redis_us: float
    read_us: float


def payload(spec: InputSpec, hwc: Any) -> bytes:
    tensor = to_tensor(hwc, spec, 10**9)
    if spec.wire == "raw":
        return codec.encode(tensor)
    return encode_image(tensor, spec.wire, spec.jpeg_quality)


def kombu_envelope(spec: InputSpec, body: bytes) -> bytes:
    kwargs = {"model": spec.model, "submitted_at": time.time(), "preprocess_ms": 0.1}
    return task_envelope(str(uuid.uuid4()), body, kwargs, spec, 5, None, {})


def binary_envelope(spec: InputSpec, body: bytes) -> bytes:
    """The kombu envelope's fields, its body as msgpack bytes instead of base64 text."""
    envelope = orjson.loads(kombu_envelope(spec, body))
    kwargs = {"model": spec.model, "submitted_at": time.time(), "preprocess_ms": 0.1}
    envelope["body"] = msgpack.packb([[body], kwargs, {}], use_bin_type=True)
    envelope["properties"]["body_encoding"] = None
    return bytes(msgpack.packb(envelope, use_bin_type=True))


def read_kombu(spec: InputSpec, raw: bytes) -> None:
    decode_message("t", raw, spec, max_bytes=1 << 26)


def read_binary(spec: InputSpec, raw: bytes) -> None:
    envelope = msgpack.unpackb(raw, raw=False)
    msgpack.unpackb(envelope["body"], raw=False)


def measure(client: Any, spec: InputSpec, bodies: list[bytes], count: int) -> list[Row]:
    label = f"3x{spec.shape[1]}x{spec.shape[2]} {spec.wire}"
    rows = []
    kinds: dict[str, tuple[Callable[..., bytes], Callable[..., None]]] = {
        "kombu": (kombu_envelope, read_kombu),
        "binary": (binary_envelope, read_binary),
    }
    for name, (build, read) in kinds.items():
        messages = [build(spec, bodies[i % len(bodies)]) for i in range(count)]
        before = _redis_cpu(client)
        for i in range(0, count, 64):
            client.lpush("q", *messages[i : i + 64])
        got: list[bytes] = []
        while len(got) < count:
            got += client.rpop("q", 64) or []
        redis_us = (_redis_cpu(client) - before) / count * 1e6
        started = time.process_time()
        for m in got:
            read(spec, m)
        read_us = (time.process_time() - started) / count * 1e6
        size = sum(map(len, messages)) / count
        rows.append(Row(label, name, size, redis_us, read_us))
    return rows


def _redis_cpu(client: Any) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"] + cpu["used_cpu_sys"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args(argv)
    redis = LocalRedis().start()
    try:
        client = make_client(redis.url)
        rows = []
        for size in (32, 224):
            pool = images(size, 32)
            count = args.count if size == 32 else max(100, args.count // 5)
            for wire in ("raw", "jpeg", "png"):
                spec = InputSpec("m", 1, (3, size, size), wire=wire)
                rows += measure(client, spec, [payload(spec, a) for a in pool], count)
    finally:
        redis.stop()
    print("| payload | envelope | bytes | Redis CPU us/msg (LPUSH + RPOP) | reader CPU us/msg |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.label} | {r.envelope} | {r.bytes:,.0f} | {r.redis_us:.1f} | {r.read_us:.0f} |")


if __name__ == "__main__":
    main()
