"""The frontend's pure layers on their own: SSRF policy, keys, error mapping, images, signing, schema."""

from __future__ import annotations

import base64
import io
import ipaddress

import numpy as np
import pytest
from PIL import Image
from standardwebhooks import Webhook
from tritonclient.utils import InferenceServerException

from frontend import errors
from frontend.images import decode_base64, fit_size, load_image
from frontend.netguard import denial_reason
from frontend.schemas import parse_body
from frontend.settings import Settings
from frontend.triton_backend import map_error
from frontend.webhooks import WebhookSigner, backoff_s

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "fe80::1",
        "fd00:ec2::254",
        "ff02::1",
        "2001::1",
    ],
)
def test_non_public_addresses_are_denied(address: str) -> None:
    assert denial_reason(ipaddress.ip_address(address), []) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert denial_reason(ipaddress.ip_address(address), []) is None


def test_allowlist_opens_exactly_its_networks() -> None:
    allowed = [ipaddress.ip_network("127.0.0.1/32")]
    assert denial_reason(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert denial_reason(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert denial_reason(ipaddress.ip_address("127.0.0.2"), allowed) is not None


@pytest.mark.parametrize(
    ("status", "message", "expected", "param"),
    [
        (
            "StatusCode.INVALID_ARGUMENT",
            "invalid input 'strength': must be in [0.0, 1.0] but is 1.5",
            errors.InvalidRequest,
            "strength",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "unsupported input 'aesthetic_score': SDXL base does not take it",
            errors.UnsupportedField,
            "aesthetic_score",
        ),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", errors.BackendUnavailable, None),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", errors.BackendUnavailable, None),
        ("StatusCode.INTERNAL", "Stub process 'sd_img2img_0_0' is not healthy.", errors.BackendUnavailable, None),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", errors.BackendTimeout, None),
        (
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'sd_img2img' is not found",
            errors.BackendUnavailable,
            None,
        ),
        ("StatusCode.INTERNAL", "generation failed: RuntimeError: CUDA out of memory", errors.GenerationFailed, None),
    ],
)
def test_triton_errors_map_onto_the_table(status: str, message: str, expected: type, param: str | None) -> None:
    error = map_error(InferenceServerException(message, status=status))
    assert type(error) is expected and error.param == param
    if expected is errors.BackendUnavailable:
        assert int(error.headers["Retry-After"]) > 0
    if expected is errors.GenerationFailed:
        assert "CUDA" not in error.message  # raw backend text is not echoed


def test_fit_size_keeps_aspect_and_snaps_to_multiples_of_8() -> None:
    assert fit_size(70, 45, 1024) == (64, 40)
    assert fit_size(4000, 3000, 1024) == (1024, 768)
    assert fit_size(5, 5, 1024) == (8, 8)


def test_decode_base64_accepts_data_uris_and_rejects_garbage() -> None:
    assert decode_base64("data:image/png;base64," + base64.b64encode(b"abc").decode(), max_bytes=10) == b"abc"
    with pytest.raises(errors.InvalidRequest):
        decode_base64("@@@", max_bytes=10)
    with pytest.raises(errors.PayloadTooLarge):
        decode_base64("A" * 100, max_bytes=10)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    array = load_image(encode(image, "JPEG", exif=exif), param="image", max_pixels=10**6, max_side=1024)
    assert array.shape == (32, 16, 3)


def test_alpha_is_composited_on_white_and_cmyk_converted() -> None:
    transparent = load_image(
        encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"), param="image", max_pixels=10**6, max_side=1024
    )
    assert transparent.min() == 255
    cmyk = load_image(
        encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG"), param="image", max_pixels=10**6, max_side=1024
    )
    assert cmyk.shape == (16, 16, 3) and cmyk.dtype == np.uint8


def test_decompression_bombs_and_oversize_pixel_counts_are_refused() -> None:
    big = encode(Image.new("L", (4000, 4000)), "PNG")  # a few KB, 16 Mpx
    with pytest.raises(errors.InvalidImage, match="pixels"):
        load_image(big, param="image", max_pixels=1_000_000, max_side=1024)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    array = load_image(buffer.getvalue(), param="image", max_pixels=10**6, max_side=1024)
    assert array[0, 0].tolist() == [255, 0, 0]


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    headers = WebhookSigner(SECRET).headers("msg_1", '{"a":1}')
    assert Webhook(SECRET).verify('{"a":1}', headers) == {"a": 1}
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify('{"a":2}', headers)


def test_backoff_grows_with_jitter_and_caps() -> None:
    assert 0.5 <= backoff_s(1, 1.0, 60) < 1.5
    assert 4.0 <= backoff_s(4, 1.0, 60) < 12.0
    assert backoff_s(30, 1.0, 60) < 90.0


def test_body_validation_names_the_field_and_echoes_the_value() -> None:
    settings = Settings(api_keys=[], max_images_per_prompt=4)
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_body({"prompt": "x", "image": "AAAA", "num_images_per_prompt": 9}, settings)
    assert caught.value.param == "num_images_per_prompt" and "9" in caught.value.message
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_body({"prompt": "x", "image": "AAAA", "guidance_scale": "lots"}, settings)
    assert caught.value.param == "guidance_scale" and "'lots'" in caught.value.message
    with pytest.raises(errors.InvalidRequest, match="one of image"):
        parse_body({"prompt": "x"}, settings)
    with pytest.raises(errors.InvalidRequest, match="JSON object"):
        parse_body(["prompt"], settings)


def test_settings_read_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_API_KEYS", "k1, k2,,")
    monkeypatch.setenv("SD_ALLOW_PRIVATE_NETWORKS", "127.0.0.1/32,10.0.0.0/8")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert [str(n) for n in settings.allow_private_networks] == ["127.0.0.1/32", "10.0.0.0/8"]
