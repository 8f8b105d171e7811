"""What the broker's bookkeeping reads from a kombu Redis envelope (``worker/intake.py`` reads
the rest, to compute it).

* :func:`sniff_delivery`: the delivery tag and kombu's unacked entry of a fetched message, found
  without parsing the body;
* :func:`read_redelivery`: where a stored unacked entry goes back to, and the message marked
  redelivered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from inferq.shared import keys


class Delivery(NamedTuple):
    """A fetched envelope and what kombu's bookkeeping needs of it. Immutable; a named tuple
    rather than a frozen dataclass because one is made per message on the fetch thread, where
    a frozen dataclass's ``__init__`` costs twice as much."""

    tag: str
    raw: bytes  # the envelope as fetched
    unacked: bytes  # kombu's unacked entry: [message, exchange, routing_key] as JSON


@dataclass(frozen=True, slots=True)
class Redelivery:
    """A stored unacked entry read back: the message (marked redelivered) and where it goes."""

    message: str
    exchange: str
    routing_key: str
    priority: int


# The three fields kombu's bookkeeping needs, found in the envelope's trailing "properties"
# (kombu writes it last); a full parse only where the pattern does not find them.
_TAG = re.compile(rb'"delivery_tag"\s*:\s*"([^"\\]+)"')
_EXCHANGE = re.compile(rb'"exchange"\s*:\s*"([^"\\]*)"')
_ROUTING_KEY = re.compile(rb'"routing_key"\s*:\s*"([^"\\]*)"')


def sniff_delivery(raw: bytes, queue: str) -> Delivery | None:
    """The delivery of a message fetched from ``queue``; None for anything that is not a kombu
    envelope with a delivery tag."""
    return _by_pattern(raw, queue) or _by_parsing(raw, queue)


def _by_pattern(raw: bytes, queue: str) -> Delivery | None:
    """From the envelope's trailing "properties" (kombu writes it last), without parsing the body
    before it."""
    at = raw.rfind(b'"properties"')
    tag = _TAG.search(raw, at) if raw[:1] == b"{" and at > 0 else None
    if tag is None:
        return None
    ex = _EXCHANGE.search(raw, at)
    rk = _ROUTING_KEY.search(raw, at)
    # What the patterns capture holds no quote or backslash: valid JSON string content as it is.
    exchange = b'"%s"' % ex.group(1) if ex else b'""'
    routing_key = b'"%s"' % rk.group(1) if rk else orjson.dumps(queue)
    return Delivery(tag.group(1).decode(), raw, b"[%s,%s,%s]" % (raw, exchange, routing_key))


def _by_parsing(raw: bytes, queue: str) -> Delivery | None:
    """The same from a full parse."""
    try:
        props = orjson.loads(raw).get("properties")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    tag = props.get("delivery_tag") if isinstance(props, dict) else None
    if not isinstance(tag, str) or not tag:
        return None
    info = props.get("delivery_info")
    info = info if isinstance(info, dict) else {}
    exchange = info.get("exchange") if isinstance(info.get("exchange"), str) else ""
    routing_key = info.get("routing_key") if isinstance(info.get("routing_key"), str) else queue
    return Delivery(
        tag, raw, b"[%s,%s,%s]" % (raw, orjson.dumps(exchange), orjson.dumps(routing_key))
    )


def read_redelivery(entry: bytes) -> Redelivery:
    """A stored ``[message, exchange, routing_key]``, its message marked redelivered (as kombu
    marks it). Raises ValueError, TypeError, KeyError or AttributeError for anything else."""
    message, exchange, routing_key = json.loads(entry)
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        raise TypeError(
            f"exchange and routing key must be strings, got {exchange!r}, {routing_key!r}"
        )
    headers = message.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    props = message.setdefault("properties", {})
    info = props.get("delivery_info")
    if isinstance(info, dict):
        info["redelivered"] = True
    priority = keys.clamp_priority(int(props.get("priority") or 0))
    text = json.dumps(message, separators=(",", ":"))
    return Redelivery(text, exchange, routing_key, priority)
