"""The OpenAPI 3.1 document served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from ..errors import ERROR_TABLE
from ..model_card import ModelCard, max_image_side
from ..schemas import PredictBody
from ..settings import Settings
from ..version import version

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "param"],
            "properties": {
                "code": {"type": "string", "enum": sorted({code for _, code, _ in ERROR_TABLE})},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
RESULT_SCHEMA = {
    "type": "object",
    "required": ["run_id", "message", "result", "seeds", "run_time_ms"],
    "properties": {
        "run_id": {"type": "string", "format": "uuid"},
        "message": {"type": "string", "const": "Successfully generated image"},
        "result": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "run_time_ms": {"type": "integer"},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "image_source": {"type": "string", "enum": ["image", "file_url"]},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "timings_ms": {
            "type": "object",
            "description": "fetch (file_url), decode, triton (queue + transfer + compute), encode",
            "additionalProperties": {"type": "number"},
        },
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, code, meaning in ERROR_TABLE:
        if status in statuses:
            entry = out.setdefault(str(status), {"description": "", **_json({"$ref": "#/components/schemas/Error"})})
            entry["description"] = (entry["description"] + f"; {code}: {meaning}").lstrip("; ")
    return out


RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
RUN_PAGE = _json(
    {
        "type": "object",
        "required": ["runs", "next_cursor"],
        "properties": {
            "runs": {
                "type": "array",
                "items": {"type": "object", "required": ["run_id", "status", "created_at", "params", "thumbnail"]},
            },
            "next_cursor": {"type": ["string", "null"], "description": "the next page's cursor; null: no more"},
        },
    }
)
PAGE_PARAMETERS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the page before"},
]
RUN_VIEW = _json({"type": "object", "required": ["run_id", "status"]})
PREDICT_HEADERS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "description": "Replays the first answer for the same key and body (per API key, kept 24 h)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    {
        "name": "Cancel-After",
        "in": "header",
        "description": "Deadline: 90s, 5m, 1h30m or seconds; waiting past it = aborted, running = canceled",
        "schema": {"type": "string"},
    },
    {
        "name": "Prefer",
        "in": "header",
        "description": "respond-async: answer 202 at once; follow /runs/{run_id} or its events",
        "schema": {"type": "string"},
    },
]


def openapi_document(settings: Settings, card: ModelCard | None = None) -> dict[str, Any]:
    """Built per request: ``card`` is the served model's, as last read (None: unknown), so the document
    (and the playground's form, built from it) follows the model the service fronts now."""
    body_schema = PredictBody.model_json_schema(ref_template="#/components/schemas/{model}")
    body_schema["properties"]["num_inference_steps"]["maximum"] = settings.max_inference_steps
    body_schema["properties"]["guidance_scale"]["maximum"] = settings.max_guidance_scale
    body_schema["properties"]["num_images_per_prompt"]["maximum"] = settings.max_images_per_prompt
    body_schema["properties"]["prompt"]["maxLength"] = settings.max_prompt_chars
    body_schema["properties"]["negative_prompt"]["maxLength"] = settings.max_prompt_chars
    # What a client may want to fit an image to before sending it (larger sides are resized to fit).
    body_schema["x-limits"] = {
        "max_image_side": max_image_side(settings.max_image_side, card),
        "max_image_pixels": settings.max_image_pixels,
        "max_image_bytes": settings.max_image_bytes,
    }
    if card is not None:
        # What the served model is: its schedulers (the scheduler's examples become exactly those) and the
        # model-specific fields it takes (the others are refused with 400 unsupported_field). Absent: unknown.
        body_schema["x-model"] = card.as_dict()
        body_schema["properties"]["scheduler"]["examples"] = list(card.schedulers)
    secured: list[dict[str, list[str]]] = [{"ApiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stable Diffusion img2img", "version": version()},
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "Authorization"}},
            "schemas": {"PredictBody": body_schema, "Result": RESULT_SCHEMA, "Error": ERROR_SCHEMA},
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Generate images from a prompt and an init image",
                    "security": secured,
                    "parameters": PREDICT_HEADERS,
                    "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/PredictBody"})},
                    "responses": {
                        "200": {"description": "Generated", **_json({"$ref": "#/components/schemas/Result"})},
                        "202": {
                            "description": "Accepted (webhook_endpoint, or Prefer: respond-async)",
                            **_json({"type": "object", "required": ["run_id", "message", "status"]}),
                        },
                        **_errors(400, 401, 409, 413, 415, 422, 429, 500, 503, 504),
                    },
                }
            },
            "/runs": {
                "get": {
                    "summary": "This API key's runs, newest first, a page at a time, with thumbnails",
                    "security": secured,
                    "parameters": PAGE_PARAMETERS,
                    "responses": {"200": {"description": "A page of runs", **RUN_PAGE}, **_errors(401, 422)},
                }
            },
            "/runs/{run_id}": {
                "get": {
                    "summary": "A run's status and, once done, its result or error",
                    "security": secured,
                    "parameters": [RUN_ID],
                    "responses": {"200": {"description": "The run", **RUN_VIEW}, **_errors(401, 404, 410)},
                }
            },
            "/runs/{run_id}/cancel": {
                "post": {
                    "summary": "Stop a run: never sent, dropped from Triton's queue, or stopped at the next step",
                    "security": secured,
                    "parameters": [RUN_ID],
                    "responses": {"200": {"description": "Canceled", **RUN_VIEW}, **_errors(401, 404, 409)},
                }
            },
            "/runs/{run_id}/events": {
                "get": {
                    "summary": (
                        "Server-Sent Events of the run's status changes and progress; resumable with Last-Event-ID"
                    ),
                    "security": secured,
                    "parameters": [
                        RUN_ID,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                        **_errors(401, 404),
                    },
                }
            },
            "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "alive"}}}},
            "/playground": {
                "get": {
                    "summary": "The web playground (also at /; off with SD_PLAYGROUND=false)",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Can take work now: model loaded, not known dead, queue not full (busy is ready)",
                    "responses": {"200": {"description": "ready"}, **_errors(503)},
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }
