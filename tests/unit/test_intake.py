"""worker/intake.py: kombu envelopes from the real producer path -> requests or rejections."""

from __future__ import annotations

import base64
import json
import pickle
import re
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from celery import Celery
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kombu.exceptions import EncodeError
from kombu.serialization import dumps as kombu_dumps

from inferq.producer.envelope import task_envelope
from inferq.shared import codec, keys
from inferq.shared.celeryconf import make_celery
from inferq.shared.errors import InvalidInput, ModelUnavailable, PayloadTooLarge
from inferq.shared.settings import Settings
from inferq.shared.spec import InputSpec
from inferq.worker.delivery import (
    Delivery,
    _by_parsing,
    _by_pattern,
    read_redelivery,
    sniff_delivery,
)
from inferq.worker.intake import InferenceRequest, Rejection, decode_message

SPEC = InputSpec(model="m", version=2, shape=(3, 4, 4))
F32 = InputSpec(model="m", version=2, shape=(3, 4, 4), dtype="float32")
MAX = 1 << 20
NOW, WALL = 77.0, 1_700_000_000.0
# A Celery app that never connects: only used to build protocol-2 messages.
APP = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))


@pytest.fixture
def app() -> Celery:
    return APP


def _array(spec: InputSpec = SPEC, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, size=spec.shape, dtype=np.uint8)
    return rng.random(size=spec.shape).astype(spec.dtype)


def _kwargs(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": "m",
        "version": None,
        "preprocess_ms": 2.5,
        "submitted_at": WALL - 3.0,
    }
    kwargs.update(changes)
    return kwargs


def _produce(
    app: Celery,
    payload: bytes,
    *,
    spec: InputSpec = SPEC,
    kwargs: dict[str, Any] | None = None,
    task_id: str = "task-1",
    priority: int = 5,
    expires: Any = None,
    **options: Any,
) -> bytes:
    """An envelope built by the producer's own code path (inferq.producer.envelope.task_envelope)."""
    return task_envelope(task_id, payload, kwargs or _kwargs(), spec, priority, expires, options)


def _decode(raw: bytes, spec: InputSpec = SPEC, max_bytes: int = MAX) -> Any:
    return decode_message("tag-1", raw, spec, max_bytes=max_bytes, now=NOW, wall=WALL)


def _edit(raw: bytes, **top: Any) -> bytes:
    envelope = json.loads(raw)
    envelope.update(top)
    return json.dumps(envelope).encode()


def _with_body(raw: bytes, body: Any, serializer: str = "msgpack") -> bytes:
    content_type, _, encoded = kombu_dumps(body, serializer=serializer)
    data = encoded if isinstance(encoded, bytes) else encoded.encode()
    return _edit(raw, body=base64.b64encode(data).decode(), **{"content-type": content_type})


def _rejected(
    result: Any, error: type[Exception], pattern: str, task_id: str | None = "task-1"
) -> None:
    assert isinstance(result, Rejection), result
    assert type(result.error) is error, result.error
    assert result.task_id == task_id
    assert result.tag == "tag-1"
    assert re.search(pattern, str(result.error)), str(result.error)


# -- valid messages ----------------------------------------------------------------------------


def test_producer_envelope_decodes_to_the_same_array(app: Celery) -> None:
    array = _array()
    result = _decode(_produce(app, codec.encode(array)))
    assert isinstance(result, InferenceRequest)
    np.testing.assert_array_equal(result.array, array)
    assert result.array.dtype == np.uint8
    assert result.task_id == "task-1"
    assert result.tag == "tag-1"
    assert result.model == "m"
    assert result.submitted_at == WALL - 3.0
    assert result.preprocess_ms == 2.5
    assert result.received_at == NOW
    assert result.received_wall == WALL
    assert result.deadline is None
    assert result.eta is None
    assert result.priority == 5
    assert result.redelivered is False


def _compact(envelope: dict[str, Any]) -> bytes:
    """As kombu lays an envelope out: compact, its body first."""
    return json.dumps(envelope, separators=(",", ":")).encode()


def test_the_body_first_layout_and_any_other_decode_alike(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()), expires=30.0)
    assert raw.startswith(b'{"body":"')  # the layout decoded without parsing the body's JSON
    envelope = json.loads(raw)
    body_last = {k: v for k, v in envelope.items() if k != "body"} | {"body": envelope["body"]}
    fast, full = _decode(raw), _decode(json.dumps(body_last).encode())
    assert isinstance(fast, InferenceRequest) and isinstance(full, InferenceRequest)
    assert fast.array.tobytes() == full.array.tobytes()
    assert (fast.task_id, fast.deadline, fast.priority, fast.submitted_at) == (
        full.task_id,
        full.deadline,
        full.priority,
        full.submitted_at,
    )


