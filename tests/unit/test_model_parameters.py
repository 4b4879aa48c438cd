"""``ModelParameters.from_config``: every config.pbtxt knob parsed without Triton, torch or weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_parameters import ModelParameters, ParameterError

CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "sd_img2img" / "config.pbtxt"


def config(**values: str) -> dict[str, Any]:
    return {"parameters": {name: {"string_value": value} for name, value in values.items()}}


def test_the_shipped_config_parses_to_the_defaults_it_states() -> None:
    from google.protobuf import text_format
    from google.protobuf.json_format import MessageToDict
    from tritonclient.grpc import model_config_pb2

    shipped = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())
    parsed = ModelParameters.from_config(MessageToDict(shipped, preserving_proto_field_name=True))
    assert parsed == ModelParameters()  # the config states the dataclass's defaults, and nothing else
    names = set(MessageToDict(shipped, preserving_proto_field_name=True)["parameters"])
    assert names == set(ModelParameters.__dataclass_fields__)  # every knob is in both, once


def test_unset_empty_and_unfilled_values_take_the_default() -> None:
    parsed = ModelParameters.from_config(config(max_rows_in_flight="", batching="${BATCHING}"))
    assert (parsed.max_rows_in_flight, parsed.batching) == (32, "step")


def test_values_are_parsed() -> None:
    parsed = ModelParameters.from_config(
        config(
            cuda_graphs="false", cuda_graph_sizes="512, 768", local_files_only="true", min_step_ms="40", dtype="float16"
        )
    )
    assert parsed.cuda_graphs is False and parsed.cuda_graph_sizes == (512, 768) and parsed.local_files_only
    assert (parsed.min_step_ms, parsed.dtype) == (40, "float16")
    assert ModelParameters.from_config(config(cuda_graphs="auto")).cuda_graphs is None


def test_every_bad_value_is_named_and_echoed_at_once() -> None:
    with pytest.raises(ParameterError) as caught:
        ModelParameters.from_config(
            config(
                dtype="int8", batching="sometimes", max_rows_in_flight="many", cuda_graph_sizes="500", min_step_ms="-5"
            )
        )
    problems = caught.value.problems
    assert problems == [
        "parameter dtype must be one of auto, float16, bfloat16, float32, but is 'int8'",
        "parameter batching must be one of ('step', 'request'), but is 'sometimes'",
        "parameter max_rows_in_flight must be a whole number, at least 1, but is 'many'",
        "parameter cuda_graph_sizes must be image sides in px (multiples of 8) separated by commas, but is '500'",
        "parameter min_step_ms must be a whole number of milliseconds, at least 0, but is '-5'",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_images_per_call": "4"}, "max_images_per_call (4) must be at least max_images_per_prompt (8)"),
        ({"max_rows_in_flight": "8"}, "max_rows_in_flight must be at least 2 x max_images_per_prompt (16"),
    ],
)
def test_rules_between_parameters(values: dict[str, str], message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelParameters.from_config(config(**values))
