"""HTTP routes, authentication and error mapping. Serving logic lives in ``Frontend``.

``create_app(frontend)`` builds the FastAPI app; the Serve ingress builds it
inside each replica (``__serve_build_asgi_app__``), and tests build it around
an in-process frontend.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException

from ..errors import InvalidRequest, PayloadTooLarge, ServiceError, Unauthorized
from ..jobs import JobAccepted, JobRequest, JobStatus
from ..responses import (
    ErrorBody,
    ErrorResponse,
    GenerateResponse,
    HealthReport,
    ModelInfo,
    PresetInfo,
    UploadedSource,
)
from ..schemas import GenerateRequest
from .api_docs import (
    EVENTS_RESPONSES,
    OUTPUT_GET_RESPONSES,
    OUTPUT_HEAD_RESPONSES,
    error_responses,
    install_docs,
    request_examples,
    tidy_schema,
)
from .auth import API_KEYS_ENV, ApiKeys
from .frontend import Frontend
from .playground import install_playground

logger = logging.getLogger(__name__)

# Errors the routing layer raises itself (no route, wrong method, an unreadable body), by status.
HTTP_ERROR_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
TITLE = "ACE-Step music generation"
JobId = Annotated[str, Path(description="The job's id, from POST /jobs.")]


def create_app(frontend: Frontend, api_keys: ApiKeys | None = None) -> FastAPI:
    """``api_keys`` defaults to ``ACESTEP_API_KEYS``; a malformed value raises ``AuthConfigError``."""
    api_keys = ApiKeys.from_env() if api_keys is None else api_keys

    def require_api_key(request: Request) -> None:
        if not api_keys.allows(request.headers.get("authorization", "")):
            raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")

    app = FastAPI(
        title=TITLE,
        description="Text and lyrics to music with ACE-Step, batched on GPUs, outputs in object storage. "
        "Try it at [/playground](/playground).",
        version="0.1.0",
        docs_url=None,  # self-hosted below instead of from a CDN
        redoc_url=None,
    )
    app.state.frontend = frontend
    _install_error_handlers(app, frontend)
    install_docs(app, TITLE)
    install_playground(app)
    authed = [Depends(require_api_key)]
    if api_keys.enabled:  # documents the scheme (and Swagger UI's Authorize button) only when keys are on
        authed.append(Security(HTTPBearer(auto_error=False, description=f"A key of {API_KEYS_ENV}.")))
    presets = frontend.presets()

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        response_description="The stored outputs, the resolved parameters and the timings.",
        responses=error_responses(401, 422, 500, 503),
        dependencies=authed,
    )
    async def generate(
        body: GenerateRequest = Body(openapi_examples=request_examples(presets)),  # noqa: B008 (FastAPI's form)
    ) -> GenerateResponse:
        """Generate and store the audio; answers when the files are stored. Long songs: use POST /jobs."""
        return await frontend.generate(body)

    @app.post(
        "/uploads",
        status_code=201,
        response_model=UploadedSource,
        response_description="Stored; the key is usable as source.",
        responses=error_responses(401, 413, 422, 500, 503),
        dependencies=authed,
    )
    async def upload(request: Request) -> UploadedSource:
        """Source audio for the audio-in tasks: a raw body with an audio content type, or
        multipart/form-data with one file part. Answers the key to pass as ``source``."""
        data, content_type = await _upload_body(request, frontend.sources.max_bytes)
        return await frontend.upload(data, content_type)

    @app.get(
        "/presets",
        response_model=list[PresetInfo],
        response_description="Every preset with its values.",
        responses=error_responses(401, 500),
        dependencies=authed,
    )
    async def list_presets() -> list[PresetInfo]:
        """The presets (recipes of the ACE-Step guide) and the values each sets."""
        return frontend.presets()

    @app.get(
        "/models",
        response_model=list[ModelInfo],
        response_description="Every catalog model, served or not.",
        responses=error_responses(401, 500),
        dependencies=authed,
    )
    async def models() -> list[ModelInfo]:
        """The model catalog; `served` marks the models this deployment serves."""
        return frontend.models()

    @app.get(
        "/health",
        response_model=HealthReport,
        response_description="Ready.",
        responses={503: {"model": HealthReport, "description": "Not ready."}},
    )
    async def health() -> JSONResponse:
        """Readiness: 200 when a generator replica has its model loaded and the store is reachable, else 503.
        Needs no API key."""
        report = await frontend.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def output(key: Annotated[str, Path(description="The output's key, from `outputs[].key`.")]) -> FileResponse:
        """A stored file of the local store, streamed from disk. `Range: bytes=a-b` answers 206 with
        that slice (browsers seek in audio this way), `HEAD` the headers alone; `ETag` and
        `Last-Modified` let clients cache. MinIO outputs come as presigned URLs instead, which
        MinIO serves with the same range and caching support."""
        path, media_type = await frontend.output_file(key)
        return FileResponse(path, media_type=media_type)

    for method, documented in (("GET", OUTPUT_GET_RESPONSES), ("HEAD", OUTPUT_HEAD_RESPONSES)):
        app.add_api_route(
            "/outputs/{key:path}",
            output,
            methods=[method],
            operation_id=f"{method.lower()}_output",
            summary=f"{method} an output",
            response_class=FileResponse,
            responses={**documented, **error_responses(401, 404, 500, 503)},
            dependencies=authed,
        )

    @app.post(
        "/jobs",
        status_code=202,
        response_model=JobAccepted,
        response_description="Accepted: the job's id and where to follow it.",
        responses=error_responses(401, 422, 500, 503),
        dependencies=authed,
    )
    async def submit_job(
        response: Response,
        body: JobRequest = Body(openapi_examples=request_examples(presets, webhook=True)),  # noqa: B008
    ) -> JobAccepted:
        """Queue a generation and answer at once (202, `Location: /jobs/{job_id}`); follow it with
        GET /jobs/{job_id} or its events."""
        status = await frontend.submit_job(body)
        url = f"/jobs/{status.job_id}"
        response.headers["Location"] = url
        return JobAccepted(
            job_id=status.job_id,
            status=status.status,
            queue_position=status.queue_position,
            status_url=url,
            events_url=f"{url}/events",
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=JobStatus,
        response_description="The job's status.",
        responses=error_responses(401, 404, 500, 503),
        dependencies=authed,
    )
    async def job(job_id: JobId) -> JobStatus:
        """The job's status, progress and ETA; on success `result` is the POST /generate answer."""
        return await frontend.job(job_id)

    @app.delete(
        "/jobs/{job_id}",
        response_model=JobStatus,
        response_description="The job's status after the cancel: cancelled, or running until its next step.",
        responses=error_responses(401, 404, 409, 500, 503),
        dependencies=authed,
    )
    async def cancel_job(job_id: JobId) -> JobStatus:
        """Cancel: a queued job at once, a running one at its next diffusion step. 409 when it already ended."""
        return await frontend.cancel_job(job_id)

    @app.get(
        "/jobs/{job_id}/events",
        response_class=EventStreamResponse,
        responses={**EVENTS_RESPONSES, **error_responses(401, 404, 500, 503)},
        dependencies=authed,
    )
    async def job_events(job_id: JobId) -> EventStreamResponse:
        """Server-sent events: the job's status now and on every change, until it ends."""
        updates = frontend.job_updates(job_id)
        first = await anext(updates)  # an unknown job is a plain 404, before any stream starts
        return EventStreamResponse(
            _server_sent_events(first, updates), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    build_schema = app.openapi
    app.openapi = lambda: tidy_schema(build_schema())
    return app


async def _upload_body(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded bytes and their content type, reading no more than ``limit`` + 1 bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"the upload declares {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=0, max_part_size=limit + 1)
        files = [value for value in form.values() if isinstance(value, StarletteUploadFile)]
        if not files:
            raise InvalidRequest.for_field("source", "the multipart body has no file part")
        data = await files[0].read(limit + 1)
        return _within(data, limit), files[0].content_type or ""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        _within(body, limit)
    return bytes(body), content_type


def _within(data: bytes | bytearray, limit: int):
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit} bytes; nothing was stored")
    return data


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


async def _server_sent_events(first: JobStatus, rest: AsyncIterator[JobStatus | None]) -> AsyncIterator[str]:
    yield f"data: {first.model_dump_json()}\n\n"
    async for status in rest:
        # A comment line keeps idle connections open through proxies.
        yield ": keep-alive\n\n" if status is None else f"data: {status.model_dump_json()}\n\n"


def _install_error_handlers(app: FastAPI, frontend: Frontend) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse(exc.body().model_dump(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> JSONResponse:
        # The documented {"error": ...} shape, not the framework's {"detail": ...}.
        error = ErrorBody(type=HTTP_ERROR_TYPES.get(exc.status_code, "http_error"), message=str(exc.detail))
        return JSONResponse(ErrorResponse(error=error).model_dump(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidRequest.from_validation(exc.errors())
        route = request.scope.get("route")
        path = route.path if route is not None else "unknown"  # the template: one series per route
        frontend.metrics.request_finished(path, 422, "invalid", "invalid")
        return JSONResponse(error.body().model_dump(), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        body = ErrorResponse(error=ErrorBody(type="internal_error", message="internal error; see the server log"))
        return JSONResponse(body.model_dump(), status_code=500)