def test_a_body_with_a_json_escape_is_read_by_the_full_parse(app: Celery) -> None:
    array = np.full(SPEC.shape, 255, dtype=np.uint8)  # base64 of 0xff bytes is all '/'
    envelope = json.loads(_produce(app, codec.encode(array)))
    assert "/" in envelope["body"]
    raw = _compact(envelope).replace(b"/", b"\\/")  # JSON's optional escape of '/'
    assert raw.startswith(b'{"body":"') and b"\\/" in raw
    result = _decode(raw)
    assert isinstance(result, InferenceRequest), result
    np.testing.assert_array_equal(result.array, array)


def test_a_body_first_rejection_reads_as_the_full_parse_gives_it(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    envelope["body"] = "!!!not base64!!!"
    body_first, spaced = _decode(_compact(envelope)), _decode(json.dumps(envelope).encode())
    _rejected(body_first, InvalidInput, r"valid base64")
    assert str(body_first.error) == str(spaced.error)


def test_float32_spec_is_accepted(app: Celery) -> None:
    array = _array(F32)
    result = _decode(_produce(app, codec.encode(array), spec=F32), spec=F32)
    assert isinstance(result, InferenceRequest)
    assert result.array.dtype == np.float32
    np.testing.assert_array_equal(result.array, array)


def test_relative_expires_becomes_an_absolute_deadline(app: Celery) -> None:
    before = time.time()
    raw = _produce(app, codec.encode(_array()), expires=2.5)
    after = time.time()
    result = _decode(raw)
    assert isinstance(result, InferenceRequest)
    assert result.deadline is not None
    assert before + 2.5 - 1e-3 <= result.deadline <= after + 2.5 + 1e-3


def test_absolute_expires_is_kept_exactly(app: Celery) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 250000, tzinfo=UTC)
    result = _decode(_produce(app, codec.encode(_array()), expires=when))
    assert isinstance(result, InferenceRequest)
    assert result.deadline == when.timestamp()


def test_eta_is_read(app: Celery) -> None:
    when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = _decode(_produce(app, codec.encode(_array()), eta=when))
    assert isinstance(result, InferenceRequest)
    assert result.eta == when.timestamp()


def test_countdown_becomes_an_eta(app: Celery) -> None:
    before = time.time()
    raw = _produce(app, codec.encode(_array()), countdown=30)
    after = time.time()
    result = _decode(raw)
    assert isinstance(result, InferenceRequest)
    assert result.eta is not None
    assert before + 30 - 1e-3 <= result.eta <= after + 30 + 1e-3


def test_spec_default_deadline_applies_without_expires(app: Celery) -> None:
    spec = InputSpec(model="m", version=2, shape=(3, 4, 4), default_deadline_ms=1500.0)
    result = _decode(_produce(app, codec.encode(_array()), spec=spec), spec=spec)
    assert isinstance(result, InferenceRequest)
    assert result.deadline == pytest.approx(WALL - 3.0 + 1.5)


def test_priority_and_version_and_redelivered(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()), priority=1, kwargs=_kwargs(version=2))
    envelope = json.loads(raw)
    envelope["properties"]["delivery_info"]["redelivered"] = True
    result = _decode(json.dumps(envelope).encode())
    assert isinstance(result, InferenceRequest)
    assert result.priority == 1
    assert result.redelivered is True


def test_missing_submitted_at_falls_back_to_receive_time(app: Celery) -> None:
    kwargs = _kwargs()
    del kwargs["submitted_at"]
    result = _decode(_produce(app, codec.encode(_array()), kwargs=kwargs))
    assert isinstance(result, InferenceRequest)
    assert result.submitted_at == WALL


def test_task_id_falls_back_to_correlation_id(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array()), task_id="corr-7"))
    del envelope["headers"]["id"]
    result = _decode(json.dumps(envelope).encode())
    assert isinstance(result, InferenceRequest)
    assert result.task_id == "corr-7"


