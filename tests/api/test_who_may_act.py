"""Who may act on a run: only the API key that created it may see it, cancel it, follow its events or
replay its Idempotency-Key; to any other key the run does not exist (a 404 like an unknown id's), and
nothing it tries changes the run. Also the 401 rules of the key check itself and the answers recorded
for a run's synchronous caller. (Mutation testing, ``make mutation``, measures these; docs/mutation.md.)"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from frontend.app_keys import RUNS, STORE
from frontend.auth import key_hash
from frontend.errors import BackendUnavailable, NotFound
from frontend.http.playground import PUBLIC_PATHS as PLAYGROUND_PATHS
from frontend.runs.execute import RunStopped, RunTakenOver
from frontend.settings import Settings
from frontend.store import Run, RunStatus

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.support import API_KEYS

Api = TestClient[web.Request, web.Application]
OWNER, OTHER = API_KEYS[0], API_KEYS[1]
UNKNOWN = "00000000-0000-4000-8000-000000000000"
MESSAGE_401 = "missing or invalid API key: send it as 'Authorization: <API_KEY>'"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"events_poll_s": 0.05})


def not_found(run_id: str) -> dict[str, Any]:
    """The 404 body of a run this key cannot see: the same for another key's run as for no run at all."""
    return {"error": {"code": "not_found", "message": f"no run {run_id!r} for this API key", "param": "run_id"}}


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def start_held_run(api: Api, backend: ScriptedBackend, **fields: Any) -> str:
    """A queued background run whose generation waits for ``backend.release``."""
    status, accepted, _ = await predict(
        api, body(prompt="hold", **fields), headers={**auth(OWNER), "Prefer": "respond-async"}
    )
    assert status == 202, accepted
    async with asyncio.timeout(5):
        while not backend.jobs:
            await asyncio.sleep(0.01)
    return str(accepted["run_id"])


async def test_another_key_sees_no_run_where_the_owner_sees_it(api: Api) -> None:
    status, done, _ = await predict(api, body(), headers=auth(OWNER))
    assert status == 200
    run_id = done["run_id"]
    async with api.get(f"/runs/{run_id}", headers=auth(OWNER)) as response:
        code, view = await answer(response)
    assert code == 200 and view["run_id"] == run_id and view["status"] == "succeeded"
    assert view["result"] == done["result"] and view["seeds"] == [120] and "webhook" not in view
    async with (
        api.get(f"/runs/{run_id}", headers=auth(OTHER)) as theirs,
        api.get(f"/runs/{UNKNOWN}", headers=auth(OTHER)) as unknown,
    ):
        assert await answer(theirs) == (404, not_found(run_id))
        assert await answer(unknown) == (404, not_found(UNKNOWN))


