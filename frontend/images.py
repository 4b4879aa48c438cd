"""Image decoding (untrusted input) and encoding (results). CPU-bound: callers run these off the loop."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImage, InvalidRequest, PayloadTooLarge, UnsupportedImage

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
OUTPUT_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)
MULTIPLE = 8  # SD's VAE downscale: the model only takes sides that are multiples of 8


def decode_base64(text: str, *, max_bytes: int) -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URI) to bytes, length-checked before decoding."""
    payload = _DATA_URI.sub("", text.strip(), count=1)
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(f"image is larger than the limit of {max_bytes} bytes", param="image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image is not valid base64: {exc}", param="image") from None


def load_base64_image(text: str, *, max_bytes: int, max_pixels: int, max_side: int) -> np.ndarray:
    """``decode_base64`` then ``load_image``: one trip to a worker thread instead of two."""
    return load_image(decode_base64(text, max_bytes=max_bytes), param="image", max_pixels=max_pixels, max_side=max_side)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Scale to fit ``max_side`` (aspect kept), then snap each side down to a multiple of 8 (at least 8)."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(MULTIPLE, int(side * scale) // MULTIPLE * MULTIPLE) for side in (width, height))  # type: ignore[return-value]


def load_image(data: bytes, *, param: str, max_pixels: int, max_side: int) -> np.ndarray:
    """Decode untrusted bytes to an RGB uint8 HWC array ready for the model.

    Allow-listed formats only; a decompression bomb is an error, not a warning; EXIF orientation is
    applied; alpha is composited on white; the first frame of an animation is used.
    """
    if not data:
        raise InvalidImage(f"{param} is empty", param=param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidImage(
                        f"{param} has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                        param=param,
                    )
                image.seek(0)
                # exif_transpose copies even an upright image: only call it when there is a rotation.
                upright: Image.Image = image
                if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                    upright = ImageOps.exif_transpose(image) or image
                rgb = _to_rgb(upright)
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"{param} is not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})", param=param
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{param} is a decompression bomb: {exc}", param=param) from None
    except InvalidImage:
        raise
    except Exception as exc:  # Pillow raises many types on corrupt input (OSError, ValueError, SyntaxError...)
        raise InvalidImage(f"{param} could not be decoded: {type(exc).__name__}: {exc}", param=param) from None
    size = fit_size(rgb.width, rgb.height, max_side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_images(images: np.ndarray, fmt: str, *, png_level: int, jpeg_quality: int, webp_quality: int) -> list[str]:
    """``[n, H, W, 3]`` uint8 to base64 strings in ``fmt``; no metadata is written."""
    encoded = []
    for array in images:
        buffer = io.BytesIO()
        image = Image.fromarray(array)
        if fmt == "png":
            image.save(buffer, format="PNG", compress_level=png_level)
        elif fmt == "jpeg":
            image.save(buffer, format="JPEG", quality=jpeg_quality)
        else:
            image.save(buffer, format="WEBP", quality=webp_quality)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless storage of a decoded input (the run store keeps it so a run can resume after a restart)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def from_png_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def thumbnail_data_uri(result_b64: str, *, max_side: int) -> str:
    """A small JPEG ``data:`` URI of one of our own results (history lists), at most ``max_side`` a side."""
    with Image.open(io.BytesIO(base64.b64decode(result_b64)), formats=["PNG", "JPEG", "WEBP"]) as image:
        small = _to_rgb(image)
        small.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