def test_json_serialized_body_with_base64_tensor_is_accepted(app: Celery) -> None:
    array = _array(seed=3)
    tensor = base64.b64encode(codec.encode(array)).decode()
    message = app.amqp.create_task_message("task-1", keys.TASK_NAME, (tensor,), _kwargs())
    raw = _with_body(_produce(app, codec.encode(array)), message.body, serializer="json")
    assert json.loads(raw)["content-type"] == "application/json"
    result = _decode(raw)
    assert isinstance(result, InferenceRequest)
    np.testing.assert_array_equal(result.array, array)


def test_tensor_given_as_kwarg(app: Celery) -> None:
    array = _array(seed=4)
    raw = _with_body(
        _produce(app, codec.encode(array)), [[], _kwargs(tensor=codec.encode(array)), {}]
    )
    result = _decode(raw)
    assert isinstance(result, InferenceRequest)
    np.testing.assert_array_equal(result.array, array)


# -- rejections --------------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle must never be used to read a message")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_pickle_is_refused_and_never_deserialized(app: Celery, no_unpickling: None) -> None:
    message = app.amqp.create_task_message(
        "task-1", keys.TASK_NAME, (codec.encode(_array()),), _kwargs()
    )
    body = pickle.dumps(message.body)
    raw = _edit(
        _produce(app, codec.encode(_array())),
        body=base64.b64encode(body).decode(),
        **{"content-type": "application/x-python-serialize"},
    )
    _rejected(_decode(raw), InvalidInput, r"got pickle.*never deserialized")


def test_unknown_content_type_is_refused(app: Celery) -> None:
    raw = _edit(_produce(app, codec.encode(_array())), **{"content-type": "application/x-yaml"})
    _rejected(_decode(raw), InvalidInput, r"msgpack or json, got content-type 'application/x-yaml'")


def test_wrong_task_name(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    envelope["headers"]["task"] = "celery.backend_cleanup"
    _rejected(
        _decode(json.dumps(envelope).encode()),
        InvalidInput,
        r"'inferq.infer', got 'celery.backend_cleanup'",
    )


def test_missing_id_gives_an_unanswerable_rejection(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    del envelope["headers"]["id"]
    del envelope["properties"]["correlation_id"]
    _rejected(_decode(json.dumps(envelope).encode()), InvalidInput, r"task id", task_id=None)


@pytest.mark.parametrize(
    "raw", [b"", b"\x80\x81 not json", b'{"body": ', "ünïcode".encode("latin-1")]
)
def test_not_json(raw: bytes) -> None:
    _rejected(
        _decode(raw), InvalidInput, r"kombu JSON envelope, got undecodable bytes", task_id=None
    )


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"body"', b'{"headers": {}}', b"null"])
def test_json_that_is_not_an_envelope(raw: bytes) -> None:
    _rejected(_decode(raw), InvalidInput, r"kombu envelope with a body", task_id=None)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deeply_nested_json_is_rejected(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    assert isinstance(_decode(raw, max_bytes=1 << 30), Rejection)


def test_invalid_base64_body(app: Celery) -> None:
    raw = _edit(_produce(app, codec.encode(_array())), body="!!!not base64!!!")
    _rejected(_decode(raw), InvalidInput, r"valid base64")


def test_invalid_msgpack_body(app: Celery) -> None:
    raw = _edit(_produce(app, codec.encode(_array())), body=base64.b64encode(b"\xc1\xc1").decode())
    _rejected(_decode(raw), InvalidInput, r"valid application/x-msgpack")


@pytest.mark.parametrize("body", [[1], "text", {"args": []}, [{}, {}], [[], []]])
def test_body_that_is_not_protocol_2(app: Celery, body: Any) -> None:
    raw = _with_body(_produce(app, codec.encode(_array())), body)
    assert isinstance(_decode(raw), Rejection)


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (
            np.zeros((3, 4, 5), dtype=np.uint8),
            r"must be uint8\[3, 4, 4\] for model 'm', got uint8\[3, 4, 5\]",
        ),
        (np.zeros((4, 4, 3), dtype=np.uint8), r"got uint8\[4, 4, 3\]"),
        (
            np.zeros((3, 4, 4), dtype=np.float32),
            r"must be uint8\[3, 4, 4\] .*got float32\[3, 4, 4\]",
        ),
        (np.zeros((48,), dtype=np.uint8), r"got uint8\[48\]"),
    ],
)
def test_wrong_dtype_or_shape(app: Celery, array: np.ndarray, pattern: str) -> None:
    _rejected(_decode(_produce(app, codec.encode(array))), InvalidInput, pattern)


def test_truncated_tensor(app: Celery) -> None:
    payload = codec.encode(_array())[:-5]
    _rejected(_decode(_produce(app, payload)), InvalidInput, r"48 data bytes, payload carries 43")


@pytest.mark.parametrize("payload", ["not base64 at all!", 12345, None, [1, 2]])
def test_tensor_that_is_not_bytes(app: Celery, payload: Any) -> None:
    raw = _with_body(_produce(app, codec.encode(_array())), [[payload], _kwargs(), {}], "json")
    assert isinstance(_decode(raw), Rejection)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_a_float_spec(app: Celery, bad: float) -> None:
    array = _array(F32)
    array[1, 2, 3] = bad
    _rejected(
        _decode(_produce(app, codec.encode(array), spec=F32), spec=F32),
        InvalidInput,
        r"must be finite",
    )


def test_payload_over_the_limit(app: Celery) -> None:
    spec = InputSpec(model="m", version=2, shape=(3, 16, 16))
    raw = _produce(app, codec.encode(_array(spec)), spec=spec)
    _rejected(
        _decode(raw, spec=spec, max_bytes=700), PayloadTooLarge, r"at most 700 bytes, got 788"
    )


def test_body_far_over_the_limit_is_refused_before_base64_decoding(app: Celery) -> None:
    spec = InputSpec(model="m", version=2, shape=(3, 64, 64))
    raw = _produce(app, codec.encode(_array(spec)), spec=spec)
    _rejected(
        _decode(raw, spec=spec, max_bytes=1024),
        InvalidInput,
        r"message body must be at most ~1024 bytes",
    )


def test_wrong_model(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()), kwargs=_kwargs(model="other"))
    _rejected(_decode(raw), InvalidInput, r"model must be 'm' on queue inferq.m, got 'other'")


