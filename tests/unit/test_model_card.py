"""The served model's card, as the frontend reads it from a pod's load report, and the fields only some
models take, on the wire (NaN = not given) and in the client and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from frontend import errors, wire
from frontend.generation import GenerationInput
from frontend.model_card import ModelCard, max_image_side, parse_card, refuse_unsupported
from frontend.triton_backend import TritonPod
from sd_img2img_client import Img2ImgClient, Img2ImgRequest, cli
from sd_img2img_client import triton as client_triton

# As the model posts it (model.py's card).
REFINER = {
    "family": "sdxl-refiner",
    "title": "SDXL refiner",
    "schedulers": ["euler", "ddim", "EulerDiscreteScheduler"],
    "fields": ["negative_aesthetic_score", "aesthetic_score"],
    "native_side": 1024,
    "max_image_side": 2048,
}


def test_a_card_is_read_as_the_model_posts_it() -> None:
    card = parse_card(REFINER)
    assert card == ModelCard(
        family="sdxl-refiner",
        title="SDXL refiner",
        schedulers=("EulerDiscreteScheduler", "ddim", "euler"),
        fields=frozenset({"aesthetic_score", "negative_aesthetic_score"}),
        native_side=1024,
        max_image_side=2048,
    )
    assert card.as_dict() == {
        **REFINER,
        "schedulers": sorted(REFINER["schedulers"]),
        "fields": sorted(REFINER["fields"]),
    }
    assert parse_card({**REFINER, "family": "sd3", "native_side": 512.0}).family == "sd3"  # a family new to us


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("family", ""),
        ("title", None),
        ("schedulers", "euler"),
        ("schedulers", ["euler", 3]),
        ("fields", None),
        ("native_side", "1024"),
        ("native_side", True),
        ("max_image_side", 4),
        ("max_image_side", 1024.5),
        ("max_image_side", math.inf),
    ],
)
def test_a_bad_card_is_refused_naming_its_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"model card '{key}'"):
        parse_card({**REFINER, key: value})
    with pytest.raises(ValueError, match="must be an object"):
        parse_card(["not", "a", "card"])


def test_only_a_model_whose_card_lists_a_field_takes_it_and_an_unknown_model_takes_everything() -> None:
    base = parse_card({**REFINER, "family": "sdxl", "title": "SDXL base", "fields": []})
    refiner = parse_card(REFINER)
    for card in (refiner, None):
        refuse_unsupported({"aesthetic_score": 7.0, "negative_aesthetic_score": 1.0}, card)
    refuse_unsupported({"aesthetic_score": None, "scheduler": "euler"}, base)  # None: not given
    with pytest.raises(errors.UnsupportedField) as refused:
        refuse_unsupported({"negative_aesthetic_score": 2.5}, base)
    assert (refused.value.status, refused.value.param) == (400, "negative_aesthetic_score")
    assert refused.value.message == (
        "negative_aesthetic_score: the served model (SDXL base) does not take it; only an SDXL refiner does"
    )


def test_the_image_side_is_the_setting_else_the_models_else_1024() -> None:
    card = parse_card(REFINER)
    assert (max_image_side(0, card), max_image_side(0, None)) == (2048, 1024)
    assert (max_image_side(768, card), max_image_side(768, None)) == (768, 768)


class Result:
    """What ``sd_img2img_progress`` answers for the load (``InferResult.as_numpy``)."""

    def __init__(self, load: Any) -> None:
        self.load = json.dumps(load).encode() if not isinstance(load, bytes) else load

    def as_numpy(self, name: str) -> np.ndarray | None:
        return np.array([self.load], dtype=np.object_) if name == "load" else None


async def read_load(monkeypatch: pytest.MonkeyPatch, pod: TritonPod, load: Any) -> Any:
    async def ask_board(request_id: str) -> Result:
        assert request_id == ""  # the load, not a request's progress
        return Result(load)

    monkeypatch.setattr(pod, "_ask_board", ask_board)
    return await pod.load()


async def test_a_pods_load_carries_the_models_card_when_it_posts_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pod = TritonPod("127.0.0.1:1", "sd_img2img", 10)
    idle = {"jobs": 0, "rows_active": 1, "rows_waiting": 2, "sizes": [[64, 96]]}
    load = await read_load(monkeypatch, pod, {**idle, "model": REFINER})
    assert (load.rows, load.sizes, load.model) == (3, frozenset({(64, 96)}), parse_card(REFINER))
    assert (await read_load(monkeypatch, pod, idle)).model is None  # an older model: unknown
    for _ in range(3):  # a card we cannot read: unknown, the load still counts; logged once, not each time
        bad = await read_load(monkeypatch, pod, {**idle, "model": {**REFINER, "fields": "aesthetic_score"}})
        assert (bad.rows, bad.model) == (3, None)
    assert len([r for r in caplog.records if "unreadable model card" in r.getMessage()]) == 1
    assert await read_load(monkeypatch, pod, b"") is None


def test_the_aesthetic_scores_travel_as_given_or_as_nan() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    job = GenerationInput("p", image, aesthetic_score=7.5, negative_aesthetic_score=0.0)
    arrays = {spec.name: array for spec, array in wire.input_arrays(job)}
    assert arrays["aesthetic_score"].tolist() == [[7.5]] and arrays["negative_aesthetic_score"].tolist() == [[0.0]]
    assert arrays["aesthetic_score"].dtype == np.float32
    missing = {spec.name: array for spec, array in wire.input_arrays(GenerationInput("p", image))}
    assert np.isnan(missing["aesthetic_score"]).all() and np.isnan(missing["negative_aesthetic_score"]).all()


# --- the client and its CLI --------------------------------------------------------------------------------------


def test_the_clients_request_sends_the_aesthetic_scores_only_when_given() -> None:
    assert not {"aesthetic_score", "negative_aesthetic_score"} & set(Img2ImgRequest("x", image=b"png").to_json())
    sent = Img2ImgRequest("x", image=b"png", aesthetic_score=7.0, negative_aesthetic_score=0.0).to_json()
    assert (sent["aesthetic_score"], sent["negative_aesthetic_score"]) == (7.0, 0.0)  # 0.0 is a value, not absent


def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answer: httpx.Response, *args: str) -> tuple[int, Any]:
    image = tmp_path / "in.png"
    image.write_bytes(b"png")
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return answer

    def client(*a: Any, **kw: Any) -> Img2ImgClient:
        return Img2ImgClient(*a, **kw, transport=httpx.MockTransport(handler), backoff_s=0.0)

    monkeypatch.setattr(cli, "Img2ImgClient", client)
    code = cli.main([str(image), "-p", "x", "--api-key", "k", "-o", str(tmp_path), *args])
    return code, sent[0]


def test_the_cli_sends_the_aesthetic_scores_it_is_given_and_shows_a_refusal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = "aesthetic_score: the served model (SDXL base) does not take it; only an SDXL refiner does"
    answer = httpx.Response(
        400, json={"error": {"code": "unsupported_field", "message": refusal, "param": "aesthetic_score"}}
    )
    args = ("--aesthetic-score", "7", "--negative-aesthetic-score", "1.5")
    code, body = run_cli(monkeypatch, tmp_path, answer, *args)
    assert (body["aesthetic_score"], body["negative_aesthetic_score"]) == (7.0, 1.5)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "HTTP 400 unsupported_field" in err and refusal in err and "(param: aesthetic_score)" in err
    _, body = run_cli(monkeypatch, tmp_path, answer)
    assert "aesthetic_score" not in body and "negative_aesthetic_score" not in body


def test_the_direct_triton_client_sends_every_input_the_scores_as_nan_when_not_given() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.inputs: list[Any] = []

        def infer(self, model: str, inputs: list[Any], **_: Any) -> Any:
            self.inputs = inputs
            raise client_triton.InferenceServerException("stop here")

        def close(self) -> None:
            pass

    client = client_triton.TritonImg2ImgClient("127.0.0.1:1")
    recorder = client._client = Recorder()  # type: ignore[assignment]
    image = np.zeros((16, 16, 3), np.uint8)
    for given, expected in ((None, None), (7.5, 7.5)):
        with pytest.raises(client_triton.Img2ImgError):
            client.generate("p", image, aesthetic_score=given, negative_aesthetic_score=given)
        assert [tensor.name() for tensor in recorder.inputs] == [name for name, *_ in client_triton.INPUTS]
        scores = [t for t in recorder.inputs if t.name().endswith("aesthetic_score")]
        assert all(t.datatype() == "FP32" and t.shape() == [1, 1] for t in scores)
        values = [np.frombuffer(t._raw_content, np.float32)[0] for t in scores]  # the bytes sent (tritonclient's)
        assert all(math.isnan(v) for v in values) if expected is None else values == [expected, expected]