async def test_another_key_cannot_cancel_a_run_and_the_owner_can(
    api: Api, backend: ScriptedBackend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await start_held_run(api, backend)
    runs = api.server.app[RUNS]

    async def nothing() -> None:
        return None

    # The lease loop would stop a run finished elsewhere a moment later; the cancel must stop it itself.
    monkeypatch.setattr(runs, "stop_finished_elsewhere", nothing)
    for path in (f"/runs/{run_id}/cancel", f"/runs/{UNKNOWN}/cancel"):
        async with api.post(path, headers=auth(OTHER)) as response:
            assert await answer(response) == (404, not_found(path.split("/")[2]))
    async with api.get(f"/runs/{run_id}", headers=auth(OWNER)) as response:
        assert (await response.json())["status"] == "processing"  # untouched by the other key
    assert runs.is_running(run_id)

    with caplog.at_level(logging.INFO, logger="frontend.runs"):
        async with api.post(f"/runs/{run_id}/cancel", headers=auth(OWNER)) as response:
            code, view = await answer(response)
    assert code == 200 and view["run_id"] == run_id and view["status"] == "canceled"
    assert view["reason"] == "canceled by request" and view["message"] == "The run was canceled"
    assert "webhook" not in view
    logged = [r for r in caplog.records if r.getMessage() == "run canceled: canceled by request"]
    assert len(logged) == 1 and logged[0].run_id == run_id  # type: ignore[attr-defined]
    async with asyncio.timeout(5):  # its generation is stopped here, not left to run
        while runs.is_running(run_id):
            await asyncio.sleep(0.01)
    async with api.get("/metrics") as response:
        assert 'sd_runs_total{status="canceled"} 1.0' in await response.text()
    async with api.post(f"/runs/{run_id}/cancel", headers=auth(OWNER)) as response:
        code, again = await answer(response)
    assert code == 409 and again["error"]["code"] == "run_finished" and again["error"]["run"]["status"] == "canceled"
    async with api.get(f"/runs/{run_id}", headers=auth(OTHER)) as response:
        assert await answer(response) == (404, not_found(run_id))


async def test_a_webhook_runs_view_and_cancel_show_its_delivery(api: Api, backend: ScriptedBackend) -> None:
    run_id = await start_held_run(api, backend, webhook_endpoint="http://127.0.0.1:9/hook")
    async with api.post(f"/runs/{run_id}/cancel", headers=auth(OWNER)) as response:
        code, view = await answer(response)
    assert code == 200 and view["status"] == "canceled"
    assert view["webhook"]["status"] == "pending" and view["webhook"]["attempts"] == 0
    async with api.get(f"/runs/{run_id}", headers=auth(OWNER)) as response:
        assert "webhook" in await response.json()
    # What its webhook will carry, and what a synchronous caller's outcome shows.
    run = await api.server.app[STORE].get_run(run_id, key_hash(OWNER))
    assert run is not None
    assert run.body == {"run_id": run_id, "message": "The run was canceled", "reason": "canceled by request"}
    recorded = await api.server.app[RUNS]._finished_answer(run_id, key_hash(OWNER))
    assert recorded is not None
    status, outcome = recorded
    assert status == 409 and outcome["error"]["run"]["webhook"]["status"] == "pending"


async def test_another_key_cannot_follow_a_runs_events(api: Api, backend: ScriptedBackend) -> None:
    run_id = await start_held_run(api, backend)
    for run in (run_id, UNKNOWN):
        async with api.get(f"/runs/{run}/events", headers=auth(OTHER)) as response:
            assert await answer(response) == (404, not_found(run))
    backend.release.set()
    async with api.get(f"/runs/{run_id}/events", headers={**auth(OWNER), "Last-Event-ID": "1"}) as response:
        assert response.status == 200
        text = (await response.read()).decode()
    # Only what the client has not seen (after id 1), up to the final event with the run's view.
    assert "id: 1\n" not in text and "id: 2\nevent: processing" in text
    assert "id: 3\nevent: succeeded" in text and '"seeds": [120]' in text


async def test_an_idempotency_key_is_the_calling_keys_alone(api: Api, backend: ScriptedBackend) -> None:
    """The first request still running: the same key again is 409 with Retry-After; once it ends, the same
    key replays its answer. Another API key with the same Idempotency-Key sees none of it: it generates."""
    headers = {**auth(OWNER), "Idempotency-Key": "order-17"}
    first = asyncio.create_task(predict(api, body(prompt="hold"), headers=headers))
    async with asyncio.timeout(5):
        while not backend.jobs:
            await asyncio.sleep(0.01)
    status, in_use, response_headers = await predict(api, body(prompt="hold"), headers=headers)
    assert (status, in_use["error"]["code"], response_headers["Retry-After"]) == (409, "idempotency_key_in_use", "1")
    assert in_use["error"]["param"] == "Idempotency-Key" and "still running" in in_use["error"]["message"]
    backend.release.set()
    status, done, _ = await first
    assert status == 200
    status, replayed, response_headers = await predict(api, body(prompt="hold"), headers=headers)
    assert (status, replayed, response_headers["Idempotent-Replayed"]) == (200, done, "true")
    jobs = len(backend.jobs)
    status, theirs, response_headers = await predict(
        api, body(prompt="hold"), headers={**auth(OTHER), "Idempotency-Key": "order-17"}
    )
    assert status == 200 and theirs["run_id"] != done["run_id"] and "Idempotent-Replayed" not in response_headers
    assert len(backend.jobs) == jobs + 1  # generated for the other key, not replayed
    status, reused, _ = await predict(api, body(prompt="hold", seed=7), headers=headers)
    assert (status, reused["error"]["code"], reused["error"]["param"]) == (
        422,
        "idempotency_key_reused",
        "Idempotency-Key",
    )


async def test_a_replay_whose_answer_was_not_recorded_comes_from_the_runs_record(api: Api) -> None:
    """The first request's replica died before it recorded its answer: a repeat reads the run's record, for
    that key only; while the run is unfinished the key is still in use."""
    runs, store = api.server.app[RUNS], api.server.app[STORE]
    owner = key_hash(OWNER)
    await store.create_run("run-r", owner, {"prompt": "a cat"}, None, None, owner="gone", lease_s=60)
    assert await runs.idempotency.claim(owner, "k", "fp", "run-r") is None
    first = await runs.idempotency.claim(owner, "k", "fp", "run-x")
    assert first is not None and first.run_id == "run-r"
    with pytest.raises(Exception) as in_use:
        await runs.idempotency.replay(owner, "k", first, "fp")
    assert getattr(in_use.value, "code", None) == "idempotency_key_in_use"
    assert await runs._finished_answer("run-r", owner) is None  # unfinished: nothing to replay yet
    await runs.cancel("run-r", owner, reason="stopped for the test")
    status, replayed = await runs.idempotency.replay(owner, "k", first, "fp")
    error = json.loads(replayed)["error"]
    assert (status, error["code"], error["message"]) == (
        409,
        "run_canceled",
        "run run-r was canceled: stopped for the test",
    )
    assert error["run"]["run_id"] == "run-r" and error["run"]["status"] == "canceled"
    assert await runs._finished_answer("run-r", owner) is not None
    assert await runs._finished_answer("run-r", key_hash(OTHER)) is None  # another key's run: nothing
    with pytest.raises(NotFound):
        await runs.cancel("run-r", key_hash(OTHER))
    assert await runs.view("run-r", key_hash(OTHER)) is None


async def test_an_expired_result_is_410_for_its_owner_and_404_for_another_key(api: Api, settings: Settings) -> None:
    status, done, _ = await predict(api, body(), headers=auth(OWNER))
    run_id = done["run_id"]
    await api.server.app[STORE].expire(
        now=time.time() + settings.result_ttl_s + 10, result_ttl_s=settings.result_ttl_s, run_ttl_s=10**9
    )
    async with api.get(f"/runs/{run_id}", headers=auth(OWNER)) as response:
        code, gone = await answer(response)
    assert code == 410 and gone["error"]["code"] == "result_expired" and gone["error"]["param"] == "run_id"
    assert gone["error"]["message"] == (
        f"the result of run {run_id} was deleted {settings.result_ttl_s:g} s after it finished (SD_RESULT_TTL_S);"
        " send the request again with the same seed for the same images"
    )
    assert gone["run_id"] == run_id and gone["status"] == "succeeded" and gone["result_expired_at"] > time.time()
    async with api.get(f"/runs/{run_id}", headers=auth(OTHER)) as response:
        assert await answer(response) == (404, not_found(run_id))


def run_of(status: RunStatus, body: dict[str, Any] | None) -> Run:
    return Run("run-1", "k", status, 1.0, 2.0, 3.0, {}, None, None, body)


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (RunStatus.SUCCEEDED, {"run_id": "run-1", "result": ["x"]}, (200, {"run_id": "run-1", "result": ["x"]})),
        (RunStatus.SUCCEEDED, None, (500, "internal_error")),
        (RunStatus.CANCELED, {"reason": "canceled by request"}, (409, "run_canceled")),
        (RunStatus.ABORTED, {"reason": "its Cancel-After passed"}, (409, "run_aborted")),
        (RunStatus.CANCELED, None, (409, "run_canceled")),
        (RunStatus.CANCELED, {"reason": "stopped by operator X"}, (409, "run_canceled")),  # a reason is kept whole
        (RunStatus.FAILED, {"run_id": "run-1", "error": {"code": "backend_timeout"}}, (504, "backend_timeout")),
        (RunStatus.FAILED, {"run_id": "run-1", "error": {"code": "no_such_code"}}, (500, "no_such_code")),
        (RunStatus.FAILED, {"run_id": "run-1"}, (500, None)),
    ],
)
def test_a_finished_runs_answer_to_its_synchronous_caller(
    status: RunStatus, body: dict[str, Any] | None, expected: tuple[int, Any]
) -> None:
    from frontend.runs.service import answer_of

    view = {"run_id": "run-1", "status": str(status)}
    code, payload = answer_of(run_of(status, body), view)
    if isinstance(expected[1], dict):
        assert (code, payload) == expected
        return
    assert code == expected[0]
    assert payload.get("error", {}).get("code") == expected[1]
    if status in (RunStatus.CANCELED, RunStatus.ABORTED):
        reason = (body or {}).get("reason")
        message = f"run run-1 was {status}" + (f": {reason}" if reason else "")
        assert payload["error"]["message"] == message and payload["error"]["run"] == view
    if status == RunStatus.SUCCEEDED:
        assert payload == {"run_id": "run-1", "error": {"code": "internal_error", "message": "no answer recorded"}}


