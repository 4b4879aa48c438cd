"""Hostile-input corpus (reliability group 1) and a raw HTTP/1.1 client for requests aiohttp will not send.

Every case is named, builds its own bytes lazily (some are tens of MiB), and says which statuses are
acceptable. ``weird`` cases are valid-but-unusual inputs (EXIF rotation, CMYK, animations): a 200 is fine
and what they returned is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..helpers.servers import png_bytes
from ..helpers.support import SEED_CURL_BODY, random_image

FOUR_XX = tuple(range(400, 500))
MIB = 1024 * 1024


@dataclass
class Case:
    name: str
    make: Callable[[], bytes]  # the request body
    expect: tuple[int, ...] = FOUR_XX  # acceptable statuses
    code: str | None = None  # the error code expected when the answer is a 4xx
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    method: str = "POST"
    path: str = "/predict"
    weird: bool = False  # valid but unusual: 200 is fine, the outcome is recorded
    check: Callable[[int, Any], str | None] | None = None  # extra check of (status, answer): a problem or None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(image: bytes | str | None = None, /, **fields: Any) -> bytes:
    """A small, fast, valid request (2 steps at strength 0.5) with ``fields`` overriding it."""
    payload: dict[str, Any] = {"prompt": "hostile input", "num_inference_steps": 2, "strength": 0.5, "seed": 7}
    if image is not None:
        payload["image"] = image if isinstance(image, str) else _b64(image)
    payload.update(fields)
    return json.dumps(payload).encode()


def valid_body() -> bytes:
    return body(png_bytes())


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _rgb(size: tuple[int, int], seed: int = 0) -> Image.Image:
    width, height = size
    return Image.fromarray(random_image((height, width), seed))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, *, idat: bytes | None = None, color_type: int = 0) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (the pixel data is a few bytes, or ``idat``)."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_zlib_bomb(side: int) -> bytes:
    """A real decompression bomb: a greyscale ``side`` x ``side`` PNG of zeros, compressed to a few KiB."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)] + [compressor.flush()]
    return png_declaring(side, side, idat=b"".join(parts))


def png_text_bomb() -> bytes:
    """A valid 64x64 PNG with a zTXt chunk that inflates to 64 MiB (Pillow caps text chunks)."""
    text = b"Comment\0\0" + zlib.compress(b"A" * (64 * MIB), 9)
    original = png_bytes()
    return original[:33] + _chunk(b"zTXt", text) + original[33:]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 frame header is patched to declare ``width`` x ``height``."""
    data = bytearray(_encode(_rgb((64, 64)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """64 wide x 32 high, EXIF orientation 6 (rotate 90 CW to display): shown as 32 x 64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_rgb((64, 32)), "JPEG", exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [_rgb((64, 64), seed) for seed in range(3)]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def corrupt_jpeg_header() -> bytes:
    """The Huffman tables (DHT) overwritten with garbage: a decoder cannot proceed."""
    data = bytearray(_encode(_rgb((64, 64)), "JPEG"))
    dht = data.index(b"\xff\xc4")
    data[dht + 4 : dht + 60] = b"\xff" * 56
    return bytes(data)


