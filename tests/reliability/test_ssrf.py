"""Group 2, SSRF: the whole corpus against ``file_url`` and ``webhook_endpoint``, with counting listeners.

The "denied" targets are real listeners (``Listener`` counts every TCP connection it accepts) on
loopback and the machine's own addresses; the frontends allow at most 127.0.0.1/32. Expected for every
case: a 4xx naming the field, no connection to any denied listener, and no timing difference between a
denied address with a listener and one without (no internal port scan through response times).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import signal
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from ..helpers.http import post, wait_for_run
from ..helpers.servers import Listener, WebhookReceiver, file_server_app, png_bytes
from ..helpers.support import Frontend, free_port
from .conftest import Scale
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "ssrf"
FIELDS = ("file_url", "webhook_endpoint")


def denied_app() -> web.Application:
    """Answers anything (a PNG): if the guard ever let a request through, the fetch or delivery would succeed."""

    async def anything(_: web.Request) -> web.Response:
        return web.Response(body=png_bytes(), content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def start_listener(host: str, port: int = 0) -> Listener | None:
    """A counting listener on ``host``, or None where this machine cannot bind it (no IPv6, say)."""
    try:
        return await Listener(denied_app(), host=host, port=port).start()
    except OSError:
        return None


def own_addresses() -> set[str]:
    """This machine's non-loopback addresses (the route to the outside; no packet is sent)."""
    found: set[str] = set()
    for family, probe in ((socket.AF_INET, "8.8.8.8"), (socket.AF_INET6, "2001:4860:4860::8888")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            found.add(sock.getsockname()[0].split("%")[0])
    return {a for a in found if not ipaddress.ip_address(a).is_loopback}


def resolves(name: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
    except (OSError, UnicodeError):
        return []


def hosts_file_names() -> set[str]:
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/etc/hosts").read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                names.update(parts[1:])
    return names


def body_for(field_name: str, url: str, image_b64: str) -> dict[str, Any]:
    if field_name == "file_url":
        return {"prompt": "x", "file_url": url, "num_inference_steps": 4}
    return {"prompt": "x", "image": image_b64, "num_inference_steps": 4, "webhook_endpoint": url}


@dataclass
class Outcome:
    tried: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    names_field: int = 0
    accepted_unresolvable: int = 0
    slowest_ms: float = 0.0
    wrong: list[str] = field(default_factory=list)


@pytest.fixture
async def loopback_listeners() -> AsyncIterator[dict[str, Listener]]:
    """Counting listeners on every local address we can bind: 127.0.0.1..3, ::1 and the machine's own."""
    started: dict[str, Listener] = {}
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "::1", *sorted(own_addresses())):
        listener = await start_listener(host)
        if listener is not None:
            started[host] = listener
    yield started
    for listener in started.values():
        await listener.stop()


def corpus(listeners: dict[str, Listener], image_b64: str) -> list[tuple[str, str]]:
    """(label, url) for every spelling and range; ports point at our listeners where one can receive."""
    p = listeners["127.0.0.1"].port
    p6 = listeners["::1"].port if "::1" in listeners else p
    cases = [
        ("127.0.0.1", f"http://127.0.0.1:{p}/x.png"),
        ("127.1", f"http://127.1:{p}/x.png"),
        ("127.0.1", f"http://127.0.1:{p}/x.png"),
        ("decimal 2130706433", f"http://2130706433:{p}/x.png"),
        ("hex 0x7f000001", f"http://0x7f000001:{p}/x.png"),
        ("octal 017700000001", f"http://017700000001:{p}/x.png"),
        ("octal dotted 0177.0.0.1", f"http://0177.0.0.1:{p}/x.png"),
        ("hex dotted 0x7f.0.0.1", f"http://0x7f.0.0.1:{p}/x.png"),
        ("0.0.0.0", f"http://0.0.0.0:{p}/x.png"),
        ("0", f"http://0:{p}/x.png"),
        ("127.0.0.2", f"http://127.0.0.2:{listeners['127.0.0.2'].port}/x.png"),
        ("[::1]", f"http://[::1]:{p6}/x.png"),
        ("[0:0:0:0:0:0:0:1]", f"http://[0:0:0:0:0:0:0:1]:{p6}/x.png"),
        ("IPv4-mapped [::ffff:127.0.0.1]", f"http://[::ffff:127.0.0.1]:{p}/x.png"),
        ("IPv4-mapped hex [::ffff:7f00:1]", f"http://[::ffff:7f00:1]:{p}/x.png"),
        ("NAT64 [64:ff9b::7f00:1]", f"http://[64:ff9b::7f00:1]:{p}/x.png"),
        ("6to4 [2002:7f00:1::]", f"http://[2002:7f00:1::]:{p}/x.png"),
        ("IPv4-compatible [::127.0.0.1]", f"http://[::127.0.0.1]:{p}/x.png"),
        ("unspecified [::]", f"http://[::]:{p6}/x.png"),
        ("fullwidth dots 127。0。0。1", f"http://127\u30020\u30020\u30021:{p}/x.png"),
        ("userinfo example.com@127.0.0.1", f"http://example.com@127.0.0.1:{p}/x.png"),
        ("localhost", f"http://localhost:{p}/x.png"),
        ("LOCALHOST", f"http://LOCALHOST:{p}/x.png"),
        ("localhost.", f"http://localhost.:{p}/x.png"),
        ("10/8", "http://10.0.0.1/x.png"),
        ("10/8 top", "http://10.255.255.254/x.png"),
        ("172.16/12", "http://172.16.0.1/x.png"),
        ("172.16/12 top", "http://172.31.255.254/x.png"),
        ("192.168/16", "http://192.168.0.1/x.png"),
        ("192.168/16 top", "http://192.168.255.254/x.png"),
        ("CGNAT 100.64/10", "http://100.64.0.1/x.png"),
        ("CGNAT top", "http://100.127.255.254/x.png"),
        ("fc00::/7", "http://[fc00::1]/x.png"),
        ("fd00::/8", "http://[fd12:3456::1]/x.png"),
        ("link-local 169.254/16", "http://169.254.0.1/x.png"),
        ("link-local fe80::", "http://[fe80::1]/x.png"),
        ("AWS/GCP/Azure metadata 169.254.169.254", "http://169.254.169.254/latest/meta-data/"),
        ("AWS IPv6 metadata fd00:ec2::254", "http://[fd00:ec2::254]/latest/meta-data/"),
        ("Alibaba metadata 100.100.100.200", "http://100.100.100.200/latest/meta-data/"),
        ("multicast 224.0.0.1", "http://224.0.0.1/x.png"),
        ("broadcast 255.255.255.255", "http://255.255.255.255/x.png"),
        ("file://", "file:///etc/passwd"),
        ("ftp://", f"ftp://127.0.0.1:{p}/x.png"),
        ("gopher://", f"gopher://127.0.0.1:{p}/_GET%20/%20HTTP/1.0"),
        ("dict://", f"dict://127.0.0.1:{p}/info"),
        ("ws://", f"ws://127.0.0.1:{p}/x"),
        ("data:", "data:image/png;base64," + image_b64[:64]),
        ("scheme-relative //127.0.0.1", f"//127.0.0.1:{p}/x.png"),
        ("no host http:///x", "http:///x.png"),
    ]
    for address, listener in listeners.items():
        if not ipaddress.ip_address(address).is_loopback:  # the machine's own (private) addresses
            host = f"[{address}]" if ":" in address else address
            cases.append((f"own address {address}", f"http://{host}:{listener.port}/x.png"))
    names = {socket.gethostname(), socket.getfqdn(), "metadata.google.internal", *hosts_file_names()}
    for name in sorted(names - {"localhost"}):
        addresses = resolves(name)
        if name == "metadata.google.internal" and not addresses:
            continue  # only where it resolves (on GCP)
        if addresses and all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
            continue
        cases.append((f"name {name} -> {','.join(addresses) or 'unresolvable'}", f"http://{name}:{p}/x.png"))
    return cases


async def test_ssrf_corpus_is_refused_for_both_fields_without_connecting(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    loopback_listeners: dict[str, Listener],
    image_b64: str,
    figures: Figures,
) -> None:
    # Nothing private allowed at all, so every loopback spelling of our 127.0.0.1 listener is a target.
    strict = make_frontend(SD_ALLOW_PRIVATE_NETWORKS="", SD_FETCH_CONNECT_TIMEOUT_S="2", SD_FETCH_TOTAL_TIMEOUT_S="4")
    cases = corpus(loopback_listeners, image_b64)
    outcomes = {name: Outcome() for name in FIELDS}
    accepted_runs: list[str] = []
    for field_name in FIELDS:
        outcome = outcomes[field_name]
        for label, url in cases:
            started = time.perf_counter()
            status, answer, _ = await post(http, strict, body_for(field_name, url, image_b64))
            outcome.slowest_ms = max(outcome.slowest_ms, (time.perf_counter() - started) * 1000)
            outcome.tried += 1
            outcome.status_4xx += 400 <= status < 500
            outcome.status_5xx += status >= 500
            error = answer.get("error") or {}
            if 400 <= status < 500 and error.get("param") == field_name:
                outcome.names_field += 1
            elif status == 202 and field_name == "webhook_endpoint" and not resolves(URL(url).host or ""):
                # Nothing can connect to a name that does not resolve; the connect-time guard still applies.
                outcome.accepted_unresolvable += 1
                accepted_runs.append(answer["run_id"])
            else:
                outcome.wrong.append(f"{label}: {status} {error or answer}")
    for run_id in accepted_runs:  # their deliveries ran (and failed) before we count the connections
        await wait_for_run(http, strict, run_id, "succeeded")
    await asyncio.sleep(1.0)  # several delivery polls
    connections = {host: listener.connections for host, listener in loopback_listeners.items()}

    for field_name, outcome in outcomes.items():
        expected_4xx = outcome.tried - outcome.accepted_unresolvable
        figures.add(GROUP, f"{field_name}: cases tried", outcome.tried)
        figures.add(
            GROUP,
            f"{field_name}: 4xx naming the field",
            outcome.names_field,
            expected=f"= {expected_4xx}",
            met=outcome.names_field == expected_4xx,
            note="; ".join(outcome.wrong),
        )
        figures.add(GROUP, f"{field_name}: 5xx", outcome.status_5xx, expected="0", met=outcome.status_5xx == 0)
        figures.add(GROUP, f"{field_name}: slowest refusal ms", round(outcome.slowest_ms, 1))
    figures.add(
        GROUP,
        "webhook_endpoint: accepted (name does not resolve here)",
        outcomes["webhook_endpoint"].accepted_unresolvable,
        note="a name that does not resolve at submit time is accepted; every delivery's connection is checked",
    )
    figures.add(
        GROUP,
        "corpus: connections to denied listeners",
        sum(connections.values()),
        expected="0",
        met=sum(connections.values()) == 0,
        note=f"listeners on {', '.join(connections)}",
    )
    for outcome in outcomes.values():
        assert not outcome.wrong, outcome.wrong
        assert outcome.status_5xx == 0
    assert sum(connections.values()) == 0, connections


async def test_redirects_from_an_allowed_host_to_denied_ones_never_connect(
    http: aiohttp.ClientSession,
    frontend: Frontend,
    loopback_listeners: dict[str, Listener],
    image_b64: str,
    figures: Figures,
) -> None:
    # The session frontend allows 127.0.0.1/32 only: the file server there is fine, 127.0.0.2+ are not.
    denied = {host: lst for host, lst in loopback_listeners.items() if host != "127.0.0.1"}
    d2, d3 = denied["127.0.0.2"].port, denied["127.0.0.3"].port
    targets = {
        "302 to 127.0.0.2": (302, f"http://127.0.0.2:{d2}/x.png"),
        "301 to 127.0.0.3": (301, f"http://127.0.0.3:{d3}/x.png"),
        "307 to decimal 2130706434": (307, f"http://2130706434:{d2}/x.png"),
        "308 to hex 0x7f000003": (308, f"http://0x7f000003:{d3}/x.png"),
        "302 to 127.2": (302, f"http://127.2:{d2}/x.png"),
        "302 to [::ffff:127.0.0.2]": (302, f"http://[::ffff:127.0.0.2]:{d2}/x.png"),
        "302 to 0.0.0.0": (302, f"http://0.0.0.0:{d2}/x.png"),
        "302 to metadata": (302, "http://169.254.169.254/latest/meta-data/"),
        "302 to 10.0.0.1": (302, "http://10.0.0.1/x.png"),
        "302 to file://": (302, "file:///etc/passwd"),
        "302 to gopher://": (302, f"gopher://127.0.0.2:{d2}/_x"),
    }
    if "::1" in denied:
        targets["302 to [::1]"] = (302, f"http://[::1]:{denied['::1'].port}/x.png")
    for address, listener in denied.items():
        if not ipaddress.ip_address(address).is_loopback:
            host = f"[{address}]" if ":" in address else address
            targets[f"302 to own address {address}"] = (302, f"http://{host}:{listener.port}/x.png")
    routes: dict[str, web.StreamResponse | bytes] = {"/image.png": png_bytes()}
    for index, (status, location) in enumerate(targets.values()):
        routes[f"/r{index}"] = web.Response(status=status, headers={"Location": location})
    routes["/chain1"] = web.HTTPFound("/chain2")
    routes["/chain2"] = web.HTTPFound(f"http://127.0.0.2:{d2}/x.png")
    routes["/ok"] = web.HTTPFound("/image.png")  # control: an allowed hop is followed
    files = await Listener(file_server_app(routes)).start()
    wrong: list[str] = []
    try:
        paths = [f"/r{index}" for index in range(len(targets))] + ["/chain1"]
        for label, path in zip([*targets, "chain 127.0.0.1 -> 127.0.0.1 -> 127.0.0.2"], paths, strict=True):
            status, answer, _ = await post(http, frontend, body_for("file_url", f"{files.base}{path}", image_b64))
            if status != 422 or answer["error"]["param"] != "file_url":
                wrong.append(f"{label}: {status} {answer}")
        control, answer, _ = await post(http, frontend, body_for("file_url", f"{files.base}/ok", image_b64))
        assert control == 200, answer  # the harness can tell a followed redirect from a refused one

        # Webhooks never follow redirects: a receiver on the allowed host answering 30x to a denied one.
        receiver = WebhookReceiver(fail_statuses=[302, 307], headers={"Location": f"http://127.0.0.2:{d2}/hook"})
        hook = await Listener(receiver.app()).start()
        try:
            body = body_for("webhook_endpoint", f"{hook.base}/hook", image_b64)
            status, accepted, _ = await post(http, frontend, body)
            assert status == 202, accepted
            await receiver.wait_delivered()
        finally:
            await hook.stop()
    finally:
        await files.stop()
    connections = sum(listener.connections for listener in denied.values())
    cases = len(targets) + 1
    figures.add(GROUP, "redirects: file_url cases tried", cases)
    figures.add(
        GROUP,
        "redirects: file_url 422 naming the field",
        cases - len(wrong),
        expected=f"= {cases}",
        met=not wrong,
        note="; ".join(wrong),
    )
    webhook_statuses = [s for _, _, s in receiver.received]
    figures.add(
        GROUP,
        "redirects: webhook 30x answers treated as failures (not followed)",
        webhook_statuses,
        expected="302, 307, 200",
        met=webhook_statuses == [302, 307, 200],
    )
    figures.add(GROUP, "redirects: connections to denied listeners", connections, expected="0", met=connections == 0)
    assert not wrong, wrong
    assert webhook_statuses == [302, 307, 200]
    assert connections == 0


async def test_blocked_addresses_answer_alike_whether_or_not_something_listens(
    http: aiohttp.ClientSession,
    frontend: Frontend,
    loopback_listeners: dict[str, Listener],
    image_b64: str,
    scale: Scale,
    figures: Figures,
) -> None:
    open_port = loopback_listeners["127.0.0.2"].port
    closed_port = free_port()  # nothing listens there on any loopback address
    variants = {
        "denied, listener open": f"http://127.0.0.2:{open_port}/x.png",
        "denied, nothing listening": f"http://127.0.0.2:{closed_port}/x.png",
        "denied, unroutable 10.255.255.1": "http://10.255.255.1:81/x.png",
        "allowed, nothing listening": f"http://127.0.0.1:{closed_port}/x.png",
    }
    rounds = scale.count(15, 60)
    timings: dict[tuple[str, str], list[float]] = {}
    messages: dict[tuple[str, str], set[str]] = {}
    for _ in range(rounds):
        for field_name in FIELDS:
            for label, url in variants.items():
                if field_name == "webhook_endpoint" and label.startswith("allowed"):
                    continue  # it would be accepted (202) and run: not a refusal to compare
                started = time.perf_counter()
                status, answer, _ = await post(http, frontend, body_for(field_name, url, image_b64))
                timings.setdefault((field_name, label), []).append((time.perf_counter() - started) * 1000)
                assert 400 <= status < 500 and answer["error"]["param"] == field_name, (label, status, answer)
                text = re.sub(rf":({open_port}|{closed_port})\b", ":PORT", answer["error"]["message"])
                messages.setdefault((field_name, label), set()).add(text)
    for (field_name, label), values in timings.items():
        figures.add(GROUP, f"timing {field_name}: {label}, median ms", round(statistics.median(values), 2))
    failures = []
    for field_name in FIELDS:
        opened = timings[(field_name, "denied, listener open")]
        closed = timings[(field_name, "denied, nothing listening")]
        diff = abs(statistics.median(opened) - statistics.median(closed))
        # Noise floor: the spread (IQR) of the two samples on this shared machine, at least 2 ms.
        spread = max(
            2.0, *(statistics.quantiles(v, n=4)[2] - statistics.quantiles(v, n=4)[0] for v in (opened, closed))
        )
        same_text = (
            messages[(field_name, "denied, listener open")] == messages[(field_name, "denied, nothing listening")]
        )
        figures.add(
            GROUP,
            f"timing {field_name}: |open - closed| median difference ms",
            round(diff, 2),
            expected=f"<= noise ({spread:.2f} ms IQR)",
            met=diff <= spread,
            note=f"{rounds} interleaved rounds",
        )
        figures.add(
            GROUP,
            f"{field_name}: error text identical for open and closed denied ports",
            same_text,
            expected="True",
            met=same_text,
        )
        if diff > spread or not same_text:
            failures.append((field_name, diff, spread, same_text))
    connections = loopback_listeners["127.0.0.2"].connections
    figures.add(
        GROUP, "timing: connections to the open denied listener", connections, expected="0", met=connections == 0
    )
    assert not failures, failures
    assert connections == 0


async def test_webhook_endpoint_is_checked_again_at_delivery_time(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    image_b64: str,
    tmp_path: Path,
    figures: Figures,
) -> None:
    """What DNS rebinding does (an endpoint fine at submit time points at a denied address at delivery),
    played with the allow list: accepted while 127.0.0.0/8 was allowed, delivered after a restart that
    allows 127.0.0.1/32 only. The delivery must be refused at connect time, with no connection made."""
    data_dir = tmp_path / "rebind"
    port = free_port()
    lenient = make_frontend(data_dir=data_dir, SD_ALLOW_PRIVATE_NETWORKS="127.0.0.0/8")
    body = body_for("webhook_endpoint", f"http://127.0.0.2:{port}/hook", image_b64)
    status, accepted, _ = await post(http, lenient, body)
    assert status == 202, accepted
    await wait_for_run(http, lenient, accepted["run_id"], "succeeded")  # delivery pending: nothing listens yet
    lenient.stop(signal.SIGKILL)
    listener = await start_listener("127.0.0.2", port)
    assert listener is not None
    try:
        strict = make_frontend(data_dir=data_dir, SD_ALLOW_PRIVATE_NETWORKS="127.0.0.1/32")
        deadline = time.monotonic() + 20
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            async with http.get(f"{strict.url}/runs/{accepted['run_id']}") as response:
                view = await response.json()
            if view.get("webhook", {}).get("status") != "pending":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        await listener.stop()
    webhook_status = view.get("webhook", {}).get("status")
    figures.add(
        GROUP,
        "delivery-time check: webhook state after the address became denied",
        webhook_status,
        expected="failed",
        met=webhook_status == "failed",
    )
    figures.add(
        GROUP,
        "delivery-time check: connections to the denied receiver",
        listener.connections,
        expected="0",
        met=listener.connections == 0,
    )
    assert webhook_status == "failed", view
    assert listener.connections == 0
