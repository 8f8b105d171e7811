"""Every Redis key, channel, queue and task name inferq uses, and its priority rules, in one place.

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
# kombu's exchange bindings: a set per exchange of ``<routing key><SEP><pattern><SEP><queue>``.
KOMBU_BINDING_PREFIX = "_kombu.binding."

# Messages that are not kombu envelopes, set aside (newest first, at most DEAD_LETTER_MAX) instead
# of being retried forever.
DEAD_LETTER = "inferq.deadletter"
DEAD_LETTER_MAX = 10_000

# Fetched messages whose eta is still far away, parked until it comes: a sorted set scored by eta,
# each member ``[list key, message]`` as JSON.
SCHEDULED = "inferq:scheduled"

# A fetch's messages between leaving their queue and being recorded in UNACKED: hold lists
# ``<HOLD_PREFIX><fetcher>:<n>:<list>``, each hold registered in HOLDING as ``<hold>#<queue>``,
# scored by when it was taken.
HOLD_PREFIX = "inferq:hold:"
HOLDING = "inferq:holding"
_HOLDING_SEP = "#"

# Celery's Redis result backend key prefix; results are also PUBLISHed on the same name.
RESULT_PREFIX = "celery-task-meta-"

# A token that changes whenever Redis comes back without its data: producers record it with each
# request, so a request whose epoch is gone is known to have been lost with a restart.
EPOCH = "inferq:epoch"

# Celery's task events: kombu's Redis fanout PUBLISHes them on ``/<db>.<exchange>/<routing key>``.
EVENT_EXCHANGE = "celeryev"

MODEL_SPEC_PREFIX = "inferq:model:"
MODEL_WORKERS_PREFIX = "inferq:workers:"
# One hash per live worker (host, device, versions, ready, heartbeat), refreshed at each heartbeat
# and expiring after WORKER_TTL_BEATS missed ones: `inferq status` shows who serves what.
WORKER_PREFIX = "inferq:worker:"
WORKER_TTL_BEATS = 3

PUSH_REPLY_PREFIX = "inferq:push:"

# Celery on Redis: 0 is the highest priority. inferq publishes at DEFAULT_PRIORITY unless told
# otherwise, so urgent requests (0..4) overtake a backlog and bulk work (6..9) yields to it.
# A message's priority outside the range is clamped into it, as kombu does.
PRIORITIES = tuple(range(10))
HIGHEST_PRIORITY = PRIORITIES[0]
LOWEST_PRIORITY = PRIORITIES[-1]
DEFAULT_PRIORITY = 5


def queue_name(model: str) -> str:
    return f"{QUEUE_PREFIX}{model}"


def clamp_priority(priority: int) -> int:
    """``priority`` within PRIORITIES (kombu's ``priority()`` clamp)."""
    if priority > LOWEST_PRIORITY:
        return LOWEST_PRIORITY
    return HIGHEST_PRIORITY if priority < HIGHEST_PRIORITY else priority


def priority_queue_key(queue: str, priority: int) -> str:
    """The list a message of ``priority`` lives in (kombu's ``_q_for_pri`` with steps 0..9)."""
    return f"{queue}{PRIORITY_SEP}{priority}" if priority else queue


def priority_list_index(priority: int) -> int:
    """Where the list of ``priority`` stands in :func:`queue_keys`."""
    return PRIORITIES.index(priority)


def queue_keys(queue: str) -> list[str]:
    """All lists of ``queue``, highest priority first."""
    return [priority_queue_key(queue, p) for p in PRIORITIES]


def hold_key(fetcher: str, n: int) -> str:
    """The ``n``-th hold of a fetcher (a name unique to one broker client)."""
    return f"{HOLD_PREFIX}{fetcher}:{n}"


def hold_lists(hold: str) -> list[str]:
    """A hold's lists, one per list of its queue, in :func:`queue_keys` order."""
    return [f"{hold}:{i}" for i in range(1, len(PRIORITIES) + 1)]


def holding_member(hold: str, queue: str) -> str:
    """How a hold is registered in HOLDING: it names the queue its messages go back to."""
    return f"{hold}{_HOLDING_SEP}{queue}"


def parse_holding_member(member: str) -> tuple[str, str]:
    """The hold and the queue of a HOLDING member."""
    hold, _, queue = member.partition(_HOLDING_SEP)
    return hold, queue


def binding_key(exchange: str) -> str:
    return f"{KOMBU_BINDING_PREFIX}{exchange}"


def result_key(task_id: str) -> str:
    return f"{RESULT_PREFIX}{task_id}"


def push_reply_key(call_id: str) -> str:
    """Where a producer's push call leaves its reply for a retry of the same call to find."""
    return f"{PUSH_REPLY_PREFIX}{call_id}"


def event_channel(db: int | str, routing_key: str) -> str:
    """The channel task events of Redis database ``db`` are published on (``db`` and
    ``routing_key`` may be glob patterns, for PSUBSCRIBE)."""
    return f"/{db}.{EVENT_EXCHANGE}/{routing_key}"


def model_spec_key(model: str) -> str:
    return f"{MODEL_SPEC_PREFIX}{model}"


def model_workers_key(model: str) -> str:
    return f"{MODEL_WORKERS_PREFIX}{model}"


def worker_key(worker: str) -> str:
    return f"{WORKER_PREFIX}{worker}"


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
