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

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add a call to ``pipe``; run the pipe with :func:`execute_with_scripts`."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


def execute_with_scripts(pipe: Any, client: redis.Redis, scripts: Sequence[LuaScript]) -> list[Any]:
    """Execute ``pipe``; if the server lost its scripts, load them and run the same commands again.

    A NOSCRIPT error means no call of that script ran, so running the whole pipe again runs nothing
    twice as long as the pipe holds only script calls, or idempotent writes beside them.
    """
    commands = list(pipe.command_stack)
    try:
        return list(pipe.execute())
    except NoScriptError:
        for script in scripts:
            client.script_load(script.source)
        retry = client.pipeline(transaction=False)
        retry.command_stack = commands
        return list(retry.execute())
