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
        # As a plain command: a cluster pipeline refuses ``evalsha`` by name, not EVALSHA itself.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def execute_with_scripts(pipe: Any, client: redis.Redis, scripts: Sequence[LuaScript]) -> list[Any]:
    """Execute ``pipe``; calls that failed because the server lost its scripts (a restarted Redis)
    are run again, alone, once the scripts are loaded: a call that did run is never repeated."""
    commands = list(pipe.command_stack)
    replies = list(pipe.execute(raise_on_error=False))
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for script in scripts:
            client.script_load(script.source)
        retry = client.pipeline(transaction=False)
        retry.command_stack = [commands[i] for i in missing]
        for i, reply in zip(missing, retry.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
