"""Every Redis key, queue and task name inferq uses, in one place.

Queue keys follow kombu's Redis transport so that any Celery client can publish to them and any
kombu consumer can restore unacknowledged messages: a queue is a list named after it, priority
sub-queues are ``<queue><SEP><priority>``, and unacked deliveries live in the ``unacked`` hash and
``unacked_index`` sorted set.
"""

from __future__ import annotations

from collections.abc import Iterable

TASK_NAME = "inferq.infer"
QUEUE_PREFIX = "inferq."
ADMIN_QUEUE = "inferq.admin"

# kombu.transport.redis.Channel defaults; change them only together with kombu's transport options.
PRIORITY_SEP = "\x06\x16"
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# A fetch's messages between leaving their queue and being recorded in UNACKED: hold lists
# ``<HOLD_PREFIX><fetcher>:<n>:<list>``, each hold registered in HOLDING as ``<hold>#<queue>``,
# scored by when it was taken.
HOLD_PREFIX = "inferq:hold:"
HOLDING = "inferq:holding"

# Celery's Redis result backend key prefix; results are also PUBLISHed on the same name.
RESULT_PREFIX = "celery-task-meta-"

# A token that changes whenever Redis comes back without its data: producers record it with each
# request, so a request whose epoch is gone is known to have been lost with a restart.
EPOCH = "inferq:epoch"

MODEL_SPEC_PREFIX = "inferq:model:"
MODEL_WORKERS_PREFIX = "inferq:workers:"

# Celery on Redis: 0 is the highest priority. inferq publishes at DEFAULT_PRIORITY unless told
# otherwise, so urgent requests (0..4) overtake a backlog and bulk work (6..9) yields to it.
PRIORITIES = tuple(range(10))
DEFAULT_PRIORITY = 5


def queue_name(model: str) -> str:
    return f"{QUEUE_PREFIX}{model}"


def priority_queue_key(queue: str, priority: int) -> str:
    """The list a message of ``priority`` lives in (kombu's ``_q_for_pri`` with steps 0..9)."""
    return f"{queue}{PRIORITY_SEP}{priority}" if priority else queue


def queue_keys(queue: str) -> list[str]:
    """All lists of ``queue``, highest priority first."""
    return [priority_queue_key(queue, p) for p in PRIORITIES]


def result_key(task_id: str) -> str:
    return f"{RESULT_PREFIX}{task_id}"


def push_reply_key(call_id: str) -> str:
    """Where a producer's push call leaves its reply for a retry of the same call to find."""
    return f"inferq:push:{call_id}"


def model_spec_key(model: str) -> str:
    return f"{MODEL_SPEC_PREFIX}{model}"


def model_workers_key(model: str) -> str:
    return f"{MODEL_WORKERS_PREFIX}{model}"


# -- registry and versioned queues ------------------------------------------------------------
# What is published lives without expiry, independent of workers: one JSON document per model
# (shared/registry.py) and the set of published model names. Each published version has its own
# queue, so that a request preprocessed for version N is only ever fetched by a worker holding N;
# the unversioned queue stays for foreign Celery clients and the serving version.

REGISTRY_PREFIX = "inferq:registry:"
REGISTRY_MODELS = "inferq:registry:models"
VERSION_SEP = "@"


def registry_key(model: str) -> str:
    return f"{REGISTRY_PREFIX}{model}"


def version_queue_name(model: str, version: int) -> str:
    return f"{queue_name(model)}{VERSION_SEP}{version}"


def model_queues(model: str, versions: Iterable[int]) -> list[str]:
    """The model's unversioned queue, then one queue per version (in the order given)."""
    return [queue_name(model), *(version_queue_name(model, v) for v in versions)]


def backlog_keys(model: str, versions: Iterable[int]) -> list[str]:
    """Every list of the model's backlog: each priority of the base queue and of each version's."""
    return [key for queue in model_queues(model, versions) for key in queue_keys(queue)]