@pytest.mark.parametrize("path", sorted({"/healthz", "/readyz", "/metrics", "/openapi.json", *PLAYGROUND_PATHS}))
async def test_public_paths_need_no_key_and_every_other_path_does(api: Api, path: str) -> None:
    async with api.get(path) as response:
        assert response.status == 200, path
    private = path.rstrip("/") + "x" if path != "/" else "/runs"
    async with api.get(private) as response:
        assert (response.status, response.headers["WWW-Authenticate"]) == (401, "Bearer"), private
        assert await response.json() == {"error": {"code": "unauthorized", "message": MESSAGE_401, "param": None}}


@pytest.mark.parametrize("header", ["", "Bearer ", "sk-wrong", f"{OWNER}x", f"Basic {OWNER}"])
async def test_a_wrong_key_is_401_on_every_run_endpoint(api: Api, header: str) -> None:
    for method, path in (("GET", "/runs"), ("GET", f"/runs/{UNKNOWN}"), ("POST", f"/runs/{UNKNOWN}/cancel")):
        async with api.request(method, path, headers={"Authorization": header}) as response:
            assert response.status == 401, (header, path)
            assert (await response.json())["error"]["message"] == MESSAGE_401


async def test_each_key_lists_its_own_runs_only(api: Api) -> None:
    mine = [(await predict(api, body(seed=seed), headers=auth(OWNER)))[1]["run_id"] for seed in (1, 2)]
    theirs = (await predict(api, body(), headers=auth(OTHER)))[1]["run_id"]
    async with api.get("/runs", headers=auth(OWNER)) as response:
        assert [run["run_id"] for run in (await response.json())["runs"]] == mine[::-1]
    async with api.get("/runs", headers=auth(OTHER)) as response:
        assert [run["run_id"] for run in (await response.json())["runs"]] == [theirs]


