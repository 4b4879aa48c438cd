"""The rules between a URL and our memory: which addresses ``file_url`` and webhooks may reach (literals in
any spelling, names as they resolve, every real connection), what a fetch may bring back (status, bytes at
and one over the cap, redirects, time), and what an image may be (base64 length, pixels at and one over
the cap, allow-listed formats, bombs). Each at its exact edge, with the message a caller reads."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from frontend import errors, images, netguard
from frontend.fetch import check_url, fetch_file_url
from frontend.netguard import AddressDenied, denial_reason, guarded_socket_factory, host_denial_reason, literal_address

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]


# --- the network guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, reason",
    [
        ("10.1.2.3", "10.1.2.3 is in the non-public range 10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.1.2.3 is in the non-public range 10.0.0.0/8"),  # unwrapped first
        ("fd00:ec2::254", "fd00:ec2::254 is in the non-public range fc00::/7"),
        ("::1", "::1 is in the non-public range ::1/128"),
        ("0.0.0.0", "0.0.0.0 is in the non-public range 0.0.0.0/8"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_denial_reasons_name_the_range(address: str, reason: str | None) -> None:
    assert denial_reason(ipaddress.ip_address(address), []) == reason


def test_an_address_no_listed_range_holds_is_still_refused_unless_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "DENIED_NETWORKS", ())
    assert denial_reason(ipaddress.ip_address("10.0.0.1"), []) == "10.0.0.1 is not a public address"
    assert denial_reason(ipaddress.ip_address("8.8.8.8"), []) is None
    assert denial_reason(ipaddress.ip_address("10.0.0.1"), [ipaddress.ip_network("10.0.0.0/8")]) is None


def test_an_allowed_network_opens_that_network_only() -> None:
    allowed = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")]
    assert denial_reason(ipaddress.ip_address("10.0.0.9"), allowed) is None
    assert denial_reason(ipaddress.ip_address("::ffff:10.0.0.9"), allowed) is None
    assert denial_reason(ipaddress.ip_address("fd00::5"), allowed) is None
    assert denial_reason(ipaddress.ip_address("10.0.1.9"), allowed) == "10.0.1.9 is in the non-public range 10.0.0.0/8"


@pytest.mark.parametrize(
    "host, address",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("example.com", None),
        ("[example.com]", None),
        ("", None),
    ],
)
def test_literal_addresses_in_every_spelling_getaddrinfo_accepts(host: str, address: str | None) -> None:
    assert literal_address(host) == (None if address is None else ipaddress.ip_address(address))


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``install()`` (in the test, on its loop) makes the loop's ``getaddrinfo`` answer from the table: a list of
    addresses, ``"hang"``, an exception; a name absent from it does not resolve."""
    table: dict[str, Any] = {"calls": []}

    async def getaddrinfo(host: str, port: int, *, type: int) -> list[Any]:  # noqa: A002 - the loop's signature
        table["calls"].append((host, port, type))
        answer = table.get(host)
        if answer is None:
            raise socket.gaierror("Name or service not known")
        if answer == "hang":
            await asyncio.sleep(10)
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answer]

    table["install"] = lambda: monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return table


async def test_a_names_every_address_is_checked(resolver: dict[str, Any]) -> None:
    resolver["install"]()
    resolver["public.test"] = ["8.8.8.8", "1.1.1.1"]
    resolver["mixed.test"] = ["8.8.8.8", "10.0.0.7"]
    resolver["private.test"] = ["192.168.1.1"]
    assert await host_denial_reason("public.test", 443, []) is None
    assert resolver["calls"] == [("public.test", 443, socket.SOCK_STREAM)]
    assert await host_denial_reason("mixed.test", 80, []) == (
        "mixed.test resolves to 10.0.0.7: 10.0.0.7 is in the non-public range 10.0.0.0/8"
    )
    assert await host_denial_reason("private.test", 80, []) == (
        "private.test resolves to 192.168.1.1: 192.168.1.1 is in the non-public range 192.168.0.0/16"
    )
    assert await host_denial_reason("private.test", 80, [ipaddress.ip_network("192.168.1.0/24")]) is None


async def test_literals_are_judged_without_resolving(resolver: dict[str, Any]) -> None:
    resolver["install"]()
    assert await host_denial_reason("0x7f000001", 80, []) == "127.0.0.1 is in the non-public range 127.0.0.0/8"
    assert await host_denial_reason("127.0.0.1", 80, LOOPBACK) is None
    assert await host_denial_reason("8.8.8.8", 80, []) is None
    assert resolver["calls"] == []


