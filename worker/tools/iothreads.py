"""Redis's ``io-threads`` for large payloads: LPUSH and RPOP of wire-sized values, per setting.

    python -m inferq.worker.tools.iothreads [--sizes 21000,201000] [--threads 1,2,4]

For each value size (a 224x224 request's message on the jpeg and raw wires) and each
``--io-threads`` setting (with ``io-threads-do-reads yes``, without which Redis 7 threads only
its writes), a private redis-server is started and ``redis-benchmark`` (16 clients, pipelining
1) pushes and pops ``--requests`` values; printed: operations a second, and Redis's CPU per
operation from ``INFO cpu`` (all its threads).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

from inferq.shared.redisconn import make_client
from inferq.worker.tools.localredis import LocalRedis


def bench(size: int, io_threads: int, requests: int) -> dict[str, float]:
    extra = ("--io-threads", str(io_threads), "--io-threads-do-reads", "yes")
    redis = LocalRedis(extra=extra if io_threads > 1 else ()).start()
    try:
        client = make_client(redis.url)
        before = _cpu(client)
        argv = [_binary(), "-p", str(redis.port), "-t", "lpush,rpop", "-d", str(size)]
        out = subprocess.run(
            [*argv, "-n", str(requests), "-c", "16", "--csv"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu_us = (_cpu(client) - before) / (2 * requests) * 1e6
    finally:
        redis.stop()
    rates = {m[0].lower(): float(m[1]) for m in re.findall(r'"(LPUSH|RPOP)[^"]*","([\d.]+)"', out)}
    return {**rates, "cpu_us_per_op": cpu_us}


def _binary() -> str:
    found = shutil.which("redis-benchmark")
    if found is None:
        raise SystemExit("redis-benchmark is not on PATH")
    return found


def _cpu(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="21000,201000")
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    print("| value bytes | io-threads | LPUSH/s | RPOP/s | Redis CPU us/op |")
    print("| --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        for n in (int(t) for t in args.threads.split(",")):
            r = bench(size, n, args.requests if size < 100_000 else args.requests // 4)
            print(
                f"| {size:,} | {n} | {r.get('lpush', 0):,.0f} | {r.get('rpop', 0):,.0f} "
                f"| {r['cpu_us_per_op']:.1f} |"
            )


if __name__ == "__main__":
    main()
