"""Wire formats: the spec's wire keys, encode/decode (shared/wire.py), intake of encoded payloads,
and the decode stage (worker/decode.py): order, isolation of bad images, decoder selection."""

from __future__ import annotations

import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inferq.producer.envelope import task_envelope
from inferq.shared import codec
from inferq.shared.errors import ConfigError, InvalidInput, PayloadTooLarge
from inferq.shared.spec import DEFAULT_JPEG_QUALITY, InputSpec, parse_config
from inferq.shared.wire import EncodedImage, decode_image, encode_image, format_of
from inferq.worker.collate import Collator
from inferq.worker.decode import (
    DeviceJpegDecoder,
    HostDecoder,
    Undecodable,
    make_decoder,
    stage_decoded,
)
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest, Rejection, decode_message
from inferq.worker.runner import Runner
from inferq.worker.versions import same_input

SHAPE = (3, 16, 16)
CPU = torch.device("cpu")


def _image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A smooth image (JPEG keeps it close) with a seed-dependent level, so order shows."""
    c, h, w = shape
    ramp = np.add.outer(np.arange(h), np.arange(w)) * 2
    levels = (np.arange(c) * 30 + seed * 7)[:, None, None]
    return ((ramp[None] + levels) % 200).astype(np.uint8)


# -- spec ----------------------------------------------------------------------------------------


def _config(**inp: Any) -> Any:
    return parse_config("m", {"input": {"shape": list(SHAPE), **inp}})


def test_wire_defaults_to_raw_and_the_measured_quality() -> None:
    config = _config()
    assert (config.wire, config.jpeg_quality) == ("raw", DEFAULT_JPEG_QUALITY)


@pytest.mark.parametrize("wire", ["raw", "jpeg", "png"])
def test_wire_and_quality_reach_the_published_spec(wire: str) -> None:
    spec = _config(wire=wire, jpeg_quality=77).input_spec(4)
    assert (spec.wire, spec.jpeg_quality) == (wire, 77)
    assert InputSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("inp", "message"),
    [
        ({"wire": "webp"}, r"input\.wire must be one of \('raw', 'jpeg', 'png'\), got 'webp'"),
        ({"wire": 1}, r"input\.wire must be one of .*, got 1"),
        ({"wire": "jpeg", "dtype": "float32"}, r"input\.dtype must be 'uint8', got 'float32'"),
        ({"jpeg_quality": 0}, r"input\.jpeg_quality must be from 1 to 100, got 0"),
        ({"jpeg_quality": 101}, r"input\.jpeg_quality must be from 1 to 100, got 101"),
        ({"jpeg_quality": "high"}, r"input\.jpeg_quality must be an integer, got 'high'"),
    ],
)
def test_bad_wire_keys_are_config_errors_naming_the_key(inp: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**inp)


def test_a_spec_from_a_newer_worker_with_unknown_keys_still_loads() -> None:
    spec = InputSpec("m", 1, SHAPE, wire="png")
    data = spec.to_json()[:-1] + ', "from_the_future": 1}'
    assert InputSpec.from_json(data) == spec


# -- encode / decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 9, 13), (3, 224, 224)])
def test_png_is_exact(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)  # noise: nothing to smooth over
    data = encode_image(x, "png", 90)
    assert format_of(data) == "png"
    assert np.array_equal(decode_image(EncodedImage(data, "png"), shape), x)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 32, 32)])
def test_jpeg_round_trip_is_close_and_smaller(shape: tuple[int, ...]) -> None:
    x = _image(3, shape)
    data = encode_image(x, "jpeg", 90)
    y = decode_image(EncodedImage(data, "jpeg"), shape)
    assert format_of(data) == "jpeg" and y.shape == shape and y.dtype == np.uint8
    assert np.abs(x.astype(int) - y).mean() < 3.0
    assert len(data) < x.nbytes


def test_lower_jpeg_quality_gives_fewer_bytes() -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    assert len(encode_image(x, "jpeg", 50)) < len(encode_image(x, "jpeg", 95))


def test_encode_refuses_what_an_image_cannot_carry() -> None:
    with pytest.raises(
        InvalidInput, match=r"uint8 images of 1 or 3 channels .*got float32\[3, 4, 4\]"
    ):
        encode_image(np.zeros((3, 4, 4), np.float32), "jpeg", 90)


def _noise() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=SHAPE, dtype=np.uint8)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header (CRC intact) claims another size: a decompression bomb's shape."""
    data = bytearray(_png((16, 16)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (
            b"\xff\xd8\xff\xe0" + b"\x00" * 40,
            "jpeg",
            r"decodable JPEG or PNG, got JPEG of 44 bytes",
        ),
        (encode_image(_noise(), "png", 90)[:500], "png", r"decodable JPEG or PNG, got PNG of 500"),
        (_png((17, 16)), "png", r"must be RGB 16x16 \(the model's input\), got RGB 17x16"),
        (_png((16, 16), "L"), "png", r"must be RGB 16x16 .*got L 16x16"),
        (_png((16, 16), "RGBA"), "png", r"must be RGB 16x16 .*got RGBA 16x16"),
        (_png_claiming(100_000, 100_000), "png", r"decodable JPEG or PNG.*decompression bomb"),
        (_png_claiming(16, 5000), "png", r"must be RGB 16x16 .*got RGB 16x5000"),
    ],
)
def test_bad_encoded_images_are_invalid_input(data: bytes, fmt: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_image(EncodedImage(data, fmt), SHAPE)


def test_truncated_jpeg_is_invalid_input() -> None:
    data = encode_image(_image(1), "jpeg", 90)
    with pytest.raises(InvalidInput, match="decodable JPEG or PNG"):
        decode_image(EncodedImage(data[: len(data) // 2], "jpeg"), SHAPE)


# -- intake --------------------------------------------------------------------------------------


def _message(payload: bytes, spec: InputSpec) -> bytes:
    kwargs = {"model": spec.model, "submitted_at": 1.0, "preprocess_ms": 0.1}
    return task_envelope("t-1", payload, kwargs, spec, 5, None, {})


@pytest.mark.parametrize("wire", ["jpeg", "png"])
def test_an_image_wire_model_takes_either_encoding_and_the_raw_codec(wire: str) -> None:
    spec = InputSpec("m", 1, SHAPE, wire=wire)
    x = _image(1)
    for fmt in ("jpeg", "png"):
        decoded = decode_message(
            "tag", _message(encode_image(x, fmt, 90), spec), spec, max_bytes=1 << 20
        )
        assert isinstance(decoded, InferenceRequest)
        assert isinstance(decoded.array, EncodedImage) and decoded.array.format == fmt
    raw = decode_message("tag", _message(codec.encode(x), spec), spec, max_bytes=1 << 20)
    assert isinstance(raw, InferenceRequest) and np.array_equal(raw.array, x)


def test_a_raw_wire_model_refuses_an_encoded_image() -> None:
    spec = InputSpec("m", 1, SHAPE)
    decoded = decode_message(
        "tag", _message(encode_image(_image(1), "jpeg", 90), spec), spec, max_bytes=1 << 20
    )
    assert isinstance(decoded, Rejection) and type(decoded.error) is InvalidInput
    assert "model 'm' takes tensors in the codec (input.wire 'raw'), got a JPEG image" in str(
        decoded.error
    )


def test_an_encoded_image_above_the_size_limit_is_refused() -> None:
    spec = InputSpec("m", 1, SHAPE, wire="png")
    payload = encode_image(_image(1), "png", 90)
    decoded = decode_message("tag", _message(payload, spec), spec, max_bytes=len(payload) - 1)
    assert isinstance(decoded, Rejection) and type(decoded.error) is PayloadTooLarge


# -- the decode stage ----------------------------------------------------------------------------


def _request(i: int, value: np.ndarray | EncodedImage) -> InferenceRequest:
    return InferenceRequest(f"t{i}", f"tag{i}", "m", value, 0.0, 0.0, 0.0, 0.0, None, None, 5)


def _requests(n: int, bad: set[int], fmt: str = "jpeg") -> list[InferenceRequest]:
    out = []
    for i in range(n):
        data = encode_image(_image(i), fmt, 95)
        out.append(_request(i, EncodedImage(data[:30] if i in bad else data, fmt)))
    return out


def _collator(n: int = 64) -> Collator:
    return Collator(SHAPE, torch.uint8, n, CPU)


def _levels(x: torch.Tensor) -> list[int]:
    """Each staged image's seed, read back from its top-left pixel (``_image``'s level)."""
    return [round(int(v) / 7) for v in x[:, 0, 0, 0]]


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_host_decoder_keeps_batch_order_and_isolates_bad_images(threads: int) -> None:
    requests = _requests(21, bad={4, 13}, fmt="png")
    decoder = HostDecoder(SHAPE, ThreadPoolExecutor(threads), threads)
    decoded = decoder.stage(requests, _collator())
    assert [r.task_id for r in decoded.live] == [f"t{i}" for i in range(21) if i not in {4, 13}]
    assert decoded.staged is not None
    assert _levels(decoded.staged.x) == [i for i in range(21) if i not in {4, 13}]
    assert [(u.request.task_id, type(u.error)) for u in decoded.failed] == [
        ("t4", InvalidInput),
        ("t13", InvalidInput),
    ]


def test_host_decoder_takes_raw_tensors_beside_encoded_ones() -> None:
    requests = [_request(0, _image(0)), *_requests(3, bad=set())[1:], _request(3, _image(3))]
    decoded = HostDecoder(SHAPE).stage(requests, _collator())
    assert decoded.staged is not None and not decoded.failed
    assert torch.equal(decoded.staged.x[0], torch.from_numpy(_image(0)))
    assert _levels(decoded.staged.x) == [0, 1, 2, 3]


def test_a_batch_of_only_bad_images_stages_nothing() -> None:
    decoded = HostDecoder(SHAPE).stage(_requests(3, bad={0, 1, 2}), _collator())
    assert decoded.live == [] and decoded.staged is None and len(decoded.failed) == 3


def test_raw_wire_has_no_decoder_and_stages_arrays_as_they_came() -> None:
    assert make_decoder("raw", SHAPE, CPU) is None
    requests = [_request(i, _image(i)) for i in range(3)]
    decoded = stage_decoded(None, _collator(), requests)
    assert decoded.staged is not None and decoded.live == requests
    assert torch.equal(decoded.staged.x, torch.from_numpy(np.stack([_image(i) for i in range(3)])))


# -- the device path, driven on the CPU through its seam -----------------------------------------


class FakeDecodeJpeg:
    """``torchvision.io.decode_jpeg``'s contract: raises for the whole call if one image fails."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.calls.append(len(data))
        out = []
        for d in data:
            raw = d.numpy().tobytes()
            if b"NVJPEG-REFUSES" in raw:  # what only the device decoder finds wrong
                raise RuntimeError("nvjpeg: bad Huffman table")
            array = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
            out.append(torch.from_numpy(array.transpose(2, 0, 1).copy()).to(device))
        return out


def test_device_decoder_decodes_the_jpegs_in_one_call() -> None:
    fake = FakeDecodeJpeg()
    decoded = DeviceJpegDecoder(SHAPE, CPU, fake).stage(_requests(6, bad=set()), _collator())
    assert fake.calls == [6]
    assert decoded.staged is not None and _levels(decoded.staged.x) == list(range(6))


def test_device_decoder_isolates_a_bad_jpeg_and_keeps_order_with_pngs_and_raw() -> None:
    fake = FakeDecodeJpeg()
    jpegs = _requests(5, bad=set())
    # A JPEG the host reads, that the device call refuses (the fake's stand-in for bad data).
    out = io.BytesIO()
    Image.fromarray(_image(2).transpose(1, 2, 0).copy()).save(
        out, "JPEG", comment=b"NVJPEG-REFUSES"
    )
    broken = out.getvalue()
    requests = [
        jpegs[0],
        _request(1, EncodedImage(encode_image(_image(1), "png", 90), "png")),
        _request(2, EncodedImage(broken, "jpeg")),
        _request(3, _image(3)),
        jpegs[4],
        _request(5, EncodedImage(encode_image(_image(5, (3, 16, 17)), "jpeg", 95), "jpeg")),
    ]
    decoded = DeviceJpegDecoder(SHAPE, CPU, fake).stage(requests, _collator())
    assert [u.request.task_id for u in decoded.failed] == ["t2", "t5"]
    assert re.search(r"got RGB 17x16", str(decoded.failed[1].error))
    assert fake.calls == [3, 1, 1, 1]  # the batched call failed: each image alone, to find it
    assert decoded.staged is not None and _levels(decoded.staged.x) == [0, 1, 3, 4]


def test_decoder_selection() -> None:
    cuda = torch.device("cuda", 0)  # a device object only: nothing here touches CUDA
    fake = FakeDecodeJpeg()
    assert isinstance(make_decoder("jpeg", SHAPE, cuda, lambda: fake), DeviceJpegDecoder)
    assert isinstance(make_decoder("jpeg", SHAPE, cuda, lambda: None), HostDecoder)
    assert isinstance(make_decoder("png", SHAPE, cuda, lambda: fake), HostDecoder)
    assert isinstance(make_decoder("jpeg", SHAPE, CPU, lambda: fake), HostDecoder)
    assert make_decoder("raw", SHAPE, cuda, lambda: fake) is None


def test_undecodable_names_the_request() -> None:
    requests = _requests(2, bad={1})
    decoded = HostDecoder(SHAPE).stage(requests, _collator())
    assert decoded.failed == [Undecodable(requests[1], decoded.failed[0].error)]


# -- the runner's prepare stage ------------------------------------------------------------------


class Corners(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def _wire_runner(wire: str) -> Runner:
    config = parse_config(
        "m", {"input": {"shape": list(SHAPE), "wire": wire}, "output": {"postprocess": "raw"}}
    )
    handler = ModuleHandler(Corners())
    handler.setup(CPU, False)
    return Runner(handler, config, 1, CPU, "w")


def test_runner_fails_only_the_undecodable_image_and_computes_the_rest_in_order() -> None:
    outcomes = _wire_runner("png").run(_requests(6, bad={2, 5}, fmt="png"))
    assert [o.request.task_id for o in outcomes] == [f"t{i}" for i in range(6)]
    failed = {o.request.task_id: o.error for o in outcomes if o.error is not None}
    assert set(failed) == {"t2", "t5"} and all(type(e) is InvalidInput for e in failed.values())
    raw = _wire_runner("raw").run([_request(i, _image(i)) for i in (0, 1, 3, 4)])
    computed = [o.value["outputs"] for o in outcomes if o.value is not None]
    expected = [o.value["outputs"] for o in raw if o.value is not None]
    assert len(computed) == len(expected)
    for got, want in zip(computed, expected, strict=True):  # png: exact
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("queued", "serving", "readable"),
    [("raw", "raw", True), ("raw", "jpeg", True), ("png", "jpeg", True), ("jpeg", "raw", False)],
)
def test_a_failed_versions_queue_is_answered_only_where_its_wire_is_read(
    queued: str, serving: str, readable: bool
) -> None:
    a, b = InputSpec("m", 2, SHAPE, wire=queued), InputSpec("m", 1, SHAPE, wire=serving)
    assert same_input(a, b) is readable


def test_a_device_error_in_the_decode_is_no_bad_image_and_goes_up() -> None:
    def broken(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(torch.AcceleratorError):
        DeviceJpegDecoder(SHAPE, CPU, broken).stage(_requests(3, bad=set()), _collator())
