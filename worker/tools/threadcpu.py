"""CPU time of a process's threads, by thread name, from ``/proc`` (Linux; empty elsewhere).

``inferq bench`` reads it around the drain to say how many microseconds of CPU each of the
worker's threads (and Redis) spends per message: where the path's own Python goes, beside the
model, which the stage profile (``inferq.worker.tools.stage_profile``) cannot see because it
leaves Redis and the threads out.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread name of ``pid``, summed over threads
    that share a name (the kernel keeps 15 characters of it)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended between the listing and the read
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


def us_per_message(
    before: dict[str, float], after: dict[str, float], messages: int
) -> dict[str, float]:
    """Each thread name's CPU between two readings, in microseconds per message, largest first."""
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    ranked = sorted(((k, s) for k, s in spent.items() if s > 0), key=lambda kv: -kv[1])
    return {k: s / messages * 1e6 for k, s in ranked}
