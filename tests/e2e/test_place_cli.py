"""``inferq models place`` as a user runs it: the record it writes, what it shows, its mistakes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inferq.shared.placement import placement_key
from inferq.shared.redisconn import make_client
from inferq.worker.tools.localredis import LocalRedis
from tests.e2e.test_cli import inferq

pytestmark = pytest.mark.e2e


@pytest.fixture
def home() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.stop()


def test_place_show_and_bring_home(home: LocalRedis) -> None:
    env = {
        "INFERQ_BROKER_URL": home.url,
        "INFERQ_REDIS_INSTANCES": "hot=redis://:sekret@127.0.0.1:6390/0,cl=redis://127.0.0.1:7000/0",
    }
    out = inferq("models", "place", "m", "--instance", "hot", env=env)
    assert out.returncode == 0 and out.stdout.strip() == "m: queues on 'hot'", out.stderr
    stored = make_client(home.url).get(placement_key("m"))
    assert stored is not None and b"sekret" not in stored and b"127.0.0.1:6390" in stored
    out = inferq("models", "place", "m", env=env)
    assert out.stdout.strip() == "m: queues on 'hot'"
    out = inferq("models", "place", "m", "--instance", "cl", "--shards", "4", env=env)
    assert out.stdout.strip() == "m: queues sharded 4 ways over cluster 'cl'"
    out = inferq("models", "place", "m", "--home", env=env)
    assert out.returncode == 0 and not make_client(home.url).exists(placement_key("m"))


def test_place_refuses_an_unknown_instance_in_one_line(home: LocalRedis) -> None:
    out = inferq("models", "place", "m", "--instance", "nope", env={"INFERQ_BROKER_URL": home.url})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: ConfigError: instance must be home or one named")