def gzip_bomb(decompressed_mib: int) -> bytes:
    """A gzip request body that inflates to ``decompressed_mib`` MiB of one long JSON string."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b'{"prompt": "')]
    chunk = b"a" * MIB
    parts += [compressor.compress(chunk) for _ in range(decompressed_mib)]
    parts += [compressor.compress(b'", "image": "x"}'), compressor.flush()]
    return b"".join(parts)


def deep_nesting(depth: int) -> bytes:
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"


def _is_size(width: int, height: int) -> Callable[[int, Any], str | None]:
    """For a 200: the model saw (and the answer reports) ``width`` x ``height``; the image has that size too."""

    def check(status: int, answer: Any) -> str | None:
        if status != 200:
            return None
        seen = (answer.get("width"), answer.get("height"))
        image = Image.open(io.BytesIO(base64.b64decode(answer["result"][0])))
        if seen != (width, height) or image.size != (width, height):
            return f"expected {width}x{height}, answer says {seen[0]}x{seen[1]}, image is {image.size}"
        return None

    return check


def corpus(max_body_bytes: int, max_image_bytes: int) -> list[Case]:
    """The named cases; sizes follow the frontend's limits (pass its SD_MAX_BODY_BYTES / SD_MAX_IMAGE_BYTES)."""
    json_ct = {"Content-Type": "application/json"}
    cases = [
        # Malformed JSON
        Case("seed doc curl body (two commas missing)", lambda: SEED_CURL_BODY.encode(), (400,), "invalid_json"),
        Case("empty body", lambda: b"", (400,), "invalid_json"),
        Case("truncated JSON", lambda: valid_body()[:40], (400,), "invalid_json"),
        Case("single-quoted JSON", lambda: b"{'prompt': 'x', 'image': 'x'}", (400,), "invalid_json"),
        Case("trailing garbage after JSON", lambda: valid_body() + b" }{", (400,), "invalid_json"),
        Case("UTF-8 BOM before JSON", lambda: b"\xef\xbb\xbf" + valid_body(), (400,), "invalid_json"),
        Case("invalid UTF-8 in body", lambda: b'{"prompt": "\xff\xfe\xc3", "image": "x"}', (400,), "invalid_json"),
        Case("NUL bytes body", lambda: b"\0" * 1024, (400,), "invalid_json"),
        Case("JSON nested 100k deep", lambda: deep_nesting(100_000), (400,), "invalid_json"),
        Case(
            "integer with 5000 digits",
            lambda: body(png_bytes(), seed=0).replace(b'"seed": 0', b'"seed": ' + b"9" * 5000),
            (400,),
            "invalid_json",
        ),
        # Non-object JSON
        Case("JSON array", lambda: b"[]", (422,), "invalid_request"),
        Case("JSON string", lambda: b'"prompt"', (422,), "invalid_request"),
        Case("JSON number", lambda: b"42", (422,), "invalid_request"),
        Case("JSON null", lambda: b"null", (422,), "invalid_request"),
        Case("JSON true", lambda: b"true", (422,), "invalid_request"),
        Case("empty object", lambda: b"{}", (422,), "invalid_request"),
        # Wrong types
        Case("prompt is a number", lambda: body(png_bytes(), prompt=123), (422,), "invalid_request"),
        Case("prompt is null", lambda: body(png_bytes(), prompt=None), (422,), "invalid_request"),
        Case("prompt is a list", lambda: body(png_bytes(), prompt=["a"]), (422,), "invalid_request"),
        Case("image is a number", lambda: body(None, image=5), (422,), "invalid_request"),
        Case("image is an object", lambda: body(None, image={"b64": "x"}), (422,), "invalid_request"),
        Case("steps is a string", lambda: body(png_bytes(), num_inference_steps="two"), (422,), "invalid_request"),
        Case("steps is a fraction", lambda: body(png_bytes(), num_inference_steps=2.5), (422,), "invalid_request"),
        Case("seed is a bool list", lambda: body(png_bytes(), seed=[True]), (422,), "invalid_request"),
        Case("output_format unknown", lambda: body(png_bytes(), output_format="gif"), (422,), "invalid_request"),
        Case("unknown field (steps)", lambda: body(png_bytes(), steps=2), (422,), "invalid_request"),
        Case("scheduler unknown", lambda: body(png_bytes(), scheduler="no-such-scheduler"), (422,), "invalid_request"),
        # the tiny model is an SD 1.x: only an SDXL refiner takes an aesthetic score
        Case("aesthetic_score on SD 1.x", lambda: body(png_bytes(), aesthetic_score=6.0), (400,), "unsupported_field"),
        Case(
            "aesthetic_score NaN literal",
            lambda: body(png_bytes()).replace(b'"seed": 7', b'"seed": 7, "aesthetic_score": NaN'),
            (422,),
            "invalid_request",
        ),
        Case("webhook_endpoint ftp", lambda: body(png_bytes(), webhook_endpoint="ftp://x/y"), (422,)),
        Case("file_url javascript:", lambda: body(None, file_url="javascript:alert(1)"), (422,), "file_url_failed"),
        Case(
            "file_url to metadata IP",
            lambda: body(None, file_url="http://169.254.169.254/x"),
            (422,),
            "file_url_failed",
        ),
        # Huge numbers
        Case("steps 1e308", lambda: body(png_bytes(), num_inference_steps=1e308), (422,), "invalid_request"),
        Case("steps 2**70", lambda: body(png_bytes(), num_inference_steps=2**70), (422,), "invalid_request"),
        Case("steps -2**70", lambda: body(png_bytes(), num_inference_steps=-(2**70)), (422,), "invalid_request"),
        Case(
            "images per prompt 2**70", lambda: body(png_bytes(), num_images_per_prompt=2**70), (422,), "invalid_request"
        ),
        Case("seed 2**70", lambda: body(png_bytes(), seed=2**70), (422,), "invalid_request"),
        Case("seed 2**53 (one past the max)", lambda: body(png_bytes(), seed=2**53), (422,), "invalid_request"),
        Case("seed -1", lambda: body(png_bytes(), seed=-1), (422,), "invalid_request"),
        Case("guidance 1e308", lambda: body(png_bytes(), guidance_scale=1e308), (422,), "invalid_request"),
        Case(
            "guidance NaN literal",
            lambda: body(png_bytes()).replace(b'"seed": 7', b'"seed": 7, "guidance_scale": NaN'),
            (422,),
            "invalid_request",
        ),
        Case(
            "strength NaN literal",
            lambda: body(png_bytes()).replace(b'"strength": 0.5', b'"strength": NaN'),
            (422,),
            "invalid_request",
        ),
        Case(
            "guidance Infinity literal",
            lambda: body(png_bytes()).replace(b'"seed": 7', b'"seed": 7, "guidance_scale": Infinity'),
            (422,),
            "invalid_request",
        ),
        Case(
            "steps -Infinity literal",
            lambda: body(png_bytes()).replace(b'"num_inference_steps": 2', b'"num_inference_steps": -Infinity'),
            (422,),
            "invalid_request",
        ),
        Case("strength 1e-320 (denormal)", lambda: body(png_bytes(), strength=1e-320), (422,), "invalid_request"),
        # Huge prompts
        Case("prompt one over the limit", lambda: body(png_bytes(), prompt="a" * 2001), (422,), "invalid_request"),
        Case("prompt 1M characters", lambda: body(png_bytes(), prompt="\u00e9" * MIB), (422,), "invalid_request"),
        Case(
            "negative prompt 1M characters",
            lambda: body(png_bytes(), negative_prompt="x" * MIB),
            (422,),
            "invalid_request",
        ),
        Case(
            "prompt lone surrogate",
            lambda: body(png_bytes()).replace(b'"hostile input"', b'"\\ud800"'),
            (422,),
            "invalid_request",
        ),
        Case(
            "prompt with NUL and controls",
            lambda: body(png_bytes(), prompt="a\0b\x1b[31m\u202e"),
            (200, 422),
            weird=True,
        ),
        # Invalid base64
        Case("image not base64", lambda: body("!!!not base64!!!"), (422,), "invalid_request"),
        Case(
            "image base64 with newlines",
            lambda: body(base64.encodebytes(png_bytes()).decode()),
            (422,),
            "invalid_request",
        ),
        Case("image base64 bad padding", lambda: body(_b64(png_bytes())[:-1]), (422,), "invalid_request"),
        Case("image empty string and no file_url", lambda: body(""), (422,), "invalid_request"),
        Case("image base64 of text", lambda: body(b"hello, I am not an image"), (415,), "unsupported_image"),
        Case(
            "image data URI of text/html",
            lambda: body("data:text/html;base64," + _b64(png_bytes())),
            (422,),
            "invalid_request",
        ),
        Case(
            "image SVG",
            lambda: body(b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>'),
            (415,),
            "unsupported_image",
        ),
        Case("image PDF magic", lambda: body(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), (415,), "unsupported_image"),
        # Truncated / corrupt images: 422 invalid_image, or 415 where Pillow cannot even identify the format
        Case("PNG truncated at half", lambda: body(png_bytes()[: len(png_bytes()) // 2]), (422,), "invalid_image"),
        Case("PNG signature only", lambda: body(png_bytes()[:8]), (415, 422)),
        Case("PNG bad CRC", lambda: body(png_bytes()[:29] + b"\0\0\0\0" + png_bytes()[33:]), (415, 422)),
        Case("JPEG truncated at half", lambda: body(_encode(_rgb((64, 64)), "JPEG")[:400]), (422,), "invalid_image"),
        Case("JPEG Huffman tables garbage", lambda: body(corrupt_jpeg_header()), (415, 422)),
        Case("GIF truncated", lambda: body(animated("GIF")[:100]), (415, 422)),
        # Decompression bombs
        Case("PNG declaring 50000x50000", lambda: body(png_declaring(50_000, 50_000)), (422,), "invalid_image"),
        Case("PNG declaring 2**31-1 x 1", lambda: body(png_declaring(2**31 - 1, 1)), (422,), "invalid_image"),
        Case("JPEG declaring 65000x65000", lambda: body(jpeg_declaring(65_000, 65_000)), (422,), "invalid_image"),
        Case("PNG zlib bomb 10000x10000 zeros", lambda: body(png_zlib_bomb(10_000)), (422,), "invalid_image"),
        Case("PNG zTXt text bomb (64 MiB)", lambda: body(png_text_bomb()), (200, 422), weird=True),
        Case("image 8x8 (under the model's minimum)", lambda: body(png_bytes((8, 8))), (200, 422), weird=True),
        # Valid but unusual images: 200 is fine; what they returned is recorded
        Case(
            "EXIF-rotated JPEG (64x32, orientation 6)",
            lambda: body(exif_rotated_jpeg()),
            (200,),
            weird=True,
            check=_is_size(32, 64),
        ),
        Case(
            "CMYK JPEG",
            lambda: body(_encode(Image.new("CMYK", (64, 64), (0, 128, 0, 0)), "JPEG")),
            (200,),
            weird=True,
            check=_is_size(64, 64),
        ),
        Case("animated GIF (3 frames)", lambda: body(animated("GIF")), (200,), weird=True, check=_is_size(64, 64)),
        Case(
            "animated PNG (APNG, 3 frames)", lambda: body(animated("PNG")), (200,), weird=True, check=_is_size(64, 64)
        ),
        Case(
            "16-bit greyscale PNG", lambda: body(_encode(Image.new("I;16", (64, 64), 40000), "PNG")), (200,), weird=True
        ),
        Case(
            "RGBA PNG with transparency",
            lambda: body(_encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")),
            (200,),
            weird=True,
        ),
        Case("data URI PNG", lambda: body("data:image/png;base64," + _b64(png_bytes())), (200,), weird=True),
        # Oversize
        Case(
            "body over SD_MAX_BODY_BYTES",
            lambda: b'{"prompt": "' + b"a" * max_body_bytes + b'"}',
            (413,),
            "payload_too_large",
        ),
        Case(
            "image over SD_MAX_IMAGE_BYTES",
            lambda: body("A" * (max_image_bytes * 4 // 3 + 8)),
            (413,),
            "payload_too_large",
        ),
        Case(
            "gzip body inflating to 64 MiB",
            lambda: gzip_bomb(64),
            (400, 413),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        # Wrong content types: the body is parsed as JSON whatever the header says (curl -d sends form type)
        Case(
            "form-urlencoded body",
            lambda: b"prompt=x&image=y",
            (400,),
            "invalid_json",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Case(
            "multipart form body",
            lambda: b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b--\r\n',
            (400,),
            "invalid_json",
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
        Case("image/png body", lambda: png_bytes(), (400,), "invalid_json", {"Content-Type": "image/png"}),
        Case(
            "charset=bogus",
            lambda: valid_body(),
            (400,),
            "invalid_json",
            {"Content-Type": "application/json; charset=bogus"},
        ),
        Case(
            "charset=utf-16 on a UTF-8 body",
            lambda: valid_body(),
            (400,),
            "invalid_json",
            {"Content-Type": "application/json; charset=utf-16"},
        ),
        Case(
            "text/plain with a valid body",
            lambda: valid_body(),
            (200, 415),
            weird=True,
            headers={"Content-Type": "text/plain"},
        ),
        Case("no Content-Type, valid body", lambda: valid_body(), (200, 415), weird=True, headers={}),
        # Wrong methods and paths
        Case("GET /predict", lambda: b"", (405,), "method_not_allowed", json_ct, method="GET"),
        Case("PUT /predict", lambda: valid_body(), (405,), "method_not_allowed", method="PUT"),
        Case("POST /runs/x", lambda: b"{}", (405,), "method_not_allowed", method="POST", path="/runs/x"),
        Case("unknown path", lambda: b"{}", (404,), "not_found", path="/predict/../../etc/passwd"),
        Case("GET /runs/ with a 4 KiB id", lambda: b"", (404,), "not_found", method="GET", path="/runs/" + "a" * 4096),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "corpus case names must be unique"
    return cases


def error_shape_problem(answer: Any) -> str | None:
    """``None`` if ``answer`` is ``{"error": {"code": str, "message": str, "param": str | None}}``, else why not."""
    if not isinstance(answer, dict) or set(answer) != {"error"} or not isinstance(answer["error"], dict):
        return f"not the error shape: {str(answer)[:200]}"
    error = answer["error"]
    if set(error) != {"code", "message", "param"}:
        return f"error keys are {sorted(error)}"
    if not isinstance(error["code"], str) or not isinstance(error["message"], str):
        return "code/message are not strings"
    if error["param"] is not None and not isinstance(error["param"], str):
        return "param is neither a string nor null"
    return None


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 30) -> RawAnswer:
    """Send ``head`` (request line and headers, without the final blank line) and ``body`` as they are."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = head.rstrip(b"\r\n") + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        request += b"Content-Length: %d\r\n\r\n" % len(body) + body
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(status, headers, payload)
