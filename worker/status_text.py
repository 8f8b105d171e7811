"""``inferq status`` as text: a few lines per model, for people."""

from __future__ import annotations

from inferq.shared.policy import ModelRecord
from inferq.worker.fleet import Backlog, FleetStatus, ModelStatus, WorkerSeen


def render(fleet: FleetStatus, now: float) -> str:
    if not fleet.models:
        blocks = ["no model is published or served (publish one with `inferq models publish`)"]
    else:
        blocks = ["\n".join(_model(m, now)) for m in fleet.models]
    return "\n\n".join([*blocks, f"dead letters: {fleet.dead_letters}"])


def _model(m: ModelStatus, now: float) -> list[str]:
    return [
        _head(m.model, m.record),
        *_rollout(m.record, now),
        *_workers(m.workers, now),
        f"  backlog: {_backlog(m.backlog)}",
    ]


def _head(model: str, record: ModelRecord | None) -> str:
    if record is None:
        return f"{model}  (not published: served by workers only)"
    p = record.policy
    head = f"{model}  versions {list(record.version_numbers)}  serving {p.serving}"
    if p.canary is not None:
        head += f"  canary {p.canary} ({p.canary_share * 100:g}%)"
    if p.previous is not None:
        head += f"  previous {p.previous}"
    return head


def _rollout(record: ModelRecord | None, now: float) -> list[str]:
    if record is None or record.rollout is None:
        return []
    r = record.rollout
    line = f"  rollout: version {r.target} {r.state} ({r.reason or 'no reason given'})"
    return [f"{line}, {_age(now - r.updated_at)} ago by {r.by}"]


def _workers(workers: tuple[WorkerSeen, ...], now: float) -> list[str]:
    """A line per worker: where it runs, what it serves, ready or not, its last heartbeat."""
    if not workers:
        return ["  workers: none"]
    alive = sum(w.alive for w in workers)
    return [
        f"  workers: {alive} alive of {len(workers)} listed",
        *(_worker(w, now) for w in workers),
    ]


def _worker(w: WorkerSeen, now: float) -> str:
    age = _age(now - w.last_heartbeat)
    if not w.alive:
        return f"    {w.name}  gone (no heartbeat for {age})"
    versions = ", ".join(f"{m} v{v}" for m, v in sorted(w.versions.items())) or "nothing"
    state = "ready" if w.ready else "not ready"
    return f"    {w.name}  host {w.host}  {w.device}  serves {versions}  {state}  beat {age} ago"


def _backlog(b: Backlog) -> str:
    busy = ", ".join(f"p{p} {n}" for p, n in b.by_priority.items() if n)
    waiting = f"waiting {b.waiting}" + (f" ({busy})" if busy else "")
    return f"{b.total} = {waiting} + scheduled {b.scheduled} + in hand {b.in_hand}"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
