"""``inferq deadletter list|requeue|purge``: what was set aside in ``inferq.deadletter``.

Workers set aside, unread, what reached a model's queue but was not a kombu envelope (and unacked
entries that could not be read back), rather than retrying it forever. ``list`` shows them;
``requeue`` puts back those that are kombu envelopes after all (a message fixed by hand, a
foreign client's envelope) on the queue they name; ``purge`` empties the list.
"""

from __future__ import annotations

from dataclasses import dataclass

import click
import orjson
import redis

from inferq.shared import keys
from inferq.shared.lua import LuaScript
from inferq.worker.models_cli import Refused, cli_client, refusing

_PREVIEW = 80

# Take one copy of ARGV[1] off the dead-letter list and, only if it was there, push it onto its
# queue (as a producer does). KEYS: dead-letter list, queue list.
REQUEUE = LuaScript(
    """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the list, and where it would go back to if it is a kombu envelope."""

    index: int
    raw: bytes
    queue: str | None  # the list key a requeue pushes it onto; None: not an envelope
    task_id: str | None

    @classmethod
    def read(cls, index: int, raw: bytes) -> DeadLetter:
        try:
            envelope = orjson.loads(raw)
            props = envelope["properties"]
            info = props["delivery_info"]
            routing_key, tag = info["routing_key"], props["delivery_tag"]
            priority = keys.clamp_priority(int(props.get("priority") or 0))
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            return cls(index, raw, None, None)
        if not (isinstance(routing_key, str) and routing_key and isinstance(tag, str)):
            return cls(index, raw, None, None)
        headers = envelope.get("headers")
        task_id = headers.get("id") if isinstance(headers, dict) else None
        queue = keys.priority_queue_key(routing_key, priority)
        return cls(index, raw, queue, task_id if isinstance(task_id, str) else None)

    def line(self) -> str:
        where = f"envelope for {self.queue!r}" if self.queue else "not a kombu envelope"
        task = f" task {self.task_id}" if self.task_id else ""
        preview = self.raw[:_PREVIEW].decode("utf-8", "backslashreplace")
        more = "..." if len(self.raw) > _PREVIEW else ""
        return f"{self.index}\t{len(self.raw)} bytes\t{where}{task}\t{preview!r}{more}"


def read_all(client: redis.Redis, limit: int) -> list[DeadLetter]:
    raws: list[bytes] = client.lrange(keys.DEAD_LETTER, 0, limit - 1)  # type: ignore[assignment]
    return [DeadLetter.read(i, raw) for i, raw in enumerate(raws)]


def requeue(client: redis.Redis, letters: list[DeadLetter]) -> int:
    """Move each envelope back onto its queue, each in one script call: a requeue that fails
    half-way neither loses a message nor pushes one twice, and two requeues move it once."""
    moved = 0
    for letter in letters:
        if letter.queue is None:
            continue
        moved += int(REQUEUE(client, [keys.DEAD_LETTER, letter.queue], [letter.raw]))
    return moved


@click.group()
def deadletter() -> None:
    """Messages set aside because they were not inferq requests (inferq.deadletter)."""


@deadletter.command("list")
@click.option(
    "--limit", type=click.IntRange(1, keys.DEAD_LETTER_MAX), default=100, show_default=True
)
@refusing
def list_letters(limit: int) -> None:
    """Show the newest dead letters: size, whether each is a kombu envelope, a preview."""
    client = cli_client()
    total = int(client.llen(keys.DEAD_LETTER))
    for letter in read_all(client, limit):
        click.echo(letter.line())
    click.echo(
        f"{total} dead letter(s) in {keys.DEAD_LETTER}"
        + (f", newest {limit} shown" if total > limit else "")
    )


@deadletter.command("requeue")
@refusing
def requeue_letters() -> None:
    """Put the dead letters that are kombu envelopes back on the queue each names."""
    client = cli_client()
    letters = read_all(client, keys.DEAD_LETTER_MAX)
    moved = requeue(client, letters)
    left = int(client.llen(keys.DEAD_LETTER))
    click.echo(f"requeued {moved}; {left} left in {keys.DEAD_LETTER} (not kombu envelopes)")


@deadletter.command("purge")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@refusing
def purge_letters(yes: bool) -> None:
    """Delete every dead letter."""
    client = cli_client()
    count = int(client.llen(keys.DEAD_LETTER))
    if count and not yes and not _confirmed(f"delete {count} dead letter(s)?"):
        raise Refused("nothing deleted: pass --yes, or answer y")
    pipe = client.pipeline(transaction=True)
    pipe.llen(keys.DEAD_LETTER)
    pipe.delete(keys.DEAD_LETTER)
    purged, _ = pipe.execute()
    click.echo(f"purged {int(purged)} dead letter(s) from {keys.DEAD_LETTER}")


def _confirmed(question: str) -> bool:
    try:
        return click.confirm(question)
    except click.Abort:  # no terminal to answer on (a script, a pipe): not confirmed
        click.echo("", err=True)
        return False
