"""How a model's Redis load spreads when its queue is sharded over a Redis Cluster.

``python -m inferq.worker.tools.shardbench [--messages N] [--kb K] [--shards S]`` starts a private
standalone Redis and a private 3-master cluster, and moves the same messages through each on
inferq's own path (the producer's push script, the worker's fetch, record, store-and-ack), then
prints each Redis process's CPU per message (``INFO cpu``, user + sys) side by side: the busiest
node is the one that limits a model's rate.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from collections.abc import Sequence

import orjson
import redis

from inferq.producer.pusher import Prepared, Pusher
from inferq.producer.shards import ShardPusher
from inferq.shared import keys
from inferq.shared.cluster import make_cluster_client
from inferq.worker.broker import Broker, QueueBroker, Write
from inferq.worker.shards import ShardedBroker
from inferq.worker.tools.localcluster import LocalCluster
from inferq.worker.tools.localredis import LocalRedis

MODEL = "bench"
QUEUE = keys.queue_name(MODEL)
CHUNK = 64


def envelope(n: int, body: str) -> bytes:
    props = {
        "correlation_id": f"id-{n}",
        "delivery_info": {"exchange": "", "routing_key": QUEUE},
        "priority": keys.DEFAULT_PRIORITY,
        "body_encoding": "base64",
        "delivery_tag": f"tag-{n}",
    }
    head = {"body": body, "content-encoding": "binary", "content-type": "application/x-msgpack"}
    return orjson.dumps({**head, "headers": {"id": f"id-{n}"}, "properties": props})


def messages(count: int, kb: int) -> list[Prepared]:
    body = base64.b64encode(os.urandom(kb * 1024)).decode()
    return [
        Prepared(f"id-{n}", QUEUE, keys.DEFAULT_PRIORITY, 10**9, envelope(n, body), (QUEUE,))
        for n in range(count)
    ]


def cpu_s(urls: Sequence[str]) -> list[float]:
    out = []
    for url in urls:
        info = redis.Redis.from_url(url).info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def run(pusher: Pusher | ShardPusher, broker: QueueBroker, prepared: list[Prepared]) -> None:
    for i in range(0, len(prepared), CHUNK):
        pusher.push(prepared[i : i + CHUNK])
    while (taken := broker.take(QUEUE, CHUNK)) is not None:
        broker.record(taken)
        broker.store_and_ack(
            [Write(f.tag, f"id-{f.tag[4:]}", b'{"status":"SUCCESS"}') for f in taken.fetched]
        )


def measure(
    name: str,
    urls: list[str],
    work: tuple[Pusher | ShardPusher, QueueBroker],
    prepared: list[Prepared],
) -> None:
    pusher, broker = work
    before = cpu_s(urls)
    started = time.perf_counter()
    run(pusher, broker, prepared)
    wall = time.perf_counter() - started
    per = [(a - b) / len(prepared) * 1e6 for a, b in zip(cpu_s(urls), before, strict=True)]
    shown = "  ".join(f"{us:7.1f}" for us in per)
    print(
        f"{name:<22} {wall:6.2f} s   Redis CPU us/msg per process: {shown}   busiest {max(per):7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--kb", type=int, default=147, help="payload KiB (224x224x3 uint8: 147)")
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    prepared = messages(args.messages, args.kb)
    results = LocalRedis().start()
    single = LocalRedis().start()
    cluster = LocalCluster()
    for node in cluster.nodes:
        node.appendfsync = "no"  # as the standalone one: the same work, no disk
    cluster.start()
    try:
        res = redis.Redis.from_url(results.url)
        one = redis.Redis.from_url(single.url)
        standalone: tuple[Pusher | ShardPusher, QueueBroker] = (
            Pusher(one, "standalone"),
            Broker(one, res, 60),
        )
        rc = make_cluster_client(cluster.url)
        sharded: tuple[Pusher | ShardPusher, QueueBroker] = (
            ShardPusher(rc, MODEL, args.shards, "cluster"),
            ShardedBroker(rc, res, 60, MODEL, args.shards),
        )
        print(f"{args.messages} messages of {args.kb} KiB; results on a separate Redis")
        measure("standalone Redis", [single.url], standalone, prepared)
        measure(f"cluster, {args.shards} shards", [n.url for n in cluster.nodes], sharded, prepared)
    finally:
        cluster.stop()
        single.stop()
        results.stop()


if __name__ == "__main__":
    main()
