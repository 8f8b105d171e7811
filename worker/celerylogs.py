"""Celery's own output through inferq's logging: one format, one JSON object per line.

Connected by ``inferq.worker.app`` at import. Celery then installs no handlers of its own (a
``setup_logging`` receiver means the application configures logging), leaves the root logger
alone (``worker_hijack_root_logger=False``), and in JSON mode prints no banner: the banner's
facts become one ``celery worker starting`` event instead, and anything a library prints to
stdout or stderr becomes a log line.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from inferq.shared.logs import configure_logging, get_logger
from inferq.shared.settings import get_settings, redact_url

log = get_logger(__name__)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings())


@signals.celeryd_after_setup.connect
def _after_setup(sender: str, instance: Any, conf: Any, **_: Any) -> None:
    """Sent just before Celery prints its banner: in JSON mode the banner is logged instead."""
    if get_settings().log_format != "json":
        return
    instance.quiet = True
    log.info(
        "celery worker starting",
        hostname=sender,
        broker=redact_url(str(conf.broker_url or "")),
        queues=sorted(q.name for q in instance.app.amqp.queues.values()),
        pool=str(conf.worker_pool),
        task_events=bool(instance.task_events),
    )
    # A stray print() (a model's, a library's) would be the one line that is not JSON.
    instance.app.log.redirect_stdouts_to_logger(
        logging.getLogger("inferq.stdout"), loglevel=logging.WARNING
    )


def quiet_shutdown(worker: Any) -> None:
    """Celery's SIGTERM/SIGQUIT handlers print "worker: Warm shutdown (MainProcess)" as plain
    text; in JSON mode they are installed again without it (the service logs its own shutdown).
    Called from the worker's inferq step, which starts after Celery installed them."""
    if get_settings().log_format != "json":
        return
    from celery.apps import worker as celery_worker

    celery_worker.install_worker_term_handler(worker, verbose=False)
    celery_worker.install_worker_term_hard_handler(worker, verbose=False)