async def test_a_replay_reads_only_the_calling_keys_run(api: Api) -> None:
    """An Idempotency-Key record names a run; a replay reads that run for the key that repeats the request,
    never for another (a record pointing at another key's run replays nothing of it)."""
    runs, store = api.server.app[RUNS], api.server.app[STORE]
    mine, theirs = key_hash(OWNER), key_hash(OTHER)
    await store.create_run("run-t", theirs, {"prompt": "a cat"}, None, None, owner="gone", lease_s=60)
    await runs.cancel("run-t", theirs, reason="theirs")
    assert await runs.idempotency.claim(mine, "k", "fp", "run-t") is None
    first = await runs.idempotency.claim(mine, "k", "fp", "run-y")
    assert first is not None
    with pytest.raises(Exception) as in_use:
        await runs.idempotency.replay(mine, "k", first, "fp")
    assert getattr(in_use.value, "code", None) == "idempotency_key_in_use"


async def test_a_deadline_stop_is_recorded_as_aborted(api: Api) -> None:
    runs, store = api.server.app[RUNS], api.server.app[STORE]
    owner = key_hash(OWNER)
    await store.create_run("run-d", owner, {"prompt": "a cat"}, None, None, owner="gone", lease_s=60)
    view, stopped = await runs.cancel("run-d", owner, status=RunStatus.ABORTED, reason="its Cancel-After passed")
    assert stopped and view["status"] == "aborted"
    assert view["message"] == "The run was aborted: its Cancel-After passed before it reached the model"


