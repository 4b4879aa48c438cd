"""Group 1, hostile input: a kept corpus of named nasty requests, and a fuzzer driven by /openapi.json.

Expected: every hostile request gets a 4xx in our error shape (valid-but-unusual images may get 200),
never a 5xx; the frontend's memory stays bounded; it still answers a valid request with 200 afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from ..helpers.support import API_KEYS, Frontend, request_body
from .conftest import Scale
from .corpus import Case, corpus, error_shape_problem, valid_body
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "hostile_input"
MAX_BODY_BYTES = 20 * 1024 * 1024  # the defaults: the corpus runs against an unconfigured frontend
MAX_IMAGE_BYTES = 15 * 1024 * 1024
FAST_FETCH = {"SD_FETCH_TOTAL_TIMEOUT_S": "1", "SD_FETCH_CONNECT_TIMEOUT_S": "0.5"}
MIB = 1024 * 1024


class RssSampler:
    """Samples a process's RSS every few ms in a thread, to catch the peak between before and after."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        value = int(self.process.memory_info().rss)
        self.peak = max(self.peak, value)
        return value

    @contextmanager
    def sampling(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(0.005):
                self.rss()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()


async def send(session: aiohttp.ClientSession, frontend: Frontend, case: Case) -> tuple[int, Any]:
    skip = set() if "Content-Type" in case.headers else {"Content-Type"}
    async with session.request(
        case.method,
        f"{frontend.url}{case.path}",
        data=request_body(case.make()),
        headers=case.headers,
        skip_auto_headers=skip,
    ) as response:
        raw = await response.read()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, {"raw": raw[:200].decode("latin-1")}


async def valid_request_status(frontend: Frontend) -> int:
    async with (
        aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as session,
        session.post(f"{frontend.url}/predict", data=valid_body()) as response,
    ):
        return response.status


def problem_with(case: Case, status: int, answer: Any) -> str | None:
    if status not in case.expect:
        return f"status {status} not in {case.expect[:3]}{'...' if len(case.expect) > 3 else ''}: {str(answer)[:160]}"
    if 400 <= status < 500:
        shape = error_shape_problem(answer)
        if shape is not None:
            return shape
        if case.code is not None and answer["error"]["code"] != case.code:
            return f"code {answer['error']['code']!r}, expected {case.code!r}"
    if case.check is not None:
        return case.check(status, answer)
    return None


async def test_corpus_gets_4xx_in_our_shape_with_bounded_memory(
    make_frontend: Callable[..., Frontend], figures: Figures, scale: Scale
) -> None:
    frontend = make_frontend(**FAST_FETCH)
    assert frontend.process is not None
    cases = corpus(MAX_BODY_BYTES, MAX_IMAGE_BYTES)
    rounds = scale.count(1, 4)
    sampler = RssSampler(frontend.process.pid)
    assert await valid_request_status(frontend) == 200  # warm: the model and the code paths are loaded
    before = sampler.rss()
    statuses: Counter[int] = Counter()
    problems: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    after_first_round = 0
    started = time.monotonic()
    with sampler.sampling():
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as session:
            for round_index in range(rounds):
                for case in cases:
                    status, answer = await send(session, frontend, case)
                    statuses[status] += 1
                    problem = problem_with(case, status, answer)
                    if problem is not None:
                        problems[case.name] = problem
                    code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
                    outcomes[case.name] = f"{status} {code}" if code else str(status)
                if round_index == 0:
                    after_first_round = sampler.rss()
    elapsed = time.monotonic() - started
    after = sampler.rss()
    valid_after = await valid_request_status(frontend)

    tried = len(cases) * rounds
    five_xx = sum(n for s, n in statuses.items() if s >= 500)
    four_xx = sum(n for s, n in statuses.items() if 400 <= s < 500)
    weird = [case for case in cases if case.weird]
    figures.add(GROUP, "corpus: named cases x rounds", f"{len(cases)} x {rounds} = {tried}", note=f"{elapsed:.1f} s")
    figures.add(GROUP, "corpus: 4xx answers", four_xx, note="the rest: 200s of valid-but-unusual cases")
    figures.add(GROUP, "corpus: 5xx answers", five_xx, expected="0", met=five_xx == 0)
    figures.add(GROUP, "corpus: statuses", {str(s): n for s, n in sorted(statuses.items())})
    figures.add(
        GROUP,
        "corpus: cases with an unexpected answer",
        len(problems),
        expected="0 (status, error shape, code, and image size where checked)",
        met=not problems,
        note="; ".join(f"{name}: {why}" for name, why in problems.items()),
    )
    for case in weird:
        figures.add(GROUP, f"corpus (valid but unusual): {case.name}", outcomes[case.name], note="status [error code]")
    exif = outcomes["EXIF-rotated JPEG (64x32, orientation 6)"]
    figures.add(
        GROUP, "EXIF orientation 6 applied (64x32 stored, 32x64 answered)", exif, expected="200", met=exif == "200"
    )
    growth = (after - before) / MIB
    figures.add(
        GROUP, "corpus: frontend RSS before / after / peak MiB", [before / MIB, after / MIB, sampler.peak / MIB]
    )
    figures.add(GROUP, "corpus: RSS growth MiB (after - before)", growth, expected="< 100", met=growth < 100)
    peak_over = (sampler.peak - before) / MIB
    figures.add(
        GROUP,
        "corpus: RSS peak over before, MiB",
        peak_over,
        expected="< 400 (bodies up to 20 MiB, bombs refused before decoding)",
        met=peak_over < 400,
    )
    if rounds > 1:
        steady = (after - after_first_round) / MIB
        figures.add(
            GROUP,
            f"corpus: RSS growth over rounds 2..{rounds}, MiB",
            steady,
            expected="< 32 (no leak per round)",
            met=steady < 32,
        )
    figures.add(GROUP, "corpus: valid request afterwards, status", valid_after, expected="200", met=valid_after == 200)

    listed = "\n".join(f"{name}: {why}" for name, why in problems.items())
    assert five_xx == 0, listed
    assert not problems, listed
    assert exif == "200"
    assert growth < 100 and peak_over < 400
    if rounds > 1:
        assert (after - after_first_round) / MIB < 32
    assert valid_after == 200


def _fuzz_strategy(schema: Any, image_b64: str) -> Any:
    """Cases from /openapi.json: /predict in both modes (half of them given a real image, so the
    model is reached too), and every operation, positive and negative."""
    auth = {"Authorization": API_KEYS[0]}
    predict = schema["/predict"]["POST"]
    predict_cases = st.one_of(
        predict.as_strategy(GenerationMode.POSITIVE, headers=auth),
        predict.as_strategy(GenerationMode.NEGATIVE, headers=auth),
    )

    def with_real_image(case: Any, give_image: bool) -> Any:
        if give_image and isinstance(case.body, dict):
            case.body["image"] = image_b64
            for name in ("scheduler", "webhook_endpoint"):  # random names: the answer would always be a 422
                case.body.pop(name, None)
            # The default of 50 steps is over this frontend's bound, and int(steps * strength) is mostly 0 at
            # steps <= 3 unless strength is 1: either would make every such case a 422.
            case.body.setdefault("num_inference_steps", 2)
            case.body["strength"] = 1.0
        return case

    return st.one_of(
        st.builds(with_real_image, predict_cases, st.booleans()),
        schema.as_strategy(GenerationMode.POSITIVE, headers=auth),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=auth),
    )


