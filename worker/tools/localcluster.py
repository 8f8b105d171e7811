"""Start a private 3-master Redis Cluster on free loopback ports (tests, benchmarks).

Each node is a ``LocalRedis`` with cluster mode on and an AOF synced on every write, so a node
killed and started again comes back with its data and its place in the cluster (its
``nodes.conf`` stays in its folder). ``cluster-require-full-coverage no``: while one master is
down, the others keep serving their slots.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import redis

from inferq.worker.tools.localredis import LocalRedis, redis_binary

NODE_TIMEOUT_MS = 2000
_BUS_OFFSET = 10_000  # Redis's cluster bus listens on the port + 10000
_CREATE_OPTIONS = ("--cluster-replicas", "0", "--cluster-yes")


def cluster_support() -> str | None:
    """None if this machine has what a local cluster needs, else why not."""
    try:
        redis_binary()
    except FileNotFoundError as exc:
        return str(exc)
    if shutil.which("redis-cli") is None:
        return "redis-cli is needed to create a Redis Cluster (apt-get install redis-tools)"
    return None


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (itself + 10000) is free too."""
    while True:
        port = random.randint(20_000, 55_000)
        if all(_free(p) for p in (port, port + _BUS_OFFSET)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _node() -> LocalRedis:
    node = LocalRedis(port=cluster_port(), appendfsync="always")
    node.extra_args = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(node.workdir / "nodes.conf"),
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--cluster-require-full-coverage",
        "no",
    )
    return node


@dataclass
class LocalCluster:
    nodes: list[LocalRedis] = field(default_factory=lambda: [_node() for _ in range(3)])

    @property
    def url(self) -> str:
        """Any node's URL: a RedisCluster client finds the others from it."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *_CREATE_OPTIONS],
            capture_output=True,
            check=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports the cluster ``ok`` (all slots served)."""
        deadline = time.monotonic() + timeout
        while not all(_state_ok(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def flush(self) -> None:
        for node in self.nodes:
            redis.Redis.from_url(node.url).flushall()

    def node_of(self, key: str) -> LocalRedis:
        """The master serving ``key``'s slot."""
        client = redis.Redis.from_url(self.url)
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for start, end, owner, *_replicas in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(owner[1]))
        raise LookupError(f"no node serves the slot of {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _state_ok(node: LocalRedis) -> bool:
    try:
        info = redis.Redis.from_url(node.url, decode_responses=True).execute_command("CLUSTER INFO")
    except (redis.RedisError, OSError):
        return False
    return bool(info.get("cluster_state") == "ok")