def test_version_mismatch_is_model_unavailable(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()), kwargs=_kwargs(version=1))
    _rejected(_decode(raw), ModelUnavailable, r"serves \(2\), got 1")


def test_bad_expires(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    envelope["headers"]["expires"] = "tomorrow-ish"
    _rejected(
        _decode(json.dumps(envelope).encode()), InvalidInput, r"ISO 8601 time, got 'tomorrow-ish'"
    )


# -- known crashes (each should be a Rejection) ------------------------------------------------


def _crashing_envelopes() -> list[Any]:
    valid = json.loads(_produce(APP, codec.encode(_array())))

    def edit(path: tuple[str, ...], value: Any) -> bytes:
        envelope = json.loads(json.dumps(valid))
        target = envelope
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return json.dumps(envelope).encode()

    return [
        pytest.param(edit(("headers",), [1]), id="headers-is-a-list"),
        pytest.param(edit(("properties",), "abc"), id="properties-is-a-string"),
        pytest.param(edit(("properties", "priority"), "high"), id="priority-not-a-number"),
        pytest.param(edit(("properties", "priority"), [1]), id="priority-is-a-list"),
        pytest.param(edit(("body",), None), id="base64-body-null"),
        pytest.param(
            edit(("body",), base64.b64encode(b"\x93\x90\x81\x90\x01\x80").decode()),
            id="msgpack-map-with-a-list-key",
        ),
        pytest.param(
            json.dumps(
                {**valid, "body": 123, "content-type": "application/json", "properties": {}}
            ).encode(),
            id="json-body-not-a-string",
        ),
    ]


def test_null_delivery_info_is_tolerated(app: Celery) -> None:
    """kombu fills delivery_info on publish; a null one loses nothing the request needs."""
    valid = json.loads(_produce(app, codec.encode(_array())))
    valid["properties"]["delivery_info"] = None
    assert isinstance(_decode(json.dumps(valid).encode()), InferenceRequest)


@pytest.mark.parametrize("raw", _crashing_envelopes())
def test_malformed_envelope_structure_is_rejected_not_raised(raw: bytes) -> None:
    assert isinstance(_decode(raw), Rejection)


# -- fuzz --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = _decode(raw)
    assert isinstance(result, (InferenceRequest, Rejection))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    args=st.lists(_values, max_size=3),
    kwargs=st.dictionaries(
        st.sampled_from(["model", "version", "submitted_at", "preprocess_ms", "tensor", "x"]),
        _values,
        max_size=5,
    ),
    serializer=st.sampled_from(["msgpack", "json"]),
)
def test_fuzz_task_bodies_never_raise(
    args: list[Any], kwargs: dict[str, Any], serializer: str
) -> None:
    base = _produce(APP, codec.encode(_array()))
    try:
        raw = _with_body(base, [args, kwargs, {}], serializer)
    except EncodeError:  # the json serializer cannot carry every value (non-UTF-8 bytes)
        raw = _with_body(base, [args, kwargs, {}], "msgpack")
    result = _decode(raw)
    assert isinstance(result, (InferenceRequest, Rejection))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
