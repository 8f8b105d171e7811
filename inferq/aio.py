"""``from inferq.aio import submit, gather``: the asyncio client (``inferq.producer.aio``)."""

from inferq.producer.aio import InferqResult, gather, submit, submit_many

__all__ = ["InferqResult", "gather", "submit", "submit_many"]
