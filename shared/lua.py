"""Server-side scripts, called by sha so a pipeline of them costs one round trip."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # After a Redis restart the script cache is empty; loading is idempotent.
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The call as a command for ``shared/redisconn.py``'s ``raw_pipeline``."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def call_raw(self, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``self(client, keys, args)`` through ``raw_pipeline``: no redis-py machinery, and no
        retry on a dropped connection (for callers that retry themselves)."""
        from inferq.shared.redisconn import raw_pipeline

        (reply,) = raw_pipeline(client, [self.command(keys, args)])
        if isinstance(reply, NoScriptError):  # a restarted Redis: the script did not run
            client.script_load(self.source)
            (reply,) = raw_pipeline(client, [self.command(keys, args)])
        if isinstance(reply, Exception):
            raise reply
        return reply

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to ``pipe``; run the pipe with :func:`execute_with_scripts`."""
        # As a plain command: a cluster pipeline refuses ``evalsha`` by name, not EVALSHA itself.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def execute_with_scripts(pipe: Any, client: redis.Redis, scripts: Sequence[LuaScript]) -> list[Any]:
    """Execute ``pipe``; calls that failed because the server lost its scripts (a restarted Redis)
    are run again, alone, once the scripts are loaded: a call that did run is never repeated."""
    commands = _queued(pipe)
    replies = list(pipe.execute(raise_on_error=False))
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for script in scripts:
            client.script_load(script.source)
        retry = client.pipeline(transaction=False)
        for i in missing:
            args, options = commands[i]
            retry.execute_command(*args, **options)
        for i, reply in zip(missing, retry.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _queued(pipe: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The commands queued on ``pipe``, as (args, options): a standalone pipeline keeps them in
    ``command_stack``, a cluster pipeline (redis-py 6+) in its execution strategy's queue."""
    strategy = getattr(pipe, "_execution_strategy", None)
    stack = pipe.command_stack or (strategy.command_queue if strategy is not None else [])
    return [(c.args, c.options) if hasattr(c, "args") else (c[0], c[1]) for c in stack]