_ENVELOPE_KEYS = ["body", "headers", "properties", "content-type", "content-encoding"]


@settings(max_examples=300, deadline=None)
@given(
    envelope=st.dictionaries(
        st.sampled_from(_ENVELOPE_KEYS) | st.text(max_size=8), _json_values, max_size=6
    )
)
@example(envelope={"body": "", "headers": [1]})
def test_fuzz_json_envelopes_never_raise(envelope: dict[str, Any]) -> None:
    result = _decode(json.dumps(envelope).encode())
    assert isinstance(result, (InferenceRequest, Rejection))


# -- deliveries: what the broker's bookkeeping reads of an envelope ----------------------------


def _unacked(delivery: Delivery) -> list[Any]:
    return json.loads(delivery.unacked)


def test_a_delivery_is_sniffed_from_the_producers_envelope(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()))
    delivery = sniff_delivery(raw, "inferq.m")
    assert delivery is not None
    assert delivery.tag == json.loads(raw)["properties"]["delivery_tag"]
    assert _unacked(delivery) == [json.loads(raw), "", "inferq.m"]
    assert delivery.unacked.startswith(b"[" + raw + b",")  # the message kept byte for byte


def test_the_pattern_and_the_full_parse_agree(app: Celery) -> None:
    raw = _produce(app, codec.encode(_array()))
    spaced = json.dumps(json.loads(raw)).encode()  # kombu's json: ", " and ": " separators
    for message in (raw, spaced):
        by_parsing = _by_parsing(message, "inferq.m")
        assert by_parsing is not None
        assert _by_pattern(message, "inferq.m") == by_parsing
        assert _unacked(by_parsing)[1:] == ["", "inferq.m"]


def test_a_tag_the_pattern_cannot_read_is_found_by_parsing(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    envelope["properties"]["delivery_tag"] = 'odd"tag'
    raw = json.dumps(envelope).encode()
    assert _by_pattern(raw, "inferq.m") is None
    delivery = sniff_delivery(raw, "inferq.m")
    assert delivery is not None and delivery.tag == 'odd"tag'


def test_a_missing_routing_key_is_the_queue_it_came_from(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array())))
    del envelope["properties"]["delivery_info"]
    raw = json.dumps(envelope).encode()
    for found in (_by_pattern(raw, "inferq.m"), _by_parsing(raw, "inferq.m")):
        assert found is not None and _unacked(found)[1:] == ["", "inferq.m"]


@pytest.mark.parametrize(
    "raw",
    [b"\x00garbage", b"[1, 2]", b'{"body": "x"}', b'{"properties": {"delivery_tag": ""}}'],
    ids=["bytes", "list", "no-properties", "empty-tag"],
)
def test_what_is_not_a_tagged_envelope_has_no_delivery(raw: bytes) -> None:
    assert sniff_delivery(raw, "inferq.m") is None


def test_a_redelivery_is_marked_and_its_priority_clamped(app: Celery) -> None:
    envelope = json.loads(_produce(app, codec.encode(_array()), priority=3))
    envelope["properties"]["priority"] = 42
    entry = json.dumps([envelope, "ex", "rk"]).encode()
    back = read_redelivery(entry)
    assert (back.exchange, back.routing_key, back.priority) == ("ex", "rk", keys.LOWEST_PRIORITY)
    message = json.loads(back.message)
    assert message["headers"]["redelivered"] is True
    assert message["properties"]["delivery_info"]["redelivered"] is True
    assert message["body"] == envelope["body"]


@pytest.mark.parametrize(
    "entry",
    [b"nope", b"[1, 2]", b'[{"properties": {}}, null, "rk"]', b'["text", "", "rk"]'],
    ids=["not-json", "two-fields", "exchange-not-a-string", "message-not-an-object"],
)
def test_a_malformed_unacked_entry_is_refused(entry: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError, AttributeError)):
        read_redelivery(entry)
