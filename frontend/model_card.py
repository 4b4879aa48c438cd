"""What the served model says it is: its family, the schedulers it accepts, the request fields beyond the
seed API it takes, its image sides. The model posts this card in its load report (``sd_img2img_progress``'s
``load``, key ``"model"``); an older model, or one batching whole requests, posts none: then it is unknown,
and the model itself refuses what it cannot take.

Pure (no Triton, no aiohttp): parsed in ``triton_backend``, kept by ``fleet``, used to refuse a field before
a run is accepted (``refuse_unsupported``), to size images (``max_image_side``) and in the OpenAPI document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedField

# Request fields that only some models take: which model does, in words (the refusal names it).
MODEL_FIELDS: dict[str, str] = {
    "aesthetic_score": "an SDXL refiner",
    "negative_aesthetic_score": "an SDXL refiner",
}
# Images are resized to fit this side when neither SD_MAX_IMAGE_SIDE nor the model's card says otherwise.
DEFAULT_MAX_IMAGE_SIDE = 1024


@dataclass(frozen=True)
class ModelCard:
    family: str  # sd1, sd1-v, sd2, sd2-v, sdxl, sdxl-refiner (new ones may come: kept as the model says)
    title: str  # in words: "SDXL refiner"
    schedulers: tuple[str, ...]  # names and aliases the model accepts, sorted
    fields: frozenset[str]  # request fields beyond the seed API that it takes
    native_side: int  # the side it was trained at
    max_image_side: int  # the largest side it accepts

    def as_dict(self) -> dict[str, Any]:
        """The card as the model posts it (the OpenAPI document's ``x-model``)."""
        return {
            "family": self.family,
            "title": self.title,
            "schedulers": list(self.schedulers),
            "fields": sorted(self.fields),
            "native_side": self.native_side,
            "max_image_side": self.max_image_side,
        }


def parse_card(data: Any) -> ModelCard:
    """The card from the load report's ``"model"`` value; ValueError naming the key that is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"the model card must be an object but is {type(data).__name__}")

    def text(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"model card {key!r} must be a non-empty string but is {value!r}")
        return value

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"model card {key!r} must be a list of strings but is {value!r}")
        return tuple(sorted(value))

    def side(key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"model card {key!r} must be a whole number of px but is {value!r}")
        if value != int(value) or value < 8:
            raise ValueError(f"model card {key!r} must be a whole number of px, at least 8, but is {value!r}")
        return int(value)

    return ModelCard(
        family=text("family"),
        title=text("title"),
        schedulers=names("schedulers"),
        fields=frozenset(names("fields")),
        native_side=side("native_side"),
        max_image_side=side("max_image_side"),
    )


def refuse_unsupported(given: Mapping[str, Any], card: ModelCard | None) -> None:
    """Raise ``UnsupportedField`` for the first model-specific field given (not None) that the served model
    does not take. An unknown card passes everything: the model refuses it itself, mapped to the same 400."""
    if card is None:
        return
    for name, who in MODEL_FIELDS.items():
        if given.get(name) is not None and name not in card.fields:
            raise UnsupportedField(
                f"{name}: the served model ({card.title}) does not take it; only {who} does", param=name
            )


def max_image_side(setting: int, card: ModelCard | None) -> int:
    """The side inputs are resized to fit: ``SD_MAX_IMAGE_SIDE`` when set (not 0), else the model's, else 1024."""
    if setting:
        return setting
    return card.max_image_side if card is not None else DEFAULT_MAX_IMAGE_SIDE
