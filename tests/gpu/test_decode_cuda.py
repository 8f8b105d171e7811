"""The decode stage on CUDA: JPEGs decoded by nvJPEG (torchvision.io.decode_jpeg) in one call
on the collator's copy stream, PNGs and raw tensors beside them through the host, a bad JPEG
failing alone. Skipped without CUDA or torchvision (run on a GPU with .ci/gpu-check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inferq.shared.spec import parse_config
from inferq.shared.wire import EncodedImage, decode_image, encode_image
from inferq.worker.collate import Collator
from inferq.worker.decode import DeviceJpegDecoder, make_decoder, torchvision_decode_jpeg
from inferq.worker.handlers import ModuleHandler
from inferq.worker.intake import InferenceRequest
from inferq.worker.runner import Runner

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(torchvision_decode_jpeg() is None, reason="needs torchvision"),
]
CUDA = torch.device("cuda:0")
SHAPE = (3, 224, 224)


def _image(seed: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(224), np.arange(224)) // 2
    return ((ramp[None] + np.array([0, 40, 80])[:, None, None] + seed * 9) % 256).astype(np.uint8)


def _request(i: int, value: np.ndarray | EncodedImage) -> InferenceRequest:
    return InferenceRequest(f"t{i}", f"t{i}", "m", value, 0.0, 0.0, 0.0, 0.0, None, None, 5)


def _jpeg(i: int) -> EncodedImage:
    return EncodedImage(encode_image(_image(i), "jpeg", 90), "jpeg")


def test_cuda_jpeg_wire_selects_the_device_decoder() -> None:
    assert isinstance(make_decoder("jpeg", SHAPE, CUDA), DeviceJpegDecoder)


def test_device_decode_matches_the_host_and_isolates_a_bad_jpeg() -> None:
    bad = EncodedImage(_jpeg(2).data[:-4000], "jpeg")  # header whole, scan cut short
    requests = [
        _request(0, _jpeg(0)),
        _request(1, EncodedImage(encode_image(_image(1), "png", 90), "png")),
        _request(2, bad),
        _request(3, _image(3)),
        *[_request(i, _jpeg(i)) for i in range(4, 12)],
    ]
    collator = Collator(SHAPE, torch.uint8, 16, CUDA)
    decoded = make_decoder("jpeg", SHAPE, CUDA).stage(requests, collator)  # type: ignore[union-attr]
    assert [u.request.task_id for u in decoded.failed] == ["t2"]
    assert [r.task_id for r in decoded.live] == ["t0", "t1", "t3", *[f"t{i}" for i in range(4, 12)]]
    x = collator.claim(decoded.staged).cpu()  # type: ignore[arg-type]
    assert x.shape == (11, *SHAPE)
    assert torch.equal(x[1], torch.from_numpy(_image(1)))  # png: exact
    assert torch.equal(x[2], torch.from_numpy(_image(3)))  # raw: as sent
    host = decode_image(_jpeg(0), SHAPE)
    assert (x[0].int() - torch.from_numpy(host).int()).abs().max() <= 3  # nvJPEG vs libjpeg


class Corners(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def test_runner_on_cuda_serves_jpeg_requests() -> None:
    config = parse_config(
        "m", {"input": {"shape": list(SHAPE), "wire": "jpeg"}, "output": {"postprocess": "raw"}}
    )
    handler = ModuleHandler(Corners())
    handler.setup(CUDA, False)
    runner = Runner(handler, config, 1, CUDA, "w")
    outcomes = runner.run([_request(i, _jpeg(i)) for i in range(8)])
    assert all(o.error is None for o in outcomes)
    assert [o.request.task_id for o in outcomes] == [f"t{i}" for i in range(8)]
