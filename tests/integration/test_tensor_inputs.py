"""Named tensor inputs end to end: a private redis-server, a real worker serving tests/models.py's
two-input token models, and submit_job.delay / a foreign Celery client producing here."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from celery import Celery

from inferq.aio import submit
from inferq.producer import gather, submit_job, submit_many
from inferq.shared import codec, keys
from inferq.shared.errors import InvalidInput, ModelError
from tests.models import MAX_TOKENS, POISON_ID, Tagger, Tokens

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _request(rng: np.random.Generator, poison: bool = False) -> dict[str, np.ndarray]:
    ids = rng.integers(0, POISON_ID, rng.integers(1, MAX_TOKENS + 1))
    if poison:
        ids[0] = POISON_ID
    return {"input_ids": ids, "flags": rng.integers(0, 2, 4).astype(bool)}


def _alone(request: dict[str, np.ndarray]) -> list[float]:
    """The model in this process on the request alone: no padding, a mask of ones."""
    ids = torch.from_numpy(request["input_ids"])[None]
    flags = torch.from_numpy(request["flags"])[None]
    out: list[float] = Tokens().eval()(ids, flags, torch.ones_like(ids))[0].tolist()
    return out


def _outcome(result: Any) -> str:
    try:
        result.get(timeout=30)
    except InvalidInput:
        return "InvalidInput"
    except ModelError:
        return "ModelError"
    return "ok"


def test_variable_length_batches_equal_one_by_one_runs_exactly(
    stack_factory, test_repo: Path
) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tokens", "tagger")
    rng = np.random.default_rng(0)
    requests = [_request(rng) for _ in range(120)]
    values = gather(submit_many(requests, model="tokens"), timeout=60)
    assert max(v["timing"]["batch_size"] for v in values) > 1
    assert len({len(r["input_ids"]) for r in requests}) == MAX_TOKENS  # every length, mixed
    assert [v["outputs"].tolist() for v in values] == [_alone(r) for r in requests]
    one_by_one = [submit_job.delay(r, model="tokens").get(timeout=30) for r in requests[:5]]
    assert [v["timing"]["batch_size"] for v in one_by_one] == [1] * 5
    assert [v["outputs"].tolist() for v in one_by_one] == [
        v["outputs"].tolist() for v in values[:5]
    ]


def test_outputs_that_follow_the_tokens_come_back_at_each_requests_length(
    stack_factory, test_repo: Path
) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tagger")
    lengths = [1, 5, 9, MAX_TOKENS, 3]
    ids = [np.arange(n, dtype=np.int32) + 20 for n in lengths]  # int32 in: sent as int64
    values = gather(submit_many(ids, model="tagger"), timeout=60)
    table = Tagger().table
    assert [v["outputs"].tolist() for v in values] == [table[20 : 20 + n].tolist() for n in lengths]


def test_bad_requests_fail_alone_with_typed_errors(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tokens")
    rng = np.random.default_rng(1)
    good = _request(rng)
    for bad, message in (
        ({"input_ids": good["input_ids"]}, r"missing \['flags'\]"),
        ({**good, "attention_mask": np.ones(3)}, r"unknown \['attention_mask'\]"),
        ({**good, "input_ids": np.arange(MAX_TOKENS + 1)}, r"int64\[<=16\], got int64\[17\]"),
        ({**good, "flags": np.ones(4)}, r"'flags' of model 'tokens' must be bool\[4\]"),
        (good["input_ids"], r"takes several inputs: pass a dict"),
    ):
        with pytest.raises(InvalidInput, match=message):
            submit_job.delay(bad, model="tokens")
    # The worker's own checks, for what a client without inferq's producer may send.
    app = _foreign_app(stack.redis.url, "msgpack")
    wire = {k: codec.encode(v) for k, v in good.items()}
    foreign_bad = [
        {**wire, "input_ids": codec.encode(np.arange(MAX_TOKENS + 1))},
        {**wire, "flags": codec.encode(np.ones(4, np.uint8))},
        {"input_ids": wire["input_ids"]},
    ]
    sent = [_send(app, w) for w in foreign_bad]
    poisoned = submit_many([_request(rng, poison=i % 7 == 3) for i in range(28)], model="tokens")
    fine = submit_many([_request(rng) for _ in range(20)], model="tokens")
    outcomes = Counter(_outcome(r) for r in [*sent, *poisoned, *fine])
    assert outcomes == Counter(ok=44, InvalidInput=3, ModelError=4)
    with pytest.raises(InvalidInput, match=r"int64\[<=16\], got int64\[17\]"):
        sent[0].get(timeout=5)


def _foreign_app(url: str, serializer: str) -> Celery:
    app = Celery(broker=url, backend=url)
    app.conf.update(
        task_serializer=serializer, accept_content=["msgpack", "json"], result_serializer="json"
    )
    return app


def _send(app: Celery, arg: Any) -> Any:
    return app.send_task(
        keys.TASK_NAME, args=[arg], kwargs={"model": "tokens"}, queue=keys.queue_name("tokens")
    )


def test_foreign_celery_clients_send_named_tensors(stack_factory, test_repo: Path) -> None:
    """A client without inferq's producer builds the request itself: a map {name: codec bytes}
    in msgpack, or the same map with each value base64-encoded in JSON (README, "Several
    inputs"); the codec bytes are built here by hand, not by inferq."""
    import struct

    stack = stack_factory(test_repo)
    stack.worker("tokens")
    ids = np.array([5, 17, 3, 0, 42], dtype="<i8")
    flags = np.array([True, False, False, True])

    def tensor(code: int, array: np.ndarray) -> bytes:  # magic, version 1, dtype, ndim, 0, dims
        header = struct.pack("<3sBBBH", b"IQT", 1, code, array.ndim, 0)
        return header + struct.pack(f"<{array.ndim}I", *array.shape) + array.tobytes()

    raw = {"input_ids": tensor(5, ids), "flags": tensor(6, flags)}
    assert raw["input_ids"] == codec.encode(ids)
    expected = _alone({"input_ids": ids, "flags": flags})
    msgpack_result = _send(_foreign_app(stack.redis.url, "msgpack"), raw).get(timeout=30)
    b64 = {k: base64.b64encode(v).decode() for k, v in raw.items()}
    json_result = _send(_foreign_app(stack.redis.url, "json"), b64).get(timeout=30)
    # a foreign client reads the array as README's "Arrays in results" decodes it
    from tests.unit.test_arrays import _readme_decoder

    decode = _readme_decoder()
    assert decode(msgpack_result["outputs"]).tolist() == expected
    assert decode(json_result["outputs"]).tolist() == expected
    ours = submit_job.delay({"input_ids": ids, "flags": flags}, model="tokens").get(timeout=30)
    assert ours["outputs"].tolist() == expected


def test_the_asyncio_client_takes_a_dict(stack_factory, test_repo: Path) -> None:
    stack = stack_factory(test_repo)
    stack.worker("tokens")
    request = _request(np.random.default_rng(4))

    async def main() -> dict[str, Any]:
        return await (await submit(request, model="tokens")).async_get(timeout=30)

    assert asyncio.run(main())["outputs"].tolist() == _alone(request)