async def test_fuzz_from_openapi_never_5xx(
    make_frontend: Callable[..., Frontend], figures: Figures, scale: Scale, image_b64: str
) -> None:
    # The schema's bounds follow these settings, so cases that reach the model stay cheap on CPU.
    frontend = make_frontend(SD_MAX_INFERENCE_STEPS="3", SD_MAX_IMAGES_PER_PROMPT="2", **FAST_FETCH)
    assert frontend.process is not None
    examples = scale.count(150, 1200)
    sampler = RssSampler(frontend.process.pid)
    schema = schemathesis.openapi.from_url(f"{frontend.url}/openapi.json")
    statuses: Counter[int] = Counter()
    by_operation: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    problems: list[str] = []
    http = requests.Session()

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=not scale.full,  # the fast subset is the same every run; full scale explores
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_fuzz_strategy(schema, image_b64))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=frontend.url, session=http, timeout=60)
        statuses[response.status_code] += 1
        by_operation[f"{case.method} {case.operation.path}"] += 1
        problem = None
        if response.status_code >= 500:
            problem = f"{response.status_code}"
        elif response.status_code >= 400:
            try:
                answer = response.json()
                problem = error_shape_problem(answer)
            except ValueError:
                problem = "not JSON"
            if problem is None:
                codes[f"{response.status_code} {answer['error']['code']} {answer['error']['param']}"] += 1
        if problem is not None and len(problems) < 20:
            body = str(case.body)[:200] if not isinstance(case.body, type(None)) else ""
            problems.append(f"{case.method} {case.formatted_path} {body} -> {problem}: {response.text[:200]}")

    before = sampler.rss()
    started = time.monotonic()
    with sampler.sampling():
        await asyncio.to_thread(fuzz)
    elapsed = time.monotonic() - started
    after = sampler.rss()
    valid_after = await valid_request_status(frontend)

    tried = sum(statuses.values())
    five_xx = sum(n for s, n in statuses.items() if s >= 500)
    four_xx = sum(n for s, n in statuses.items() if 400 <= s < 500)
    figures.add(
        GROUP,
        "fuzz (schemathesis, from /openapi.json): requests",
        tried,
        expected=f">= {examples}",
        met=tried >= examples,
        note=f"{elapsed:.1f} s; per operation: {dict(by_operation)}",
    )
    figures.add(GROUP, "fuzz: 4xx answers", four_xx)
    figures.add(GROUP, "fuzz: 4xx by status, code, param (top 8)", dict(codes.most_common(8)))
    figures.add(GROUP, "fuzz: 5xx answers", five_xx, expected="0", met=five_xx == 0)
    figures.add(GROUP, "fuzz: other statuses", {str(s): n for s, n in sorted(statuses.items()) if not 400 <= s < 500})
    figures.add(
        GROUP,
        "fuzz: answers not in our shape or 5xx",
        len(problems),
        expected="0",
        met=not problems,
        note="; ".join(problems[:5]),
    )
    growth = (after - before) / MIB
    figures.add(GROUP, "fuzz: frontend RSS before / after / peak MiB", [before / MIB, after / MIB, sampler.peak / MIB])
    figures.add(GROUP, "fuzz: RSS growth MiB", growth, expected="< 100", met=growth < 100)
    figures.add(GROUP, "fuzz: valid request afterwards, status", valid_after, expected="200", met=valid_after == 200)

    assert tried >= examples
    assert five_xx == 0 and not problems, "\n".join(problems)
    assert growth < 100
    assert valid_after == 200
