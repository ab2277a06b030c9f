"""HTTP routes, authentication and error mapping. Serving logic lives in ``Frontend``.

``create_app(frontend)`` builds the FastAPI app; the Serve ingress builds it
inside each replica (``__serve_build_asgi_app__``), and tests build it around
an in-process frontend.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..audio import AUDIO_FORMATS, content_type
from ..errors import InvalidRequest, ServiceError, Unauthorized
from ..jobs import JobAccepted, JobRequest, JobStatus
from ..schemas import (
    ErrorBody,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
    PresetInfo,
)
from .frontend import Frontend

logger = logging.getLogger(__name__)

API_KEYS_ENV = "ACESTEP_API_KEYS"
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (401, 404, 409, 422, 500, 503)}
_AUDIO_BODY = {media: {"schema": {"type": "string", "format": "binary"}} for media in map(content_type, AUDIO_FORMATS)}
OUTPUT_RESPONSES = {
    200: {
        "description": "The whole file, typed as its sidecar records (`audio/wav`, `audio/mpeg`, ...).",
        "content": _AUDIO_BODY,
    },
    206: {"description": "The byte range asked for with `Range`, with `Content-Range`.", "content": _AUDIO_BODY},
    416: {"description": "The range starts past the end of the file; `Content-Range: bytes */<size>`."},
}


def api_keys() -> list[str]:
    """The accepted bearer keys: ``ACESTEP_API_KEYS``, comma-separated; none means auth is off."""
    return [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]


def auth_mode() -> str:
    """How requests are authenticated, for the start-up log (never the keys themselves)."""
    keys = api_keys()
    return f"bearer keys ({len(keys)} from {API_KEYS_ENV})" if keys else f"off ({API_KEYS_ENV} unset)"


def require_api_key(request: Request) -> None:
    """Bearer-token auth, on when ``ACESTEP_API_KEYS`` (comma-separated) is set."""
    keys = api_keys()
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
        raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")


def create_app(frontend: Frontend) -> FastAPI:
    app = FastAPI(
        title="ACE-Step music generation",
        description="Text and lyrics to music with ACE-Step, batched on GPUs, outputs in object storage.",
        version="0.1.0",
    )
    app.state.frontend = frontend
    _install_error_handlers(app, frontend)
    authed = [Depends(require_api_key)]

    @app.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES, dependencies=authed)
    async def generate(body: GenerateRequest) -> GenerateResponse:
        return await frontend.generate(body)

    @app.get("/presets", response_model=list[PresetInfo], dependencies=authed)
    async def presets() -> list[PresetInfo]:
        return frontend.presets()

    @app.get("/models", response_model=list[ModelInfo], dependencies=authed)
    async def models() -> list[ModelInfo]:
        return frontend.models()

    @app.get("/health")
    async def health() -> JSONResponse:
        report = await frontend.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.api_route(
        "/outputs/{key:path}",
        methods=["GET", "HEAD"],
        response_class=FileResponse,
        responses={**OUTPUT_RESPONSES, **ERROR_RESPONSES},
        dependencies=authed,
    )
    async def outputs(key: str) -> FileResponse:
        """A stored file of the local store, streamed from disk. `Range: bytes=a-b` answers 206 with
        that slice (browsers seek in audio this way), `HEAD` the headers alone; `ETag` and
        `Last-Modified` let clients cache. MinIO outputs come as presigned URLs instead, which
        MinIO serves with the same range and caching support."""
        path, media_type = await frontend.output_file(key)
        return FileResponse(path, media_type=media_type)

    @app.post("/jobs", status_code=202, response_model=JobAccepted, responses=ERROR_RESPONSES, dependencies=authed)
    async def submit_job(body: JobRequest, response: Response) -> JobAccepted:
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

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses=ERROR_RESPONSES, dependencies=authed)
    async def job(job_id: str) -> JobStatus:
        return await frontend.job(job_id)

    @app.delete("/jobs/{job_id}", response_model=JobStatus, responses=ERROR_RESPONSES, dependencies=authed)
    async def cancel_job(job_id: str) -> JobStatus:
        return await frontend.cancel_job(job_id)

    @app.get("/jobs/{job_id}/events", responses=ERROR_RESPONSES, dependencies=authed)
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events: the job's status now and on every change, until it ends."""
        updates = frontend.job_updates(job_id)
        first = await anext(updates)  # an unknown job is a plain 404, before any stream starts
        return StreamingResponse(
            _server_sent_events(first, updates),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


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
