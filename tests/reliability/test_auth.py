"""Group 6, auth: wrong, missing, malformed and revoked keys get a JSON 401; one key cannot see another
key's runs (404, the same answer as for a run that does not exist). The key check's timing is a
benchmark (``python -m bench.auth_timing``); tests/unit/test_auth.py checks constant time by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..helpers.support import API_KEYS, Frontend
from .corpus import error_shape_problem, raw_request, valid_body
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "auth"
RIGHT = API_KEYS[0]

# (name, raw Authorization header line or None for none): all must get 401 with our JSON error.
BAD_HEADERS: list[tuple[str, bytes | None]] = [
    ("missing", None),
    ("empty", b"Authorization: "),
    ("whitespace only", b"Authorization:    "),
    ("'Bearer' alone", b"Authorization: Bearer"),
    ("'Bearer ' and nothing", b"Authorization: Bearer "),
    ("'Bearer x'", b"Authorization: Bearer x"),
    ("wrong key", b"Authorization: sk-test-wrong-0123456789"),
    ("right key but the last character", b"Authorization: " + RIGHT[:-1].encode()),
    ("right key plus a character", b"Authorization: " + RIGHT.encode() + b"x"),
    ("right key upper-cased", b"Authorization: " + RIGHT.upper().encode()),
    ("right key twice", b"Authorization: " + RIGHT.encode() + b"," + RIGHT.encode()),
    ("'Bearer Bearer <key>'", b"Authorization: Bearer Bearer " + RIGHT.encode()),
    ("'Basic' scheme", b"Authorization: Basic " + RIGHT.encode()),
    ("key in X-API-Key instead", b"X-API-Key: " + RIGHT.encode()),
    ("very long (4 KiB)", b"Authorization: " + b"k" * 4096),
    ("non-ASCII (UTF-8)", "Authorization: sk-тест-ключ-🔑".encode()),
    ("invalid UTF-8 bytes", b"Authorization: sk-\xff\xfe\xc3"),
    ("Latin-1 byte", b"Authorization: sk-caf\xe9"),
]


def problem(status: int, answer: Any, headers: dict[str, str]) -> str | None:
    if status != 401:
        return f"status {status}: {str(answer)[:120]}"
    shape = error_shape_problem(answer)
    if shape is not None:
        return shape
    if answer["error"]["code"] != "unauthorized":
        return f"code {answer['error']['code']}"
    if "www-authenticate" not in headers:
        return "no WWW-Authenticate header"
    return None


async def test_bad_keys_get_401_with_our_json_error(frontend: Frontend, figures: Figures) -> None:
    body = valid_body()
    problems: dict[str, str] = {}
    tried = 0
    for name, header in BAD_HEADERS:
        for head in (b"POST /predict HTTP/1.1", b"GET /runs/00000000-0000-0000-0000-000000000000 HTTP/1.1"):
            lines = head + (b"\r\n" + header if header is not None else b"")
            payload = body if head.startswith(b"POST") else b""
            lines += b"\r\nContent-Type: application/json" if payload else b""
            answer = await raw_request(frontend.port, lines, payload)
            tried += 1
            why = problem(answer.status, answer.json(), answer.headers)
            if why is not None:
                problems[f"{name} ({head.split()[0].decode()})"] = why
    # Beyond aiohttp's 8 KiB header-field limit the HTTP parser itself answers, before our code runs.
    huge = await raw_request(frontend.port, b"POST /predict HTTP/1.1\r\nAuthorization: " + b"k" * 16384, body)
    # Checked before the body is read: a wrong key with a body over SD_MAX_BODY_BYTES is a 401, not a 413.
    big = await raw_request(frontend.port, b"POST /predict HTTP/1.1\r\nAuthorization: nope", b"x" * (21 * 1024 * 1024))
    big_problem = problem(big.status, big.json(), big.headers)
    # With the right key the same raw requests work (the harness can tell good from bad).
    good = await raw_request(frontend.port, b"POST /predict HTTP/1.1\r\nAuthorization: Bearer " + RIGHT.encode(), body)

    figures.add(GROUP, "malformed/wrong/missing key cases x 2 routes", tried, note=", ".join(n for n, _ in BAD_HEADERS))
    figures.add(
        GROUP,
        "cases not answered 401 + JSON error + WWW-Authenticate",
        len(problems),
        expected="0",
        met=not problems,
        note="; ".join(f"{k}: {v}" for k, v in problems.items()),
    )
    figures.add(
        GROUP,
        "wrong key + 21 MiB body (over SD_MAX_BODY_BYTES)",
        big.status,
        expected="401 (the key is checked before the body is read)",
        met=big_problem is None,
    )
    figures.add(
        GROUP,
        "Authorization header of 16 KiB",
        f"{huge.status} {huge.headers.get('content-type', '')}",
        expected="4xx",
        met=400 <= huge.status < 500,
        note="over aiohttp's 8 KiB header-field limit: its HTTP parser answers 400 in plain text, before our code",
    )
    figures.add(
        GROUP, "right key as 'Bearer <key>', same raw client", good.status, expected="200", met=good.status == 200
    )
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert big_problem is None, big_problem
    assert 400 <= huge.status < 500
    assert good.status == 200


async def _create_run(session: aiohttp.ClientSession, frontend: Frontend, key: str) -> str:
    headers = {"Authorization": key, "Content-Type": "application/json"}
    async with session.post(f"{frontend.url}/predict", data=valid_body(), headers=headers) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["run_id"])


async def _get_run(session: aiohttp.ClientSession, frontend: Frontend, run_id: str, key: str) -> tuple[int, Any]:
    async with session.get(f"{frontend.url}/runs/{run_id}", headers={"Authorization": key}) as response:
        return response.status, await response.json(content_type=None)


async def test_a_key_cannot_see_another_keys_run_and_revoked_keys_get_401(
    make_frontend: Callable[..., Frontend], figures: Figures, tmp_path: Path
) -> None:
    alpha, beta = API_KEYS
    data_dir = tmp_path / "shared"
    first = make_frontend(data_dir=data_dir)
    async with aiohttp.ClientSession() as session:
        alpha_run = await _create_run(session, first, alpha)
        beta_run = await _create_run(session, first, beta)
        own = (await _get_run(session, first, alpha_run, alpha))[0]
        other_status, other = await _get_run(session, first, alpha_run, beta)
        missing_status, missing = await _get_run(session, first, "00000000-0000-0000-0000-000000000000", beta)
        # The two 404s differ only in the id they echo: nothing tells "exists, not yours" from "no such run".
        same_shape = (
            other_status == missing_status == 404
            and other["error"]["message"].replace(alpha_run, "ID")
            == missing["error"]["message"].replace("00000000-0000-0000-0000-000000000000", "ID")
            and other["error"]["code"] == missing["error"]["code"]
            and other["error"]["param"] == missing["error"]["param"]
        )
        first.stop()

        # Rotate: restart on the same data with alpha removed from SD_API_KEYS.
        second = make_frontend(data_dir=data_dir, SD_API_KEYS=beta)
        revoked_get, revoked_answer = await _get_run(session, second, alpha_run, alpha)
        headers = {"Authorization": alpha, "Content-Type": "application/json"}
        async with session.post(f"{second.url}/predict", data=valid_body(), headers=headers) as response:
            revoked_post, revoked_post_answer = response.status, await response.json(content_type=None)
        remaining_get = (await _get_run(session, second, beta_run, beta))[0]
        remaining_post = await _create_run(session, second, beta)

    figures.add(GROUP, "GET own run", own, expected="200", met=own == 200)
    figures.add(
        GROUP,
        "GET another key's run",
        other_status,
        expected="404, identical to an unknown id's answer (existence not revealed)",
        met=same_shape,
        note=f"answer: {other['error']}",
    )
    revoked_ok = (
        revoked_get == revoked_post == 401
        and error_shape_problem(revoked_answer) is None
        and error_shape_problem(revoked_post_answer) is None
    )
    figures.add(
        GROUP,
        "revoked key (removed from SD_API_KEYS, restarted): GET its run / POST /predict",
        [revoked_get, revoked_post],
        expected="401, 401 (JSON error)",
        met=revoked_ok,
    )
    figures.add(
        GROUP,
        "remaining key after the restart: GET its run / POST /predict",
        [remaining_get, 200 if remaining_post else 0],
        expected="200, 200",
        met=remaining_get == 200,
    )
    assert own == 200
    assert same_shape, (other, missing)
    assert revoked_ok, (revoked_get, revoked_answer, revoked_post, revoked_post_answer)
    assert remaining_get == 200
