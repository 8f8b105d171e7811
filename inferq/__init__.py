"""inferq: serve PyTorch models from a Celery + Redis message queue.

The repository's top-level folders install under this one name (``pyproject.toml``'s
``package-dir``): ``producer/`` as ``inferq.producer``, ``worker/`` as ``inferq.worker`` and
``shared/`` as ``inferq.shared``. This file is the namespace's root and its public entry point::

    from inferq import submit_job, submit_many, gather

In a checkout, ``inferq/producer``, ``inferq/worker`` and ``inferq/shared`` are symbolic links to
those folders, so that tools which read the tree rather than import it (mypy, a checkout on
``PYTHONPATH``) see the same namespace as an installed copy. The producer is imported on first use,
so ``import inferq.shared`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferq.producer import gather, submit_job, submit_many

__all__ = ["gather", "submit_job", "submit_many"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from inferq import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'inferq' has no attribute {name!r}")
