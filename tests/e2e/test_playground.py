"""The web playground in a real headless browser (Debian's chromium, driven by Playwright; ``make browser``)
against the real stack: a frontend process of its own (so its history is only these tests') in front of the
session's tritonserver. Every page must also run without a Content-Security-Policy violation or a script error.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from embedded.frontend_process import Frontend
from embedded.triton_server import EmbeddedTriton

from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FIREFOX = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
FIREFOX_CHECK = Path(__file__).parent / "firefox"  # smoke.mjs and its puppeteer-core (make browser installs it)
KEY = API_KEYS[1]
RESULT_TIMEOUT_MS = 90_000
INJECTION = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def site(paced_triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """On the paced model (PACE_MS a step): Cancel meets a running generation on any machine."""
    server = Frontend(tmp_path_factory.mktemp("playground"), paced_triton.grpc_url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"no browser at {CHROMIUM}: run `make browser` (Debian's chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, site: Frontend) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the playground, the schema applied; fails the test on any
    script error or CSP violation the page caused."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        # a fetch answered 4xx is logged as "Failed to load resource"; the page handles those
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"console error: {message.text}")

    tab.on("console", on_console)
    tab.goto(f"{site.url}/playground")
    tab.evaluate("() => window.playground.ready")
    yield tab
    context.close()
    assert not problems, problems


def field(page: Page, label: str) -> Any:
    return page.get_by_label(label, exact=True)


def fill_form(page: Page, image: Path, prompt: str, **fields: str) -> None:
    field(page, "API key").fill(KEY)
    field(page, "Image").set_input_files(str(image))
    field(page, "Prompt").fill(prompt)
    for label, value in {"Steps": "8", **fields}.items():
        field(page, label).fill(value)


def result_images(page: Page, count: int) -> list[str]:
    """The base64 of each result shown, once ``count`` are there."""
    results = page.get_by_role("img", name=re.compile(r"seed \d+"))
    expect(results).to_have_count(count, timeout=RESULT_TIMEOUT_MS)
    sources = [results.nth(i).get_attribute("src") or "" for i in range(count)]
    assert all(src.startswith("data:image/png;base64,") for src in sources), [s[:40] for s in sources]
    return [src.split(",", 1)[1] for src in sources]


def api(site: Frontend, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{site.url}{path}", headers={"Authorization": KEY}, timeout=60, **kwargs)


@pytest.fixture
def init_png(tmp_path: Path) -> Path:
    path = tmp_path / "init.png"
    path.write_bytes(png_bytes((64, 64), seed=5))
    return path


def test_generate_shows_the_image_with_its_seed_and_history_refills_the_form(
    page: Page, site: Frontend, init_png: Path, tmp_path: Path
) -> None:
    fill_form(page, init_png, "a red fox in the snow", Seed="1234")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("succeeded", timeout=RESULT_TIMEOUT_MS)
    (shown,) = result_images(page, 1)
    expect(page.get_by_role("img", name=re.compile(r"\bseed 1234\b"))).to_be_visible()
    # the page shows what the service made, byte for byte
    newest = api(site, "GET", "/runs", params={"limit": 1}).json()["runs"][0]
    run = api(site, "GET", f"/runs/{newest['run_id']}").json()
    assert run["result"] == [shown] and run["seeds"] == [1234]
    assert page.get_by_role("status").inner_text().count(newest["run_id"]) == 1

    history = page.get_by_role("region", name="History")
    entry = history.get_by_role("button", name=re.compile("a red fox in the snow"))
    expect(entry).to_have_count(1)
    expect(entry.locator("img")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    shot = Path(os.environ.get("SD_PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width >= 1000

    # a history entry refills the form it was made with
    field(page, "Prompt").fill("something else")
    field(page, "Seed").fill("7")
    entry.click()
    expect(field(page, "Prompt")).to_have_value("a red fox in the snow")
    expect(field(page, "Seed")).to_have_value("1234")
    expect(field(page, "Steps")).to_have_value("8")


def test_copy_as_curl_run_in_a_shell_returns_the_same_image_bytes(page: Page, site: Frontend, init_png: Path) -> None:
    fill_form(page, init_png, "a lighthouse at dusk", Seed="77", Strength="0.6")
    page.get_by_role("button", name="Generate", exact=True).click()
    (shown,) = result_images(page, 1)
    codes = {name: page.locator(f"#code-{name}").inner_text() for name in ("curl", "python", "cli")}
    for name, text in codes.items():
        assert KEY not in text, name
    assert '"Authorization: $SD_API_KEY"' in codes["curl"] and '--api-key "$SD_API_KEY"' in codes["cli"]
    assert 'os.environ["SD_API_KEY"]' in codes["python"]
    assert "Img2ImgClient" in codes["python"] and codes["cli"].startswith("img2img ")
    shell = subprocess.run(
        ["bash", "-c", codes["curl"]], env={**os.environ, "SD_API_KEY": KEY}, capture_output=True, timeout=120
    )
    assert shell.returncode == 0, shell.stderr.decode()[-2000:]
    answer = json.loads(shell.stdout)
    assert answer["message"] == "Successfully generated image" and answer["seeds"] == [77]
    assert answer["result"] == [shown]  # same form, same seed: the same bytes from a shell

    # the Python snippet and the CLI line, run where the chosen file is, save the same image
    venv = {**os.environ, "SD_API_KEY": KEY, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name, command in (("python", [sys.executable, "-c", codes["python"]]), ("cli", ["bash", "-c", codes["cli"]])):
        out = init_png.parent / name
        out.mkdir()
        shutil.copy(init_png, out / init_png.name)
        ran = subprocess.run(command, cwd=out, env=venv, capture_output=True, timeout=120)
        assert ran.returncode == 0, (name, ran.stderr.decode()[-2000:])
        (saved,) = out.glob("*_77.png")
        assert base64.b64encode(saved.read_bytes()).decode() == shown, name


def test_rerun_with_a_results_seed_makes_that_image_again(page: Page, init_png: Path) -> None:
    fill_form(page, init_png, "two boats", Seed="50", **{"Number of images": "2"})
    page.get_by_role("button", name="Generate", exact=True).click()
    first, second = result_images(page, 2)
    figure = page.locator("figure").filter(has=page.get_by_role("img", name=re.compile(r"\bseed 51\b")))
    figure.get_by_role("button", name="Re-run with this seed").click()
    expect(field(page, "Seed")).to_have_value("51")
    expect(field(page, "Number of images")).to_have_value("1")
    expect(page.get_by_role("img", name=re.compile(r"seed \d+"))).to_have_count(1, timeout=RESULT_TIMEOUT_MS)
    expect(page.get_by_role("img", name=re.compile(r"\bseed 51\b"))).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    (again,) = result_images(page, 1)
    assert again == second != first  # seed 51 alone is the second image of the batch, byte for byte


def test_a_bad_image_shows_the_servers_message_next_to_the_image_field(
    page: Page, site: Frontend, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all")
    fill_form(page, bad, "a cat")
    page.get_by_role("button", name="Generate", exact=True).click()
    direct = api(
        site, "POST", "/predict", json={"prompt": "a cat", "image": base64.b64encode(bad.read_bytes()).decode()}
    )
    error = direct.json()["error"]
    assert direct.status_code in (415, 422) and error["param"] == "image", error
    message = page.locator("#error-image")
    expect(message).to_have_text(error["message"], timeout=30_000)
    expect(field(page, "Image")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("img", name=re.compile(r"seed \d+"))).to_have_count(0)


def test_a_script_in_the_prompt_is_shown_as_text_and_runs_nothing(page: Page, init_png: Path) -> None:
    fill_form(page, init_png, INJECTION, Seed="3")
    field(page, "Prompt").press("Control+Enter")  # the keyboard submits too
    result_images(page, 1)
    history = page.get_by_role("region", name="History")
    expect(history.get_by_text(INJECTION)).to_have_count(1)
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator('img[src="x"]').count() == 0
    # quoted into the commands, never markup: JSON-escaped in curl's body, shell-quoted verbatim in the CLI line
    assert json.dumps(INJECTION) in page.locator("#code-curl").inner_text()
    assert f"'{INJECTION}'" in page.locator("#code-cli").inner_text()


def test_cancel_stops_a_running_generation(page: Page, init_png: Path) -> None:
    # 150 steps on the paced model: at least 6 s, long enough to cancel mid-denoise on any machine
    fill_form(page, init_png, "a long one", Steps="150", Strength="1", Seed="9")
    cancel = page.get_by_role("button", name="Cancel", exact=True)
    expect(cancel).to_be_disabled()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("processing", timeout=RESULT_TIMEOUT_MS)
    cancel.click()
    expect(page.get_by_role("status")).to_contain_text("canceled", timeout=30_000)
    expect(cancel).to_be_disabled()
    expect(page.get_by_role("img", name=re.compile(r"seed \d+"))).to_have_count(0)


def test_a_running_generation_shows_its_step_bar_and_a_live_preview(page: Page, init_png: Path) -> None:
    # 60 steps on the paced model: at least 2.4 s in the model, the steps seen as they are made
    fill_form(page, init_png, "watch it", Steps="60", Strength="1", Seed="11")
    page.get_by_role("button", name="Generate", exact=True).click()
    bar = page.get_by_role("progressbar")
    expect(page.locator("#progress-text")).to_contain_text(
        re.compile(r"step [1-9]\d* of 61"), timeout=RESULT_TIMEOUT_MS
    )
    first = int(bar.get_attribute("value") or 0)
    expect(page.get_by_role("img", name="Live preview of the running generation")).to_be_visible()
    src = page.get_by_role("img", name="Live preview of the running generation").get_attribute("src") or ""
    assert src.startswith("data:image/jpeg;base64,")
    page.wait_for_function(f"() => document.getElementById('progress-bar').value > {first}", timeout=30_000)
    expect(page.get_by_role("img", name=re.compile(r"seed 11"))).to_have_count(1, timeout=RESULT_TIMEOUT_MS)
    # Succeeded: every step was made, whether or not its last progress was seen (the run may end between
    # two polls), so the bar ends full rather than at "step 55 of 61".
    expect(page.locator("#progress-text")).to_have_text("done: step 61 of 61")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("61", "61")


def test_the_form_follows_the_api_schema(page: Page, site: Frontend) -> None:
    schema = requests.get(f"{site.url}/openapi.json", timeout=10).json()["components"]["schemas"]["PredictBody"]
    fields: dict[str, dict[str, str]] = page.evaluate("() => window.playground.FIELDS")
    omitted: list[str] = page.evaluate("() => window.playground.OMITTED")
    assert set(schema["properties"]) == set(fields) | set(omitted), "a schema field the page neither shows nor omits"
    assert not set(fields) & set(omitted)
    labels = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "image": "Image", "strength": "Strength"}
    labels |= {"num_inference_steps": "Steps", "seed": "Seed"}
    for name, label in labels.items():
        assert fields[name]["label"] == label
        expect(field(page, label)).to_have_count(1)
    for name in ("num_inference_steps", "guidance_scale", "num_images_per_prompt", "strength"):
        spec, control = schema["properties"][name], field(page, fields[name]["label"])
        expect(control).to_have_value(str(spec["default"]))
        bounds = {"min": spec.get("minimum"), "max": spec.get("maximum")}
        for attribute, bound in bounds.items():
            if bound is not None:
                assert float(control.get_attribute(attribute)) == bound, (name, attribute)
    assert field(page, "Steps").get_attribute("max") == "150"  # the service's setting, not a constant
    formats = field(page, "Output format").locator("option").all_inner_texts()
    assert [text.strip() for text in formats] == schema["properties"]["output_format"]["enum"]
    for name in ("Generate", "Cancel"):
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(1)


MODEL_FIELDS = ("Aesthetic score", "Negative aesthetic score")


def test_the_scheduler_is_a_list_of_what_the_served_model_accepts_and_its_fields_show_only_if_it_takes_them(
    page: Page, site: Frontend
) -> None:
    schema = requests.get(f"{site.url}/openapi.json", timeout=10).json()["components"]["schemas"]["PredictBody"]
    card = schema.get("x-model")
    assert card is not None and card["fields"] == [], "the tiny SD 1.x model posts its card (it takes no extra field)"
    scheduler = field(page, "Scheduler")
    assert scheduler.evaluate("(node) => node.tagName") == "SELECT"
    options = scheduler.locator("option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["", *card["schedulers"]]
    assert options.first.inner_text() == "model's default" and scheduler.input_value() == ""
    for label in MODEL_FIELDS:  # the model does not take them: not offered, not sent
        expect(field(page, label)).to_be_hidden()
    scheduler.select_option(card["schedulers"][-1])
    curl = page.locator("#code-curl").inner_text()
    body = json.loads(curl.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    assert body["scheduler"] == card["schedulers"][-1] and "aesthetic_score" not in body

    # Served by an SDXL refiner (its card in the document, as the model would post it): the scores are
    # offered, bounded by the schema, and sent, in the snippets too, only when filled in.
    def as_refiner(route: Route) -> None:
        document = route.fetch().json()
        document["components"]["schemas"]["PredictBody"]["x-model"] = {
            **card,
            "family": "sdxl-refiner",
            "title": "SDXL refiner",
            "schedulers": ["euler", "euler_a"],
            "fields": ["aesthetic_score", "negative_aesthetic_score"],
        }
        route.fulfill(json=document)

    page.route("**/openapi.json", as_refiner)
    page.reload()
    page.evaluate("() => window.playground.ready")
    options = field(page, "Scheduler").locator("option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["", "euler", "euler_a"]
    score = field(page, "Aesthetic score")
    expect(score).to_be_visible()
    assert (score.get_attribute("min"), score.get_attribute("max")) == ("0", "10")
    expect(field(page, "Negative aesthetic score")).to_be_visible()
    expect(score).to_have_value("")  # not given: the model's default
    score.fill("7.5")
    curl = page.locator("#code-curl").inner_text()
    body = json.loads(curl.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    assert body["aesthetic_score"] == 7.5 and "negative_aesthetic_score" not in body
    assert "aesthetic_score=7.5," in page.locator("#code-python").inner_text()
    assert "--aesthetic-score 7.5" in page.locator("#code-cli").inner_text()
    assert "--negative-aesthetic-score" not in page.locator("#code-cli").inner_text()


def test_the_key_stays_in_session_storage_never_in_the_url_or_a_cookie(page: Page, site: Frontend) -> None:
    field(page, "API key").fill(KEY)
    field(page, "API key").blur()
    assert page.evaluate("() => Object.values(sessionStorage)").count(KEY) == 1
    assert page.evaluate("() => Object.values(localStorage)") == []
    assert KEY not in page.url and page.context.cookies() == []
    page.reload()
    page.evaluate("() => window.playground.ready")
    expect(field(page, "API key")).to_have_value(KEY)


def test_a_large_image_is_downscaled_in_the_browser_to_the_services_side_limit(page: Page, tmp_path: Path) -> None:
    large = tmp_path / "wide.png"
    Image.new("RGB", (1600, 400), (200, 30, 30)).save(large)
    field(page, "Image").set_input_files(str(large))
    field(page, "Prompt").fill("wide")
    expect(page.get_by_text(re.compile(r"downscaled from 1600\s*[x×]\s*400"))).to_be_visible(timeout=10_000)
    curl = page.locator("#code-curl").inner_text()
    body = json.loads(curl.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    with Image.open(io.BytesIO(base64.b64decode(body["image"]))) as sent:
        assert sent.size == (1024, 256)


def test_the_page_works_in_firefox_too(site: Frontend, init_png: Path) -> None:
    """One generation in Debian's firefox-esr (WebDriver BiDi through puppeteer-core, ``firefox/smoke.mjs``)."""
    assert Path(FIREFOX).exists(), f"no browser at {FIREFOX}: run `make browser` (Debian's firefox-esr)"
    assert (FIREFOX_CHECK / "node_modules" / "puppeteer-core").is_dir(), (
        "run `make browser` (npm ci in tests/e2e/firefox)"
    )
    smoke = subprocess.Popen(
        ["node", "smoke.mjs", site.url, KEY, str(init_png), FIREFOX, "4242"],
        cwd=FIREFOX_CHECK,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = smoke.communicate(timeout=180)
    finally:
        if smoke.poll() is None:
            # firefox runs detached (its own process group) under node: stop the whole tree, not only node
            node = psutil.Process(smoke.pid)
            for process in [*node.children(recursive=True), node]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            smoke.communicate()
    assert smoke.returncode == 0, stderr[-3000:]
    seen = json.loads(stdout.strip().splitlines()[-1])
    assert seen["version"].startswith("firefox/") and seen["problems"] == [], seen["problems"]
    run_id = re.search(r"Run (\S+) · succeeded", seen["status"])
    assert run_id is not None, seen["status"]
    run = api(site, "GET", f"/runs/{run_id[1]}").json()
    assert run["seeds"] == [4242] and run["result"] == [seen["image"]]  # shown byte for byte
    assert any(entry.startswith("a fox in firefox") for entry in seen["history"]), seen["history"]