async def test_a_name_that_does_not_resolve_now_passes_the_early_check(
    resolver: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver["install"]()
    resolver["slow.test"] = "hang"
    resolver["idna.test"] = UnicodeError("label too long")
    assert await host_denial_reason("nowhere.test", 80, []) is None
    assert await host_denial_reason("idna.test", 80, []) is None
    assert await host_denial_reason("slow.test", 80, [], resolve_timeout_s=0.05) is None
    waited: list[float] = []
    real_wait_for = asyncio.wait_for

    async def recording_wait_for(awaitable: Any, timeout: float) -> Any:
        waited.append(timeout)
        return await real_wait_for(awaitable, 0.05)

    monkeypatch.setattr(netguard.asyncio, "wait_for", recording_wait_for)
    assert await host_denial_reason("slow.test", 80, []) is None
    assert waited == [2.0]  # a resolver that hangs is given 2 s by default


def test_the_socket_factory_refuses_denied_addresses_at_connect_time() -> None:
    factory = guarded_socket_factory(LOOPBACK)
    with pytest.raises(AddressDenied) as denied:
        factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80)))
    assert str(denied.value) == "connection refused by policy: 10.0.0.1 is in the non-public range 10.0.0.0/8"
    sock = factory((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 80)))
    try:
        assert (sock.family, sock.type, sock.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    finally:
        sock.close()
    sock = factory((socket.AF_INET6, socket.SOCK_DGRAM, 0, "", ("2606:4700:4700::1111", 53, 0, 0)))
    try:
        assert (sock.family, sock.type) == (socket.AF_INET6, socket.SOCK_DGRAM)
    finally:
        sock.close()


# --- fetching file_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.com/a.png", "file_url must use http or https but uses 'ftp'"),
        ("example.com/a.png", "file_url must use http or https but uses 'no scheme'"),
        ("http:///a.png", "file_url has no host: 'http:///a.png'"),
        ("http://[::1/a.png", "file_url is not a valid URL: "),
    ],
)
def test_check_url_refuses_what_is_not_an_http_url_with_a_host(url: str, message: str) -> None:
    with pytest.raises(errors.FileUrlFailed) as refused:
        check_url(url, "file_url")
    assert refused.value.message.startswith(message) and refused.value.param == "file_url"
    with pytest.raises(errors.InvalidRequest) as refused_as:
        check_url(url, "webhook_endpoint", errors.InvalidRequest)
    assert refused_as.value.param == "webhook_endpoint" and refused_as.value.message.startswith("webhook_endpoint ")


def test_check_url_keeps_a_good_url() -> None:
    assert str(check_url("https://example.com:8443/a.png?x=1", "file_url")) == "https://example.com:8443/a.png?x=1"
    assert check_url("HTTP://example.com/", "file_url").host == "example.com"


CAP = 100_000  # bytes: more than one 64 KiB chunk


