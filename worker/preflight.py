"""Checks a worker runs before it loads any model: the broker answers, the device exists.

Both fail in seconds with one line that names what is wrong and what to change, instead of a
model load of minutes ending in a traceback. ``inferq worker`` runs them before it starts the
Celery worker, and the service again before it loads (for workers started by ``celery -A``).
"""

from __future__ import annotations

from inferq.shared.errors import BrokerUnavailable, ConfigError
from inferq.shared.redisconn import CONNECTION_ERRORS, make_client
from inferq.shared.settings import redact_url


def preflight(broker_url: str, device: str) -> None:
    """Both checks, the device's first (it needs no network)."""
    check_device(device)
    check_broker(broker_url)


def check_broker(url: str, timeout_s: float = 5.0) -> None:
    """Raise BrokerUnavailable, naming ``url`` with its password hidden, unless Redis answers."""
    client = make_client(url, retries=1, socket_timeout=timeout_s)
    try:
        client.ping()
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(
            f"Redis at {redact_url(url)} must answer before a worker loads its models, got "
            f"{type(exc).__name__}: {str(exc).rstrip('.')}. Start Redis there, or set "
            f"INFERQ_BROKER_URL"
        ) from None
    finally:
        client.close()


def check_device(device: str) -> None:
    """Refuse a ``cuda`` device that this build of torch or this machine lacks. Asks only
    whether CUDA is available (no context is created), so a fork after it is still safe."""
    if not device.startswith("cuda"):
        return
    import torch  # only for a CUDA device: a CPU worker's launcher stays light

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (a CPU-only build)")
        raise ConfigError(
            f"--device {device} needs CUDA, but {build} finds no usable GPU; install a CUDA "
            f"build of torch (the cuda extra) on a machine with a GPU, or pass --device cpu"
        )
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {device} does not exist: this machine has {count} GPU(s), "
            f"cuda:0..cuda:{count - 1}"
        )
