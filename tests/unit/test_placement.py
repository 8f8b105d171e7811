"""Placement records: names and password-free URLs in the registry, secrets from settings only."""

from __future__ import annotations

import pytest

from inferq.shared.cluster import STANDALONE, shard_book, shard_books
from inferq.shared.errors import ConfigError
from inferq.shared.placement import (
    HOME,
    Placement,
    make_placement,
    resolve,
    without_password,
)
from inferq.shared.settings import Settings

HOT = "rediss://:s3cret@10.0.0.7:6380/0"


def settings(**kw: str) -> Settings:
    return Settings(broker_url="redis://:homepw@127.0.0.1:6379/0", **kw)  # type: ignore[arg-type]


def test_the_record_keeps_names_and_urls_without_passwords() -> None:
    p = make_placement("m", settings(redis_instances=f"hot={HOT}"), "hot")
    assert (p.broker, p.results, p.cluster, p.shards) == ("hot", "hot", False, 0)
    assert p.broker_url == "rediss://10.0.0.7:6380/0"
    assert b"s3cret" not in p.to_json() and b"homepw" not in p.to_json()
    assert Placement.from_json(p.to_json()) == p


def test_each_process_resolves_names_through_its_own_settings() -> None:
    p = make_placement("m", settings(redis_instances=f"hot={HOT}"), "hot")
    assert resolve(p, settings(redis_instances=f"hot={HOT}")).broker_url == HOT
    # Without the name, the stored password-free URL (an instance without auth).
    assert resolve(p, settings()).broker_url == "rediss://10.0.0.7:6380/0"
    assert resolve(None, settings()).broker_url == "redis://:homepw@127.0.0.1:6379/0"


def test_a_resolved_placement_never_shows_its_password() -> None:
    where = resolve(
        make_placement("m", settings(redis_instances=f"hot={HOT}"), "hot"),
        settings(redis_instances=f"hot={HOT}"),
    )
    assert "s3cret" not in repr(where) and "***" in repr(where)
    assert "s3cret" not in repr(settings(redis_instances=f"hot={HOT}"))


def test_a_cluster_placement_keeps_results_on_a_standalone_redis() -> None:
    s = settings(redis_instances=f"cl=redis://127.0.0.1:7000/0,hot={HOT}")
    p = make_placement("m", s, "cl", shards=4)
    assert (p.cluster, p.shards, p.results) == (True, 4, HOME)
    assert make_placement("m", s, "cl", "hot", shards=2).results == "hot"
    with pytest.raises(ConfigError, match="standalone Redis"):
        make_placement("m", s, "cl", "cl", shards=2)


def test_unknown_instances_and_bad_shards_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_REDIS_INSTANCES.*got 'nope'"):
        make_placement("m", settings(), "nope")
    with pytest.raises(ConfigError, match="cluster placement only"):
        Placement("m", "hot", shards=3)
    with pytest.raises(ConfigError, match="name=url pairs"):
        settings(redis_instances="hot")
    with pytest.raises(ConfigError, match="redis://, rediss://"):
        settings(redis_instances="hot=http://x")


def test_without_password_keeps_the_user() -> None:
    assert without_password("redis://alice:pw@h:1/0") == "redis://alice@h:1/0"
    assert without_password("redis://h:1/0") == "redis://h:1/0"


def test_every_key_of_a_shard_shares_its_hash_tag() -> None:
    from redis.crc import key_slot

    book = shard_book("m", 2)
    slot = key_slot(b"{inferq.m:2}")
    names = [
        book.queue("inferq.m"),
        book.queue("inferq.m@3") + "\x06\x165",
        book.unacked,
        book.unacked_index,
        book.holding,
        book.hold_key("abc", 7) + ":3",
        book.dead_letter,
        book.scheduled,
        book.epoch,
        book.push_reply_key("xyz"),
    ]
    assert {key_slot(n.encode()) for n in names} == {slot}
    assert book.queue(book.queue("inferq.m")) == book.queue("inferq.m")  # idempotent
    assert len({key_slot(b.tag.encode()) for b in shard_books("m", 3)}) == 3
    assert STANDALONE.queue("inferq.m") == "inferq.m"
