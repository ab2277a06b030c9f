"""Wire formats of the asynchronous jobs API (``/jobs``).

``JobRequest`` is the ``POST /jobs`` body. ``JobStatus`` is what ``GET /jobs/{id}``, the server-sent events and the
webhook carry. ``JobRecord`` is what the coordinator persists: the status plus
the resolved plan, so a job interrupted by a restart can be run again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..progress import Stage
from ..responses import GenerateResponse
from ..schemas import GenerateRequest, GenerationPlan
from .webhooks import parse_webhook_url

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class ItemProgress(BaseModel):
    """One seed's progress; ``step``/``total_steps`` count denoiser evaluations."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    seed: int
    """The item's seed."""
    stage: Stage = "queued"
    """queued, running (diffusion), encoding (decode, encode, upload) or done."""
    step: int = 0
    """Denoiser evaluations done."""
    total_steps: int
    """Denoiser evaluations in all."""


class JobProgress(BaseModel):
    """The job as a whole: the least advanced of its items."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    stage: Stage = "queued"
    """queued, running (diffusion), encoding (decode, encode, upload) or done; only rises, except on a retry."""
    step: int = 0
    """Denoiser evaluations done by the least advanced item."""
    total_steps: int
    """Denoiser evaluations per item."""
    items: list[ItemProgress]
    """Each seed's own progress."""


class JobError(BaseModel):
    """Why a job failed."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    type: str
    """Machine-readable kind, as in error answers (plus interrupted: lost to restarts in every attempt)."""
    message: str
    """For humans; never a traceback."""


class WebhookDelivery(BaseModel):
    """The outcome of the job's webhook call."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    url: str
    """The webhook_url of the request."""
    delivered: bool = False
    """Whether a POST of the final status was acknowledged (2xx)."""
    attempts: int = 0
    """POSTs made so far (at most 5, with exponential backoff)."""
    last_error: str | None = None
    """The last failure, if any."""


_EXAMPLE_JOB_ID = "5f0c2a9e4b1d4c7e8a3f6b2d9e1c0a47"


class JobStatus(BaseModel):
    """A job's state: ``GET /jobs/{id}``, each server-sent event, and the webhook's body."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "job_id": _EXAMPLE_JOB_ID,
                    "status": "running",
                    "created_at": "2026-11-25T10:00:00Z",
                    "started_at": "2026-11-25T10:00:01Z",
                    "finished_at": None,
                    "queue_position": None,
                    "progress": {
                        "stage": "running",
                        "step": 31,
                        "total_steps": 60,
                        "items": [{"seed": 42, "stage": "running", "step": 31, "total_steps": 60}],
                    },
                    "eta_s": 14.2,
                    "attempts": 1,
                    "result": None,
                    "error": None,
                    "webhook": None,
                }
            ]
        },
    )

    job_id: str
    """128 random bits, hex: the job's id and capability."""
    status: JobState
    """queued, running, succeeded, failed or cancelled."""
    created_at: datetime
    """When it was submitted (UTC)."""
    started_at: datetime | None = None
    """When its current attempt started running; null while queued."""
    finished_at: datetime | None = None
    """When it ended; null until then."""
    queue_position: int | None = Field(
        default=None, description="Jobs of this coordinator submitted earlier and still queued; null once running."
    )
    progress: JobProgress
    """Steps done of the total, and the stage."""
    eta_s: float | None = Field(
        default=None, description="Seconds until done, from this job's measured step time; null until it runs."
    )
    attempts: int = Field(default=0, description="Times the job was sent to a generator (a lost replica retries once).")
    result: GenerateResponse | None = None
    """On success: exactly the POST /generate answer."""
    error: JobError | None = None
    """On failure: why."""
    webhook: WebhookDelivery | None = None
    """The webhook's delivery, when the request named one."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES


class JobRecord(BaseModel):
    """The persisted form: the public status and the plan that produced it."""

    status: JobStatus
    plan: GenerationPlan


class JobAccepted(BaseModel):
    """``POST /jobs`` answer (202)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "job_id": _EXAMPLE_JOB_ID,
                    "status": "queued",
                    "queue_position": 0,
                    "status_url": f"/jobs/{_EXAMPLE_JOB_ID}",
                    "events_url": f"/jobs/{_EXAMPLE_JOB_ID}/events",
                }
            ]
        },
    )

    job_id: str
    """The job's id (128 random bits, hex)."""
    status: JobState
    """queued, or already running."""
    queue_position: int | None
    """Jobs submitted earlier and still queued; null when running."""
    status_url: str
    """GET it for the status (also in the Location header)."""
    events_url: str
    """GET it for the status as server-sent events, until the job ends."""


class JobRequest(GenerateRequest):
    """``POST /jobs`` body: the ``/generate`` body, plus where to report the end."""

    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Receives one POST of the final job status when the job ends."
    )

    @field_validator("webhook_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_webhook_url(value)
        return value
