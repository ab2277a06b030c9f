"""The API's own description: response documents and examples, and self-hosted Swagger UI and ReDoc.

The docs pages load their JavaScript and CSS from the ingress itself (the
files ship in the ``fastapi-offline`` wheel), so they work on a cluster
without internet access.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..audio import AUDIO_FORMATS, content_type
from ..responses import ErrorResponse, PresetInfo

DOCS_ASSETS_URL = "/docs/assets"
DOCS_ASSETS_DIR = Path(importlib.util.find_spec("fastapi_offline").origin).parent / "static"

_FIELD_EXAMPLE = {"field": "infer_step", "message": "Input should be less than or equal to 200"}
_ERROR_EXAMPLES: dict[int, tuple[str, dict[str, Any]]] = {
    401: (
        "No valid API key (only when ACESTEP_API_KEYS is set).",
        {"type": "unauthorized", "message": "missing or invalid API key: send 'Authorization: Bearer <key>'"},
    ),
    404: ("No such output or job.", {"type": "not_found", "message": "no job with this id"}),
    409: (
        "The job already ended.",
        {"type": "conflict", "message": "job 5f0c2a9e4b1d4c7e8a3f6b2d9e1c0a47 is already succeeded"},
    ),
    413: (
        "An upload larger than the server's max_source_bytes; nothing was stored.",
        {"type": "payload_too_large", "message": "the upload is larger than the limit of 67108864 bytes"},
    ),
    422: (
        "A bad value, an unknown field, or a combination the model cannot honour; `fields` names each.",
        {"type": "invalid_request", "message": "infer_step: Input should be less than or equal to 200"},
    ),
    500: (
        "A server fault; the body never carries a traceback.",
        {"type": "internal_error", "message": "internal error; see the server log"},
    ),
    503: (
        "The generators are at capacity or the store is unreachable; retry after `Retry-After` seconds.",
        {"type": "unavailable", "message": "every generator replica is at capacity; retry later"},
    ),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with its own example."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, body = _ERROR_EXAMPLES[status]
        fields = [_FIELD_EXAMPLE] if status == 422 else []
        documented[status] = {
            "model": ErrorResponse,
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                    "example": {"error": {**body, "fields": fields}},
                }
            },
        }
        if status == 503:
            documented[status]["headers"] = {
                "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
            }
    return documented


_AUDIO_BODY = {media: {"schema": {"type": "string", "format": "binary"}} for media in map(content_type, AUDIO_FORMATS)}
OUTPUT_GET_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The whole file, typed as its sidecar records (audio/wav, audio/mpeg, ...).",
        "content": _AUDIO_BODY,
    },
    206: {
        "description": "The byte range asked for with `Range`; `Content-Range` says which.",
        "content": _AUDIO_BODY,
    },
    416: {"description": "The range starts past the end of the file; `Content-Range: bytes */<size>`."},
}
OUTPUT_HEAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The headers of GET without the body: `Content-Length`, `Content-Type`, `ETag`, `Last-Modified`."
    },
}

_EVENT_EXAMPLE = (
    'data: {"job_id": "5f0c2a9e4b1d4c7e8a3f6b2d9e1c0a47", "status": "running", "progress": '
    '{"stage": "running", "step": 31, "total_steps": 60, "items": [...]}, "eta_s": 14.2, ...}\n\n'
    ": keep-alive\n\n"
)
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: one `data:` line with the job's status (the JobStatus of "
        "GET /jobs/{job_id}, as JSON) now and after every change, until the job ends; a `: keep-alive` "
        "comment when nothing changed for 15 s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _EVENT_EXAMPLE}},
    },
}

_EXAMPLE_SONG = {
    "prompt": "synthwave, retro, driving bass, 110 bpm",
    "lyrics": "[verse]\nNeon lights on an empty road\n[chorus]\nWe ride tonight",
    "audio_duration": 30,
    "actual_seeds": [42],
    "format": "mp3",
}


def request_examples(presets: list[PresetInfo], webhook: bool = False) -> dict[str, dict[str, Any]]:
    """One named request example per preset of this deployment (Swagger UI's example menu)."""
    extra = {"webhook_url": "https://example.com/hooks/music"} if webhook else {}
    examples = {
        preset.name: {
            "summary": f"preset {preset.name}",
            "description": preset.description,
            "value": {"preset": preset.name, **_EXAMPLE_SONG, **extra},
        }
        for preset in presets
    }
    examples["no preset"] = {
        "summary": "no preset: the model's defaults",
        "description": "Only a prompt: every other value comes from the model's defaults; seeds are drawn.",
        "value": {"prompt": "lofi hip hop, mellow piano, vinyl crackle, 80 bpm", **extra},
    }
    return examples


def install_docs(app: FastAPI, title: str) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with every asset served from ``/docs/assets``."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def tidy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Two corrections to what FastAPI generates: it documents a 422 ``HTTPValidationError`` for every
    route with parameters, while ours answer validation errors with ``ErrorResponse`` (declared where
    they can happen); and it types a route's error answers with the route's own media type, while
    errors are always JSON (the event stream's included)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", {})):
                del responses["422"]
            for status, response in responses.items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    response["content"] = {"application/json": content["application/json"]}
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
