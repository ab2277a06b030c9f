"""HTTP routes, authentication and error mapping. Serving logic lives in ``Frontend``.

``create_app(frontend)`` builds the FastAPI app; the Serve ingress builds it
inside each replica (``__serve_build_asgi_app__``), and tests build it around
an in-process frontend.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException

from ..errors import InvalidRequest, PayloadTooLarge, ServiceError, Unauthorized
from ..jobs import JobAccepted, JobRequest, JobStatus
from ..schemas import (
    ErrorBody,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
    PresetInfo,
)
from .auth import ApiKeys
from .frontend import Frontend

logger = logging.getLogger(__name__)

ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (401, 404, 409, 422, 500, 503)}
# Errors the routing layer raises itself (no route, wrong method, an unreadable body), by status.
HTTP_ERROR_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


def create_app(frontend: Frontend, api_keys: ApiKeys | None = None) -> FastAPI:
    """``api_keys`` defaults to ``ACESTEP_API_KEYS``; a malformed value raises ``AuthConfigError``."""
    api_keys = ApiKeys.from_env() if api_keys is None else api_keys

    def require_api_key(request: Request) -> None:
        if not api_keys.allows(request.headers.get("authorization", "")):
            raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")

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

    @app.post(
        "/uploads", status_code=201, responses=ERROR_RESPONSES | {413: {"model": ErrorResponse}}, dependencies=authed
    )
    async def upload(request: Request) -> dict:
        """Source audio for the audio-in tasks: a raw body with an audio content type, or
        multipart/form-data with one file part. Answers the key to pass as ``source``."""
        data, content_type = await _upload_body(request, frontend.sources.max_bytes)
        return await frontend.upload(data, content_type)

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

    @app.get("/outputs/{key:path}", responses=ERROR_RESPONSES, dependencies=authed)
    async def outputs(key: str) -> Response:
        data = await frontend.read_output(key)
        media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return Response(content=data, media_type=media_type)

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
