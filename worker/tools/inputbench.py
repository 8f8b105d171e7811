"""CPU per message of the worker's intake (``decode_message``) for an image and for named tensors,
side by side in one process: ``python -m inferq.worker.tools.inputbench``.

The image is uint8[3, 32, 32] (the example classifier's input); the named tensors are int64 token
ids of 1..64 tokens and a bool[4] flag input, with a generated mask that is never sent. Each
figure is the process CPU time of ``--count`` decodes divided by the count, after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from inferq.producer.envelope import task_envelope
from inferq.shared import codec
from inferq.shared.inputs import encode_request, sample_request
from inferq.shared.spec import InputSpec, parse_config
from inferq.worker.intake import decode_message

TOKENS = {
    "inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": [64], "variable": 0},
        {"name": "flags", "dtype": "bool", "shape": [4]},
        {"name": "attention_mask", "dtype": "int64", "mask_of": "input_ids"},
    ]
}


def us_per_message(raws: list[bytes], spec: InputSpec, count: int) -> float:
    for raw in raws:
        decode_message("t", raw, spec, max_bytes=1 << 26)
    started = time.process_time()
    for i in range(count):
        decode_message("t", raws[i % len(raws)], spec, max_bytes=1 << 26)
    return (time.process_time() - started) / count * 1e6


def image_messages(n: int) -> tuple[list[bytes], InputSpec]:
    spec = parse_config("shapes", {"input": {"shape": [3, 32, 32]}}).input_spec(1)
    rng = np.random.default_rng(0)
    raws = [
        task_envelope(
            str(i),
            codec.encode(rng.integers(0, 256, (3, 32, 32), np.uint8)),
            {"model": "shapes"},
            spec,
            2,
            None,
            {},
        )
        for i in range(n)
    ]
    return raws, spec


def token_messages(n: int) -> tuple[list[bytes], InputSpec]:
    spec = parse_config("tokens", TOKENS).input_spec(1)
    rng = np.random.default_rng(0)
    raws = [
        task_envelope(
            str(i),
            encode_request(sample_request(spec.inputs, rng), spec.inputs, "t"),
            {"model": "tokens"},
            spec,
            2,
            None,
            {},
        )
        for i in range(n)
    ]
    return raws, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image, tokens = image_messages(64), token_messages(64)
    for r in range(args.rounds):  # alternated, so that drift of a shared machine hits both
        a = us_per_message(*image, args.count)
        b = us_per_message(*tokens, args.count)
        print(
            f"round {r + 1}: image uint8[3,32,32] {a:5.1f} us/message   "
            f"named tensors int64[<=64] + bool[4] {b:5.1f} us/message"
        )


if __name__ == "__main__":
    main()
