"""The registry against a real Redis: publication without expiry, producers routing by it with no
worker running, and the CLI end to end."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from inferq.producer.client import submit_job
from inferq.shared import keys
from inferq.shared.errors import ModelUnavailable, QueueFull
from inferq.shared.registry import Registry
from inferq.worker.cli import main
from inferq.worker.repository import ModelRepository, published_version
from tests.models import write_model


@pytest.fixture(scope="module")
def versioned_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("versioned")
    write_model(root, "tiny", version=1)
    write_model(root, "tiny", version=2)
    write_model(root, "small", queue_limit=3)
    return root


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _publish(repo: Path, registry: Registry, name: str) -> None:
    repository = ModelRepository(repo)
    versions = [published_version(repository.resolve(name, v)) for v in repository.versions(name)]
    registry.publish(versions, model=name)


def _queued(client, queue: str) -> list[dict]:
    raw = client.lrange(keys.priority_queue_key(queue, keys.DEFAULT_PRIORITY), 0, -1)
    messages = [json.loads(m) for m in raw]
    for m in messages:
        _args, kwargs, _ = msgpack.unpackb(base64.b64decode(m["body"]), raw=False)
        m["kwargs"] = kwargs
    return messages


def test_published_records_have_no_expiry_and_serve_the_highest_version(
    stack_factory, versioned_repo: Path
) -> None:
    stack = stack_factory(versioned_repo)
    registry = Registry(stack.client)
    _publish(versioned_repo, registry, "tiny")
    record = registry.get("tiny")
    assert record is not None
    assert record.version_numbers == (1, 2) and record.policy.serving == 2
    assert record.versions[0].spec.shape == (3, 8, 8)
    assert stack.client.ttl(keys.registry_key("tiny")) == -1  # no expiry
    assert registry.models() == ["tiny"]


def test_producer_queues_for_a_published_model_with_no_worker(
    stack_factory, versioned_repo: Path
) -> None:
    stack = stack_factory(versioned_repo, spec_cache_ttl_s=0.0)
    registry = Registry(stack.client)
    _publish(versioned_repo, registry, "tiny")
    registry.rollout("tiny", 1, canary_share=0.5)
    results = [submit_job.delay(_img(i), model="tiny") for i in range(40)]
    by_queue = {v: _queued(stack.client, keys.version_queue_name("tiny", v)) for v in (1, 2)}
    assert sum(len(m) for m in by_queue.values()) == len(results)
    assert min(len(by_queue[1]), len(by_queue[2])) >= 8  # both versions drawn at a 50% share
    for version, messages in by_queue.items():
        assert Counter(m["kwargs"]["version"] for m in messages) == {version: len(messages)}
    assert stack.client.llen(keys.queue_name("tiny")) == 0
    pinned = submit_job.delay(_img(99), model="tiny", version=1)
    assert pinned.id in {m["headers"]["id"] for m in _queued(stack.client, "inferq.tiny@1")}


def test_queue_limit_counts_version_and_base_queues(stack_factory, versioned_repo: Path) -> None:
    stack = stack_factory(versioned_repo, spec_cache_ttl_s=0.0)
    _publish(versioned_repo, Registry(stack.client), "small")
    stack.client.lpush(keys.priority_queue_key(keys.queue_name("small"), 5), b"{}")
    submit_job.delay(_img(1), model="small")
    submit_job.delay(_img(2), model="small")
    with pytest.raises(QueueFull, match=r"inferq.small@1 must stay within its limit of 3"):
        submit_job.delay(_img(3), model="small")


def test_unpublished_removed_and_unknown_versions_are_refused(
    stack_factory, versioned_repo: Path
) -> None:
    stack = stack_factory(versioned_repo, spec_cache_ttl_s=0.0)
    registry = Registry(stack.client)
    _publish(versioned_repo, registry, "tiny")
    with pytest.raises(ModelUnavailable, match=r"one of the published \['tiny'\], got 'nosuch'"):
        submit_job.delay(_img(1), model="nosuch")
    with pytest.raises(ModelUnavailable, match=r"one of the published \[1, 2\], got 5"):
        submit_job.delay(_img(1), model="tiny", version=5)
    assert registry.remove("tiny").version_numbers == (1, 2)
    assert stack.client.exists(keys.registry_key("tiny")) == 0
    with pytest.raises(ModelUnavailable, match=r"published none, got 'tiny'"):
        submit_job.delay(_img(1), model="tiny")
    with pytest.raises(ModelUnavailable, match="got 'tiny'"):
        registry.remove("tiny")


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_publish_rollout_promote_rollback_and_status(
    stack_factory, versioned_repo: Path
) -> None:
    stack = stack_factory(versioned_repo)
    repo = str(versioned_repo)
    code, out, _ = _cli("models", "publish", "--repository", repo, "tiny")
    assert code == 0 and "published tiny versions [1, 2]; tiny: serving 2" in out
    code, out, _ = _cli("models", "rollout", "tiny", "--version", "1", "--canary", "10")
    assert code == 0 and "serving 2, canary 1 (10%)" in out
    assert "no worker answered" in out
    assert _cli("models", "promote", "tiny")[1].startswith("tiny: serving 1, previous 2")
    assert _cli("models", "rollback", "tiny")[1].startswith("tiny: serving 2, previous 1")
    stack.client.zadd(keys.model_workers_key("tiny"), {"w1@host": 1.0})
    submit_job.delay(_img(1), model="tiny")

    code, out, _ = _cli("status", "--json")
    assert code == 0
    [tiny] = json.loads(out)["models"]
    assert tiny["policy"] == {"serving": 2, "previous": 1, "canary": None, "canary_share": 0.0}
    assert tiny["rollout"]["target"] == 2 and tiny["rollout"]["state"] == "pending"
    assert [v["version"] for v in tiny["versions"]] == [1, 2]
    assert [w["name"] for w in tiny["workers"]] == ["w1@host"]
    assert tiny["backlog"]["by_queue"]["inferq.tiny@2"] == 1
    assert tiny["backlog"]["by_priority"]["5"] == 1 and tiny["backlog"]["total"] == 1

    code, out, _ = _cli("status")
    assert code == 0 and "tiny  versions [1, 2]  serving 2  previous 1" in out
    assert "backlog: 1 = waiting 1 (p5 1) + scheduled 0 + in hand 0" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("models", "rollout", "tiny", "--version", "9"), "ModelUnavailable: model 'tiny' version"),
        (("models", "rollout", "tiny", "--version", "1", "--canary", "150"), "--canary must be"),
        (("models", "promote", "tiny"), "ConfigError: promote needs a canary"),
        (("models", "rollback", "nosuch"), "ModelUnavailable: model must be one of the published"),
        (("models", "publish", "--repository", "/nonexistent"), "InvalidInput: publish needs"),
        (("models", "publish", "nosuch"), "ModelUnavailable: model must be one of ['small'"),
        (("deploy", "keda", "tiny", "--max-replicas", "0"), "--max-replicas must be >= 1"),
    ],
)
def test_cli_mistakes_end_in_one_error_line_and_exit_code_2(
    stack_factory, versioned_repo: Path, args: tuple[str, ...], expected: str
) -> None:
    stack_factory(versioned_repo)
    assert _cli("models", "publish", "tiny")[0] == 0
    code, out, err = _cli(*args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err


def test_backlog_counts_scheduled_and_in_hand_and_is_exported(
    stack_factory, versioned_repo: Path
) -> None:
    from inferq.shared.keys import SCHEDULED
    from inferq.worker.backlog_exporter import BacklogCollector

    stack = stack_factory(versioned_repo)
    _publish(versioned_repo, Registry(stack.client), "tiny")
    submit_job.delay(_img(1), model="tiny")
    list_key = keys.priority_queue_key(keys.version_queue_name("tiny", 2), 5)
    stack.client.zadd(SCHEDULED, {json.dumps([list_key, "{}"]): 1.0})
    stack.client.zadd(SCHEDULED, {json.dumps(["inferq.other", "{}"]): 1.0})
    stack.client.hset(keys.UNACKED, "tag1", json.dumps([{"body": "x"}, "", "inferq.tiny"]))
    stack.client.hset(keys.UNACKED, "tag2", json.dumps([{"body": "x"}, "", "inferq.tinyx"]))

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in BacklogCollector(stack.client).collect()
        for s in metric.samples
    }
    assert samples[("inferq_backlog", (("model", "tiny"),))] == 3
    for part, value in (("waiting", 1), ("scheduled", 1), ("in_hand", 1)):
        assert samples[("inferq_backlog_part", (("model", "tiny"), ("part", part)))] == value