def file_server() -> web.Application:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def streamed(request: web.Request) -> web.StreamResponse:
        """No Content-Length: only counting the bytes as they come can stop it."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        left = int(request.match_info["n"])
        while left:
            part = min(left, 30_000)
            await response.write(b"y" * part)
            left -= part
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), body=b"z")

    async def hops(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        raise web.HTTPFound("/sized/3" if left == 0 else f"/hops/{left - 1}")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(body=b"late")

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/sized/{n}", sized)
    app.router.add_get("/streamed/{n}", streamed)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/hops/{n}", hops)
    app.router.add_get("/slow", slow)
    app.router.add_get("/cut", cut)
    return app


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    async with TestServer(file_server(), host="127.0.0.1") as test_server:
        yield test_server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(socket_factory=guarded_socket_factory(LOOPBACK))
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


async def fetch(session: aiohttp.ClientSession, url: str, **overrides: Any) -> bytes:
    limits: dict[str, Any] = {"max_bytes": CAP, "max_redirects": 2, "connect_timeout_s": 2.0, "total_timeout_s": 5.0}
    return await fetch_file_url(session, url, **{**limits, **overrides})


@pytest.mark.parametrize("kind", ["sized", "streamed"])
async def test_the_byte_cap_holds_at_exactly_the_limit_and_one_over(
    server: TestServer, session: aiohttp.ClientSession, kind: str
) -> None:
    assert await fetch(session, str(server.make_url(f"/{kind}/{CAP}"))) == (b"x" if kind == "sized" else b"y") * CAP
    with pytest.raises(errors.PayloadTooLarge) as too_large:
        await fetch(session, str(server.make_url(f"/{kind}/{CAP + 1}")))
    expected = {
        "sized": f"file_url is {CAP + 1} bytes; the limit is {CAP}",  # refused on its Content-Length
        "streamed": f"file_url is larger than the limit of {CAP} bytes",  # refused as its bytes came
    }
    assert (too_large.value.message, too_large.value.param) == (expected[kind], "file_url")


async def test_only_a_200_is_an_image(server: TestServer, session: aiohttp.ClientSession) -> None:
    for code in (201, 204, 404, 500):
        with pytest.raises(errors.FileUrlFailed) as failed:
            await fetch(session, str(server.make_url(f"/status/{code}")))
        assert (failed.value.message, failed.value.param) == (f"file_url answered HTTP {code}", "file_url")
    assert await fetch(session, str(server.make_url("/status/200"))) == b"z"


async def test_redirects_are_followed_up_to_the_limit(server: TestServer, session: aiohttp.ClientSession) -> None:
    """SD_FETCH_MAX_REDIRECTS redirects are followed, one more is refused; 0 follows none."""
    assert await fetch(session, str(server.make_url("/hops/1")), max_redirects=2) == b"xxx"  # 2 redirects
    with pytest.raises(errors.FileUrlFailed) as failed:
        await fetch(session, str(server.make_url("/hops/2")), max_redirects=2)
    assert (failed.value.message, failed.value.param) == ("file_url redirected more than 2 times", "file_url")
    with pytest.raises(errors.FileUrlFailed, match="^file_url redirected more than 0 times$"):
        await fetch(session, str(server.make_url("/hops/0")), max_redirects=0)


async def test_a_slow_server_is_given_up_at_the_total_timeout(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(errors.FileUrlFailed) as failed:
        await fetch(session, str(server.make_url("/slow")), total_timeout_s=0.2)
    assert (failed.value.message, failed.value.param) == ("file_url did not answer within 0.2 s", "file_url")


async def test_the_timeouts_and_redirect_limit_reach_the_request(
    server: TestServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_get = session.get

    def recording_get(url: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        return real_get(url, **kwargs)

    monkeypatch.setattr(session, "get", recording_get)
    url = str(server.make_url("/sized/3"))
    assert await fetch(session, url, connect_timeout_s=1.5, total_timeout_s=4.0, max_redirects=3) == b"xxx"
    assert str(seen["url"]) == url and seen["max_redirects"] == 3 + 1  # aiohttp counts the refused one
    assert (seen["timeout"].total, seen["timeout"].sock_connect) == (4.0, 1.5)


async def test_a_denied_address_is_refused_and_an_unreachable_one_named(server: TestServer) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=guarded_socket_factory([]))) as s:
        with pytest.raises(errors.FileUrlFailed) as refused:
            await fetch(s, str(server.make_url("/sized/3")))
    assert refused.value.message == (
        "file_url was refused: connection refused by policy: 127.0.0.1 is in the non-public range 127.0.0.0/8"
    )
    assert refused.value.param == "file_url"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(socket_factory=guarded_socket_factory(LOOPBACK))
    ) as s:
        with pytest.raises(errors.FileUrlFailed) as unreachable:
            await fetch(s, f"http://127.0.0.1:{port}/a.png")
    assert unreachable.value.message.startswith("file_url could not be reached: [Errno 111] ")
    assert unreachable.value.param == "file_url"


async def test_a_connection_cut_mid_body_is_a_clear_failure(server: TestServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(errors.FileUrlFailed) as failed:
        await fetch(session, str(server.make_url("/cut")))
    assert failed.value.message.startswith("file_url could not be fetched: ") and failed.value.param == "file_url"
    assert failed.value.message.removeprefix("file_url could not be fetched: ") in {
        "ClientPayloadError",
        "ServerDisconnectedError",
    }


async def test_a_bad_url_fails_before_any_connection(session: aiohttp.ClientSession) -> None:
    with pytest.raises(errors.FileUrlFailed) as refused:
        await fetch(session, "file:///etc/passwd")
    assert (refused.value.message, refused.value.param) == (
        "file_url must use http or https but uses 'file'",
        "file_url",
    )


# --- images: base64 length, pixels, formats ----------------------------------------------------------


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_base64_length_cap_holds_at_exactly_the_limit_and_one_over() -> None:
    # max_bytes 6: at most 6 * 4 // 3 + 4 = 12 characters are decoded (padding and slack included).
    assert images.decode_base64(base64.b64encode(b"123456789").decode(), max_bytes=6) == b"123456789"
    with pytest.raises(errors.PayloadTooLarge) as too_large:
        images.decode_base64("A" * 13, max_bytes=6)
    assert (too_large.value.message, too_large.value.param) == ("image is larger than the limit of 6 bytes", "image")
    prefixed = "data:image/png;base64," + base64.b64encode(b"123456789").decode()
    assert images.decode_base64(prefixed, max_bytes=6) == b"123456789"  # the prefix does not count
    assert images.decode_base64(f"  \n{base64.b64encode(b'abc').decode()}\n ", max_bytes=6) == b"abc"


def test_invalid_base64_is_named() -> None:
    with pytest.raises(errors.InvalidRequest) as invalid:
        images.decode_base64("abc$", max_bytes=100)
    assert invalid.value.param == "image" and invalid.value.message.startswith("image is not valid base64: ")
    with pytest.raises(errors.InvalidRequest):
        images.decode_base64("data:image/png;base64,data:image/png;base64,AAAA", max_bytes=100)


def load(data: bytes, max_pixels: int = 10**6, max_side: int = 1024, param: str = "image") -> np.ndarray:
    return images.load_image(data, param=param, max_pixels=max_pixels, max_side=max_side)


def test_the_pixel_cap_holds_at_exactly_the_limit_and_one_over() -> None:
    assert load(png(40, 25), max_pixels=1000).shape == (24, 40, 3)
    with pytest.raises(errors.InvalidImage) as too_many:
        load(png(40, 25), max_pixels=999, param="file_url")
    assert too_many.value.message == "file_url has 40x25 = 1000 pixels; the limit is 999"
    assert too_many.value.param == "file_url"


def test_the_side_cap_scales_down_keeping_the_aspect() -> None:
    assert load(png(200, 100), max_side=64).shape == (32, 64, 3)
    assert load(png(64, 64), max_side=64).shape == (64, 64, 3)
    assert load(png(72, 16), max_side=64).shape == (8, 64, 3)
    assert images.fit_size(64, 64, 64) == (64, 64)
    assert images.fit_size(65, 64, 64) == (64, 56)
    assert images.fit_size(100, 3, 64) == (64, 8)
    assert images.fit_size(17, 23, 1024) == (16, 16)


def test_load_base64_image_applies_every_cap_in_one_call() -> None:
    text = base64.b64encode(png(40, 25)).decode()
    assert images.load_base64_image(text, max_bytes=10_000, max_pixels=1000, max_side=16).shape == (8, 16, 3)
    with pytest.raises(errors.InvalidImage, match="^image has 40x25 = 1000 pixels; the limit is 999$"):
        images.load_base64_image(text, max_bytes=10_000, max_pixels=999, max_side=1024)
    with pytest.raises(errors.PayloadTooLarge, match="^image is larger than the limit of 10 bytes$"):
        images.load_base64_image(text, max_bytes=10, max_pixels=1000, max_side=1024)


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "TGA"])
def test_only_allow_listed_formats_are_decoded(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format=fmt)
    with pytest.raises(errors.UnsupportedImage) as unsupported:
        load(buffer.getvalue(), param="file_url")
    assert unsupported.value.message == (
        "file_url is not an image in an accepted format (PNG, JPEG, WEBP, BMP, GIF, TIFF)"
    )
    assert unsupported.value.param == "file_url"


def test_empty_corrupt_and_bomb_images_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(errors.InvalidImage) as empty:
        load(b"", param="file_url")
    assert (empty.value.message, empty.value.param) == ("file_url is empty", "file_url")
    with pytest.raises(errors.InvalidImage) as corrupt:
        noisy = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(noisy, format="PNG")
        load(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    assert corrupt.value.message == "image could not be decoded: OSError: image file is truncated"
    assert corrupt.value.param == "image"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    # Over MAX_IMAGE_PIXELS is only Pillow's warning; here it is an error, as is twice over.
    for side in (40, 50):
        with pytest.raises(errors.InvalidImage) as bomb:
            load(png(side, side), max_pixels=10**6)
        assert bomb.value.message.startswith("image is a decompression bomb: ") and bomb.value.param == "image"


def test_a_palette_image_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    assert load(buffer.getvalue()).min() == 255
    assert load(png(8, 8, "LA")).min() == 255 and load(png(8, 8, "L")).max() == 0


def test_an_upright_image_is_not_transposed(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageOps

    calls: list[Any] = []
    monkeypatch.setattr(ImageOps, "exif_transpose", lambda image: calls.append(image))
    assert load(png(16, 8)).shape == (8, 16, 3) and calls == []


def test_a_scaled_down_image_is_resampled_with_lanczos() -> None:
    """The model's input is a fixed function of the bytes sent: same image, same pixels, every time."""
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 100, 3), np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    expected = np.asarray(noisy.resize((64, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(load(buffer.getvalue(), max_side=64), expected)


def test_an_image_pillow_only_warns_about_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a decompression bomb's warning is an error; Pillow's other warnings (odd metadata, say) are not."""
    real_to_rgb = images._to_rgb

    def warning_to_rgb(image: Image.Image) -> Image.Image:
        warnings.warn("Possibly corrupt EXIF data", UserWarning, stacklevel=1)
        return real_to_rgb(image)

    monkeypatch.setattr(images, "_to_rgb", warning_to_rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as outside the test suite, whose filters make every warning an error
        assert load(png(16, 8)).shape == (8, 16, 3)
