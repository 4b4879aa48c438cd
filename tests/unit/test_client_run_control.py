"""The client's run control: cancel, Server-Sent Events, deadlines, idempotency, and the CLI's Ctrl-C."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sd_img2img_client import (
    AsyncImg2ImgClient,
    Img2ImgClient,
    Img2ImgError,
    Img2ImgRequest,
    Img2ImgResult,
    RunAccepted,
    RunEvent,
    RunStatus,
    cli,
    format_duration,
    parse_duration,
)
from sd_img2img_client import client as client_module
from sd_img2img_client.cli import describe

Handler = Callable[[httpx.Request], httpx.Response]


def view(status: str, run_id: str = "r1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"run_id": run_id, "status": status, "created_at": "2025-01-01T00:00:00Z"}
    if status == "succeeded":
        body.update(
            {
                "message": "Successfully generated image",
                "result": [base64.b64encode(b"img").decode()],
                "seeds": [7],
                "run_time_ms": 5,
                "output_format": "png",
            }
        )
    body.update(extra)
    return body


def error(status: int, code: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"{code}!", "param": None, **extra}}, headers=headers
    )


def sse(*events: tuple[int, str, dict[str, Any]]) -> str:
    return "".join(f"id: {n}\nevent: {status}\ndata: {json.dumps(data)}\n\n" for n, status, data in events)


def answer_202(run_id: str = "r1") -> httpx.Response:
    return httpx.Response(
        202, json={"run_id": run_id, "message": "accepted", "status": "queued"}, headers={"Location": f"/runs/{run_id}"}
    )


def sync_client(handler: Handler, **kwargs: Any) -> Img2ImgClient:
    kwargs.setdefault("backoff_s", 0.0)
    return Img2ImgClient("http://svc", "key", transport=httpx.MockTransport(handler), **kwargs)


def async_client(handler: Handler, **kwargs: Any) -> AsyncImg2ImgClient:
    kwargs.setdefault("backoff_s", 0.0)
    return AsyncImg2ImgClient("http://svc", "key", transport=httpx.MockTransport(handler), **kwargs)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between tries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waited.append)

    async def asleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", asleep)
    return waited


class Dropped(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends ``text`` and then breaks, as a dropped connection does."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __iter__(self) -> Iterator[bytes]:
        yield self.text.encode()
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.text.encode()
        raise httpx.ReadError("connection reset")


# --- RunStatus --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "finished"),
    [
        ("queued", False),
        ("processing", False),
        ("succeeded", True),
        ("failed", True),
        ("canceled", True),
        ("aborted", True),
    ],
)
def test_run_status_finished(status: str, finished: bool) -> None:
    assert RunStatus.from_json(view(status)).finished is finished


# --- cancel -----------------------------------------------------------------------------------------------------


def test_cancel_returns_the_canceled_view() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=view("canceled", canceled_at="2025-01-01T00:00:05Z"))

    with sync_client(handler) as client:
        status = client.cancel("r1")
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/runs/r1/cancel")]
    assert seen[0].headers["Authorization"] == "key"
    assert status.status == "canceled" and status.finished and status.raw["canceled_at"] == "2025-01-01T00:00:05Z"


def test_cancel_of_a_finished_run_returns_its_final_view() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(409, "run_finished", run=view("succeeded"))

    with sync_client(handler) as client:
        status = client.cancel("r1")
    assert status.status == "succeeded"
    assert status.result is not None and status.result.images == [b"img"] and status.result.seeds == [7]


def test_cancel_of_an_unknown_run_raises() -> None:
    with sync_client(lambda request: error(404, "not_found")) as client, pytest.raises(Img2ImgError) as caught:
        client.cancel("nope")
    assert caught.value.status == 404 and caught.value.code == "not_found"


async def test_async_cancel_200_and_409_run_finished() -> None:
    answers = iter([httpx.Response(200, json=view("canceled")), error(409, "run_finished", run=view("aborted"))])
    async with async_client(lambda request: next(answers)) as client:
        first = await client.cancel("r1")
        second = await client.cancel("r1")
    assert (first.status, second.status) == ("canceled", "aborted")


# --- events -----------------------------------------------------------------------------------------------------


def test_events_parse_the_wire_format_and_stop_after_the_final_one() -> None:
    succeeded = json.dumps(view("succeeded"), indent=1).split("\n")  # a JSON document over several data lines
    body = (
        ": keep-alive\n\n"
        "id: 1\nevent: queued\ndata: " + json.dumps(view("queued")) + "\n\n"
        ": keep-alive\n"
        "id: 2\r\nevent: processing\r\ndata:" + json.dumps(view("processing")) + "\r\n\r\n"
        "retry: 1000\nid: 3\nevent: succeeded\n" + "".join(f"data: {line}\n" for line in succeeded) + "\n"
        "id: 4\nevent: queued\ndata: " + json.dumps(view("queued")) + "\n\n"  # after the final: never read
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    with sync_client(handler) as client:
        events = list(client.events("r1"))
    assert [(e.id, e.status, e.run.status) for e in events] == [
        (1, "queued", "queued"),
        (2, "processing", "processing"),
        (3, "succeeded", "succeeded"),
    ]
    assert events[-1].final and not events[0].final
    assert events[-1].run.result is not None and events[-1].run.result.images == [b"img"]
    assert len(seen) == 1 and seen[0].url.path == "/runs/r1/events" and "Last-Event-ID" not in seen[0].headers
    assert seen[0].headers["Accept"] == "text/event-stream"
    assert seen[0].extensions["timeout"]["read"] >= 60  # longer than the 15 s keep-alive


def test_events_yield_progress_with_its_preview_and_the_last_status_id() -> None:
    jpeg = b"\xff\xd8\xff preview"
    progress = {
        "run_id": "r1",
        "step": 4,
        "total": 9,
        "preview": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(),
    }
    body = (
        sse((2, "processing", view("processing")))
        + "event: progress\ndata: " + json.dumps({**progress, "step": 1, "preview": None}) + "\n\n"
        + "event: progress\ndata: " + json.dumps(progress) + "\n\n"
        + sse((3, "succeeded", view("succeeded")))
    )  # fmt: skip

    with sync_client(lambda request: httpx.Response(200, text=body)) as client:
        events = list(client.events("r1"))
    assert [(e.id, e.status) for e in events] == [(2, "processing"), (2, "progress"), (2, "progress"), (3, "succeeded")]
    first, second = events[1].progress, events[2].progress
    assert first is not None and (first.step, first.total, first.preview) == (1, 9, b"")
    assert second is not None and (second.step, second.total, second.preview) == (4, 9, jpeg)
    assert events[2].run.status == "processing" and not events[2].final
    assert describe(events[2]) == "run r1: step 4/9"
    assert describe(events[0]) == "run r1: processing..."


def test_events_reconnect_with_last_event_id_after_a_drop(sleeps: list[float]) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        if len(seen) == 1:  # event 1, then half of event 2, then the connection breaks
            partial = 'id: 2\nevent: processing\ndata: {"run_id": "r1", '
            return httpx.Response(200, stream=Dropped(sse((1, "queued", view("queued"))) + partial))
        if len(seen) == 2:  # ends cleanly but before the final status
            return httpx.Response(200, text=sse((2, "processing", view("processing"))))
        return httpx.Response(200, text=sse((3, "canceled", view("canceled"))))

    with sync_client(handler, backoff_s=0.5) as client:
        events = list(client.events("r1"))
    assert seen == [None, "1", "2"]
    assert [(e.id, e.status) for e in events] == [(1, "queued"), (2, "processing"), (3, "canceled")]
    assert len(sleeps) == 2 and all(0 < s <= 0.75 for s in sleeps)  # the client's own backoff


def test_events_resume_from_a_given_last_event_id() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(200, text=sse((3, "failed", view("failed", error={"message": "boom"}))))

    with sync_client(handler) as client:
        events = list(client.events("r1", last_event_id=2))
    assert seen == ["2"] and [(e.id, e.status) for e in events] == [(3, "failed")]
    assert events[0].run.reason == "run r1 failed: boom"


def test_events_give_up_after_max_retries_without_a_final_status(sleeps: list[float]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused")

    with sync_client(handler, max_retries=2) as client, pytest.raises(Img2ImgError, match="before a final status"):
        list(client.events("r1"))
    assert len(calls) == 3 and len(sleeps) == 2


def test_events_of_an_unknown_run_raise() -> None:
    with sync_client(lambda request: error(404, "not_found")) as client, pytest.raises(Img2ImgError) as caught:
        list(client.events("nope"))
    assert caught.value.status == 404


def test_events_retry_503_honouring_retry_after(sleeps: list[float]) -> None:
    answers = iter([error(503, "backend_unavailable", headers={"Retry-After": "4"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200, text=sse((1, "succeeded", view("succeeded")))))

    with sync_client(handler) as client:
        events = list(client.events("r1"))
    assert sleeps == [4.0] and [e.status for e in events] == ["succeeded"]


async def test_async_events_reconnect_after_a_drop(sleeps: list[float]) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        if len(seen) == 1:
            return httpx.Response(200, stream=Dropped(": keep-alive\n\n" + sse((1, "queued", view("queued")))))
        return httpx.Response(
            200, text=sse((2, "processing", view("processing")), (3, "aborted", view("aborted", cancel_after_s=90)))
        )

    async with async_client(handler) as client:
        events = [event async for event in client.events("r1")]
    assert seen == [None, "1"]
    assert [(e.id, e.status) for e in events] == [(1, "queued"), (2, "processing"), (3, "aborted")]
    assert "deadline (90 s)" in events[-1].run.reason


# --- idempotency ------------------------------------------------------------------------------------------------


def test_generate_sends_one_idempotency_key_across_its_retries(sleeps: list[float]) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) in (1, 3):  # each logical call is refused once
            return error(429, "rate_limited", headers={"Retry-After": "2"})
        return httpx.Response(200, json=view("succeeded"))

    with sync_client(handler) as client:
        first = client.generate(Img2ImgRequest("x", image=b"png"))
        client.generate(Img2ImgRequest("x", image=b"png"))
    assert isinstance(first, Img2ImgResult) and first.images == [b"img"]
    assert len(keys) == 4 and keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]
    assert len(keys[0]) == 32 and int(keys[0], 16) >= 0  # a uuid4's hex
    assert sleeps == [2.0, 2.0]


def test_generate_retries_409_idempotency_key_in_use_with_the_given_key(sleeps: list[float]) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) < 3:
            return error(409, "idempotency_key_in_use", headers={"Retry-After": "3"})
        return httpx.Response(200, json=view("succeeded"), headers={"Idempotent-Replayed": "true"})

    with sync_client(handler) as client:
        result = client.generate(Img2ImgRequest("x", image=b"png"), idempotency_key="order-42")
    assert isinstance(result, Img2ImgResult) and result.run_id == "r1"
    assert keys == ["order-42"] * 3 and sleeps == [3.0, 3.0]


def test_generate_does_not_retry_other_409s(sleeps: list[float]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return error(409, "run_canceled", run=view("canceled"))

    with sync_client(handler) as client, pytest.raises(Img2ImgError) as caught:
        client.generate(Img2ImgRequest("x", image=b"png"))
    assert len(calls) == 1 and sleeps == []
    assert caught.value.code == "run_canceled" and caught.value.run is not None
    assert caught.value.run.status == "canceled"


def test_cancel_does_not_retry_409_idempotency_key_in_use(sleeps: list[float]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return error(409, "idempotency_key_in_use", headers={"Retry-After": "1"})

    with sync_client(handler) as client, pytest.raises(Img2ImgError):
        client.cancel("r1")
    assert len(calls) == 1 and sleeps == []


async def test_async_generate_keeps_its_key_across_retries(sleeps: list[float]) -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            return error(409, "idempotency_key_in_use", headers={"Retry-After": "5"})
        if len(keys) == 2:
            return error(503, "backend_unavailable", headers={"Retry-After": "1"})
        return httpx.Response(200, json=view("succeeded"))

    async with async_client(handler) as client:
        result = await client.generate(Img2ImgRequest("x", image=b"png"), cancel_after="1h30m")
    assert isinstance(result, Img2ImgResult)
    assert len(keys) == 3 and len(set(keys)) == 1 and sleeps == [5.0, 1.0]


# --- deadlines --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "header"),
    [(90, "90s"), (90.0, "90s"), (1.5, "1.5s"), (0.25, "0.25s"), ("2m", "2m"), ("1h30m", "1h30m"), (" 45 ", "45")],
)
def test_cancel_after_header(value: float | str, header: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=view("succeeded"))

    with sync_client(handler) as client:
        client.generate(Img2ImgRequest("x", image=b"png"), cancel_after=value)
        client.generate(Img2ImgRequest("x", image=b"png"))
    assert seen[0].headers["Cancel-After"] == header
    assert "Cancel-After" not in seen[1].headers
    assert "Prefer" not in seen[0].headers


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("2m", 120.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("120", 120.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "", "m", "5x", "-5s", "0", 0, -1.0, "1m1h", float("nan")])
def test_bad_durations_are_refused_before_sending(bad: float | str) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)


# --- submit -----------------------------------------------------------------------------------------------------


def test_submit_prefers_respond_async() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer_202("r9")

    with sync_client(handler) as client:
        accepted = client.submit(Img2ImgRequest("x", image=b"png"), cancel_after=30)
    assert isinstance(accepted, RunAccepted) and (accepted.run_id, accepted.status) == ("r9", "queued")
    assert seen[0].headers["Prefer"] == "respond-async" and seen[0].headers["Cancel-After"] == "30s"
    assert len(seen[0].headers["Idempotency-Key"]) == 32
    assert "webhook_endpoint" not in json.loads(seen[0].content)


def test_submit_refuses_a_synchronous_answer() -> None:
    with (
        sync_client(lambda request: httpx.Response(200, json=view("succeeded"))) as client,
        pytest.raises(Img2ImgError, match="expected 202"),
    ):
        client.submit(Img2ImgRequest("x", image=b"png"))


async def test_async_submit_prefers_respond_async() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer_202()

    async with async_client(handler) as client:
        accepted = await client.submit(Img2ImgRequest("x", image=b"png"), idempotency_key="k1")
    assert accepted.run_id == "r1"
    assert seen[0].headers["Prefer"] == "respond-async" and seen[0].headers["Idempotency-Key"] == "k1"


# --- the CLI ----------------------------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(b"png")
    return path


def use_transport(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    monkeypatch.setattr(
        cli, "Img2ImgClient", functools.partial(Img2ImgClient, transport=httpx.MockTransport(handler), backoff_s=0.0)
    )


def test_cli_submits_follows_events_and_saves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/predict":
            return answer_202()
        return httpx.Response(200, text=sse((1, "processing", view("processing")), (2, "succeeded", view("succeeded"))))

    use_transport(monkeypatch, handler)
    out = tmp_path / "out"
    code = cli.main([str(image), "-p", "x", "--api-key", "k", "--cancel-after", "2m", "-o", str(out)])
    assert code == 0
    assert [r.url.path for r in seen] == ["/predict", "/runs/r1/events"]
    assert seen[0].headers["Cancel-After"] == "2m" and seen[0].headers["Prefer"] == "respond-async"
    assert (out / "r1_7.png").read_bytes() == b"img"
    assert capsys.readouterr().out.split() == [str(out / "r1_7.png")]


def test_cli_json_prints_the_final_view(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            return answer_202()
        return httpx.Response(200, text=sse((1, "succeeded", view("succeeded"))))

    use_transport(monkeypatch, handler)
    assert cli.main([str(image), "-p", "x", "--api-key", "k", "--json", "-o", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == "r1" and printed["status"] == "succeeded" and printed["seeds"] == [7]


def test_cli_ctrl_c_cancels_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], image: Path, tmp_path: Path
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/predict":
            return answer_202("r7")
        return httpx.Response(200, json=view("canceled", run_id="r7"))

    def interrupted(self: Img2ImgClient, run_id: str, last_event_id: int | None = None) -> Iterator[RunEvent]:
        yield RunEvent(1, "queued", RunStatus.from_json(view("queued", run_id=run_id)))
        raise KeyboardInterrupt  # Ctrl-C while waiting for the next event

    monkeypatch.setattr(Img2ImgClient, "events", interrupted)
    use_transport(monkeypatch, handler)
    code = cli.main([str(image), "-p", "x", "--api-key", "k", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 130
    assert seen == ["POST /predict", "POST /runs/r7/cancel"]
    assert "canceled run r7" in err and "status: canceled" in err
    assert not list(tmp_path.glob("r7_*"))


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        (view("aborted", cancel_after_s=120), "run r1 aborted: its deadline (120 s) passed before it started"),
        (view("failed", error={"code": "inference_failed", "message": "CUDA OOM"}), "run r1 failed: CUDA OOM"),
        (view("canceled"), "run r1 canceled"),
    ],
)
def test_cli_a_run_that_did_not_succeed_exits_1(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    image: Path,
    tmp_path: Path,
    final: dict[str, Any],
    reason: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/predict":
            return answer_202()
        return httpx.Response(200, text=sse((1, "queued", view("queued")), (2, final["status"], final)))

    use_transport(monkeypatch, handler)
    code = cli.main([str(image), "-p", "x", "--api-key", "k", "--json", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert reason in " ".join(captured.err.split())
    assert json.loads(captured.out)["status"] == final["status"]


def test_cli_refuses_a_bad_cancel_after(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([str(image), "-p", "x", "--api-key", "k", "--cancel-after", "soon"])
    assert exited.value.code == 2 and "not a duration" in capsys.readouterr().err