# -- a synchronous caller's answer (RunService.answer): as its task ended here, else as recorded, for its key only --
async def ended(outcome: Any) -> asyncio.Task[dict[str, Any]]:
    """A finished task: it returned ``outcome``, or raised it (an exception), or was cancelled (``None``)."""

    async def work() -> dict[str, Any]:
        if outcome is None:
            await asyncio.sleep(3600)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    task = asyncio.create_task(work())
    if outcome is None:
        await asyncio.sleep(0)
        task.cancel()
    await asyncio.wait({task})
    return task


async def test_a_synchronous_callers_answer_is_its_tasks_when_the_task_ended_here(api: Api) -> None:
    runs = api.server.app[RUNS]
    assert await runs.answer(await ended({"run_id": "r", "result": ["x"]}), key_hash(OWNER), "r") == (
        200,
        {"run_id": "r", "result": ["x"]},
    )
    busy = BackendUnavailable("the model's queue is full; retry later", retry_after_s=7)
    with pytest.raises(BackendUnavailable) as raised:  # as it happened, Retry-After and all; not the record's
        await runs.answer(await ended(busy), key_hash(OWNER), "no-such-run")
    assert raised.value is busy and raised.value.headers == {"Retry-After": "7"}


async def test_a_stopped_or_taken_over_runs_answer_is_its_record_for_its_own_key_only(api: Api) -> None:
    runs, store, owner = api.server.app[RUNS], api.server.app[STORE], key_hash(OWNER)
    await store.create_run("run-s", owner, {"prompt": "a cat"}, None, None, owner="here", lease_s=60)
    await runs.cancel("run-s", owner, reason="stopped for the test")
    for ending in (RunStopped("run-s", RunStatus.CANCELED), RunTakenOver("run-s"), RuntimeError("a bug"), None):
        status, payload = await runs.answer(await ended(ending), owner, "run-s")
        assert (status, payload["error"]["code"]) == (409, "run_canceled"), ending
        assert payload["error"]["message"] == "run run-s was canceled: stopped for the test"
        # Another key's run is no answer of theirs: to them it was never recorded.
        with pytest.raises(RunTakenOver) as theirs:
            await runs.answer(await ended(ending), key_hash(OTHER), "run-s")
        assert "run-s" in theirs.value.message


async def test_a_run_not_final_yet_answers_taken_over_never_no_answer_recorded(api: Api) -> None:
    """Taken over by another replica and still running there, or its task cut short here (a shutdown): the
    caller is told where it stands (503, the run id), not a 500 read off an unfinished record."""
    runs, store, owner = api.server.app[RUNS], api.server.app[STORE], key_hash(OWNER)
    await store.create_run("run-u", owner, {"prompt": "a cat"}, None, None, owner="elsewhere", lease_s=60)
    taken = RunTakenOver("run-u")
    with pytest.raises(RunTakenOver) as raised:
        await runs.answer(await ended(taken), owner, "run-u")
    assert raised.value is taken
    for ending in (None, RuntimeError("a bug"), RunStopped("run-u", RunStatus.CANCELED)):
        with pytest.raises(RunTakenOver) as raised:
            await runs.answer(await ended(ending), owner, "run-u")
        assert raised.value.status == 503 and "run run-u was taken over" in raised.value.message, ending
    # Once it is final there, its record is the answer.
    await store.stop_run("run-u", None, RunStatus.CANCELED, {"run_id": "run-u", "reason": "done there"})
    status, payload = await runs.answer(await ended(taken), owner, "run-u")
    assert (status, payload["error"]["message"]) == (409, "run run-u was canceled: done there")
