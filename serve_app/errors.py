"""Errors a client can see, each with its HTTP status.

They cross Ray handles (the generator raises, the ingress maps), so they
pickle by their constructor arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .pipeline.invalid_field import InvalidField
from .responses import ErrorBody, ErrorResponse, FieldError
from .schemas import LEGACY_FIELD_HINTS


class ServiceError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields or [])

    def __reduce__(self):
        return (type(self), (self.message, self.fields))

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(type=self.type, message=self.message, fields=self.fields))


class InvalidRequest(ServiceError):
    status = 422
    type = "invalid_request"

    @classmethod
    def for_field(cls, field: str, message: str) -> InvalidRequest:
        return cls(f"{field}: {message}", [FieldError(field=field, message=message)])

    @classmethod
    def from_field(cls, error: InvalidField) -> InvalidRequest:
        """The client's view of an ``InvalidField``, wherever it was raised."""
        return cls.for_field(error.field, error.reason)

    @classmethod
    def from_validation(cls, errors: Iterable[dict[str, Any]]) -> InvalidRequest:
        """From pydantic's (or FastAPI's) error list: each field named, with a reason for humans."""
        fields = [_field_error(error) for error in errors]
        return cls("; ".join(f"{field.field}: {field.message}" for field in fields), fields)


def _field_error(error: dict[str, Any]) -> FieldError:
    raised = error.get("ctx", {}).get("error")
    if isinstance(raised, InvalidField):  # a validator of ours: it names the field and the reason itself
        return FieldError(field=raised.field, message=raised.reason)
    field = _field_name(error)
    if error["type"] == "extra_forbidden":
        return FieldError(
            field=field, message=LEGACY_FIELD_HINTS.get(field, "unknown field; the request schema is at /docs")
        )
    return FieldError(field=field, message=error["msg"])


def _field_name(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return "body"
    parts = [str(part) for part in error["loc"] if part not in ("body", "query", "path")]
    return ".".join(parts) or "body"


class Unauthorized(ServiceError):
    status = 401
    type = "unauthorized"


class NotFound(ServiceError):
    status = 404
    type = "not_found"


class Conflict(ServiceError):
    """The resource's state does not allow the operation (e.g. cancelling a finished job)."""

    status = 409
    type = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "payload_too_large"


class Unavailable(ServiceError):
    """Temporarily unable to serve: overloaded, storage down, model loading."""

    status = 503
    type = "unavailable"
    retry_after_s = 5


class StorageMisconfigured(ServiceError):
    """The server's object store is misconfigured (credentials, bucket, endpoint): retrying cannot help."""

    status = 500
    type = "storage_misconfigured"

    @classmethod
    def because(cls, problem: str) -> StorageMisconfigured:
        """``problem``: what is wrong and the setting to fix, with no endpoint or bucket names."""
        return cls(
            f"the server's object storage is misconfigured ({problem}); "
            "nothing was stored, and retrying will not help until an operator fixes it"
        )


class GenerationFailed(ServiceError):
    status = 500
    type = "generation_failed"
