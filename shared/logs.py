"""structlog set-up: JSON lines in production, readable lines for people.

Every log line goes through one handler on the root logger, whose ``ProcessorFormatter`` renders
structlog's events and the standard library's records (Celery, kombu, redis, warnings) alike: with
``INFERQ_LOG_FORMAT=json`` each line is one JSON object, tracebacks included (as structured
``exception`` fields, not multi-line text). Context bound with :func:`bind_thread` (worker, model,
version) or :func:`bound` (a batch id, a task id) is merged into every line the thread writes.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TextIO

import structlog

from inferq.shared.settings import Settings

_HANDLER_NAME = "inferq"


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging to ``stream`` (stderr) in one format."""
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    json_mode = settings.log_format == "json"
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or _current_stream(root))
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_formatter(json_mode))
    for old in list(root.handlers):  # one handler, ours: a second would print each line twice
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn (torch's included) become log lines too
    if json_mode:
        _log_uncaught()


def _current_stream(root: logging.Logger) -> TextIO:
    """The stream our handler writes to if it is installed, else stderr. Configured again (the
    worker step does, after Celery started), it keeps writing where it did: by then stderr may
    be Celery's proxy to logging, and a handler writing there would write to itself."""
    for h in root.handlers:
        if h.get_name() == _HANDLER_NAME and isinstance(h, logging.StreamHandler):
            return h.stream
    return sys.stderr


def _shared_processors() -> list[structlog.types.Processor]:
    """What every line gets, whether structlog or the standard library wrote it."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _formatter(json_mode: bool) -> structlog.stdlib.ProcessorFormatter:
    final: list[structlog.types.Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta
    ]
    if json_mode:
        final += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        final += [structlog.dev.ConsoleRenderer(colors=False)]
    return structlog.stdlib.ProcessorFormatter(
        processors=final,
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.PositionalArgumentsFormatter()],
    )


def _log_uncaught() -> None:
    """Uncaught exceptions (main thread and others) as JSON lines, not raw tracebacks."""
    uncaught = structlog.get_logger("inferq.uncaught")

    def on_main(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        uncaught.critical("uncaught exception", exc_info=(kind, exc, tb))

    def on_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or args.exc_type is SystemExit:
            return
        thread = args.thread.name if args.thread is not None else None
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        uncaught.critical("uncaught exception in thread", thread=thread, exc_info=exc_info)

    sys.excepthook = on_main
    threading.excepthook = on_thread


def bind_thread(**fields: Any) -> None:
    """Bind ``fields`` to every line this thread logs from now on (a loop's worker, model,
    version). Threads start with an empty context, so one loop's fields never reach another."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` for the lines logged inside the block (a batch id), then restore."""
    with structlog.contextvars.bound_contextvars(
        **{k: v for k, v in fields.items() if v is not None}
    ):
        yield


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
